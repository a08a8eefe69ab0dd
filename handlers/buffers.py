"""ReceiveBuffer: the pure byte logic of a stream reader (lines, sizes, limits); no sockets."""

from __future__ import annotations

import re

from .errors import BufferLimitExceeded, LineTooLong

__all__ = ["ReceiveBuffer"]

_LINES = re.compile(rb"[^\n]*\n")  # one line with its end: findall() splits a batch in C


class ReceiveBuffer:
    """Bytes received and not yet consumed.

    Args:
        max_line_length: the longest line `take_line()` waits for before raising LineTooLong.
        max_size: the most bytes `feed()` accepts before raising BufferLimitExceeded.
    """

    __slots__ = ("_data", "_scanned", "max_line_length", "max_size")

    _data: bytes | bytearray

    def __init__(self, max_line_length: int, max_size: int) -> None:
        # b"" (shared, immutable) while empty; a bytearray only while bytes are buffered, so
        # that an idle connection keeps none (measured: bench idle-c1000).
        self._data = b""
        self._scanned = 0  # bytes already searched for a newline without finding one
        self.max_line_length = max_line_length
        self.max_size = max_size

    def __len__(self) -> int:
        return len(self._data)

    def feed(self, data: bytes, allowed: int = 0) -> None:
        """Append received bytes; the buffer may grow to `max_size`, or to `allowed` when that
        is larger (a read that asked for that many bytes)."""
        if len(self._data) + len(data) > max(self.max_size, allowed):
            raise BufferLimitExceeded(
                f"more than max_buffer_size={self.max_size} bytes buffered from the client; "
                "read more often or raise the handler's max_buffer_size")
        if self._data:
            self._data += data  # a bytearray: extended in place
        else:
            self._data = bytearray(data)

    def take(self, size: int) -> bytes:
        """Remove and return up to `size` bytes (all when `size` < 0)."""
        data = self._data
        self._scanned = 0
        if size < 0 or size >= len(data):
            self._data = b""
            return bytes(data)
        out = bytes(data[:size])
        del data[:size]  # type: ignore[union-attr]  # not empty: a bytearray
        return out

    def take_line(self, limit: int = -1) -> bytes | None:
        """Remove and return one line (with its b"\\n"), or the first `limit` bytes when no
        line ends within them; None when more input is needed.

        Raises:
            LineTooLong: no b"\\n" within `max_line_length` bytes and no smaller `limit`.
        """
        data = self._data
        end = data.find(b"\n", self._scanned)
        if end >= 0:
            end += 1
            if 0 <= limit < end:
                end = limit
        elif 0 <= limit <= len(data):
            end = limit
        else:
            self._scanned = len(data)
            if len(data) > self.max_line_length:
                raise LineTooLong(
                    f"no line ending within max_line_length={self.max_line_length} bytes; "
                    "pass readline(limit) or raise the handler's max_line_length")
            return None
        self._scanned = 0
        if end >= len(data):
            self._data = b""
            return bytes(data)
        out = bytes(data[:end])
        del data[:end]  # type: ignore[union-attr]  # not empty: a bytearray
        return out

    def take_lines(self) -> list[bytes]:
        """Remove and return every complete line buffered (each with its b"\\n"), in order;
        [] when no line is complete. One split for them all: the batch API of pipelined
        protocols (`AsyncReader.readlines_available()`)."""
        data = self._data
        end = data.rfind(b"\n") + 1
        if not end:
            self._scanned = len(data)
            return []
        self._scanned = 0
        lines = _LINES.findall(data, 0, end)
        if end >= len(data):
            self._data = b""
        else:
            del data[:end]  # type: ignore[union-attr]  # not empty: a bytearray
        return lines
