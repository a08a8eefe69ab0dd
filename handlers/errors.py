"""Errors a handler sees when a client breaks a limit."""

from __future__ import annotations

__all__ = ["LimitExceeded", "LineTooLong", "BufferLimitExceeded"]


class LimitExceeded(ValueError):
    """A client sent more than a configured bound allows; the connection will be closed."""


class LineTooLong(LimitExceeded):
    """`readline()` met no line ending within `max_line_length` bytes."""


class BufferLimitExceeded(LimitExceeded):
    """Buffered bytes (input waiting to be read, or output waiting to be sent) passed the
    handler's bound (`max_buffer_size` / `max_write_buffer`)."""
