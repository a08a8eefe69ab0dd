"""Built-in request handlers, to try the library without writing code.

    python -m servers servers.builtin:Echo --bind tcp://127.0.0.1:9000 --bind udp://127.0.0.1:9000

Every handler here is `async def`, so by default the command line runs it in reactor mode:
thousands of clients on one thread. Each stream handler names its datagram counterpart in
`datagram_handler` (`Echo` -> `DatagramEcho`, ...); the command line uses that class for
`udp://` and `unixgram:` addresses, so one `module:Class` serves every kind of address.

This module also holds the small formatting helpers the command line and the examples share:
`server_url()` (an address as the command line writes it) and `format_request_table()`.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any, ClassVar, Iterable

from handlers import BaseRequestHandler, DatagramRequestHandler, StreamRequestHandler
from reactor import RequestEntry

__all__ = [
    "Echo", "Discard", "Daytime", "Status",
    "DatagramEcho", "DatagramDiscard", "DatagramDaytime", "DatagramStatus",
    "daytime", "format_address", "format_request_table", "server_url",
]

#: The most a `DatagramStatus` reply carries (a datagram over about 64 KiB cannot be sent).
MAX_DATAGRAM_REPLY_BYTES = 60_000


# --------------------------------------------------------------------------- formatting
def format_address(address: Any) -> str:
    """A client or server address as people write it: `127.0.0.1:80`, `[::1]:80`, a Unix path,
    `@name` for a Linux abstract socket, or `unnamed` for an unbound Unix client."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    if isinstance(address, (bytes, bytearray)):
        if address[:1] == b"\0":
            return "@" + bytes(address[1:]).decode(errors="backslashreplace")
        address = bytes(address).decode(errors="backslashreplace")
    if isinstance(address, str):
        if address.startswith("\0"):
            return "@" + address[1:]
        return address or "unnamed"
    return repr(address)


def server_url(server: Any) -> str:
    """The address `server` listens on, written as the command line's `--bind` takes it:
    `tcp://HOST:PORT`, `udp://HOST:PORT`, `unix:PATH` or `unixgram:PATH` (with the real port
    when the server was bound to port 0)."""
    sock = getattr(server, "socket", None)
    family = getattr(sock, "family", None)
    datagram = getattr(sock, "type", None) == socket.SOCK_DGRAM
    address = format_address(server.server_address)
    if family == getattr(socket, "AF_UNIX", object()):
        return f"{'unixgram' if datagram else 'unix'}:{address}"
    return f"{'udp' if datagram else 'tcp'}://{address}"


def format_request_table(requests: Iterable[RequestEntry]) -> str:
    """The request table as text: a header, then one line per entry with its id, server,
    client address, state, age in seconds and bytes in / out ("-" where the library cannot
    see the bytes, as for classic handlers that use the socket directly).

    Read the table on the reactor's thread (an async handler, a callback): it changes as the
    loop turns.
    """
    rows = [("ID", "SERVER", "CLIENT", "STATE", "AGE", "IN", "OUT")]
    for entry in requests:
        rows.append((
            str(entry.id), server_url(entry.server), format_address(entry.client_address),
            entry.state, f"{entry.age:.1f}s", _count(entry.bytes_in), _count(entry.bytes_out),
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(width) if column in (0, 4, 5, 6) else cell.ljust(width)
                 for column, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def daytime(now: datetime.datetime | None = None) -> str:
    """The RFC 867 daytime line (local time), e.g. `Tuesday, February 22, 1982 17:37:43 CET`,
    ending in CRLF."""
    now = now if now is not None else datetime.datetime.now().astimezone()
    return now.strftime("%A, %B %d, %Y %H:%M:%S %Z").rstrip() + "\r\n"


def _status_text(handler: BaseRequestHandler) -> str:
    loop = handler.reactor
    if loop is None:
        return ("status: this request runs off the reactor (in a thread or a child), where "
                "the request table cannot be read safely; serve Status in reactor mode\n")
    # The pid says which worker answered when a Supervisor runs several: each has its own
    # reactor, so the table is that worker's only.
    count = len(loop.requests)
    return (f"pid {os.getpid()}: {count} request{'' if count == 1 else 's'} in flight\n"
            + format_request_table(loop.requests))


# --------------------------------------------------------------------------- stream handlers
class Echo(StreamRequestHandler):
    """Line echo: every line the client sends comes back, until it closes.

    Lines longer than `max_line_length` (64 KiB) end the connection. A client that stops
    reading is not buffered for without bound: `drain()` waits for it.
    """

    datagram_handler: ClassVar[type[BaseRequestHandler]]

    async def handle(self) -> None:
        async for line in self.rfile:
            self.wfile.write(line)
            await self.wfile.drain()


class Discard(StreamRequestHandler):
    """RFC 863 discard: read and throw away everything until the client closes."""

    datagram_handler: ClassVar[type[BaseRequestHandler]]

    async def handle(self) -> None:
        while await self.rfile.read1(65536):
            pass


class Daytime(StreamRequestHandler):
    """RFC 867 daytime: send one line with the local date and time, then close. Input is
    ignored."""

    datagram_handler: ClassVar[type[BaseRequestHandler]]

    async def handle(self) -> None:
        self.wfile.write(daytime().encode("ascii", "replace"))


class Status(StreamRequestHandler):
    """Send the pid of the process that answers (the worker, under a `Supervisor`) and the
    request table of the reactor this request runs on (one line per request in flight, this
    one included, see `format_request_table()`), then close. Input is ignored.

    In threading or forking mode the table is not reachable; the reply says so.
    """

    datagram_handler: ClassVar[type[BaseRequestHandler]]

    async def handle(self) -> None:
        self.wfile.write(_status_text(self).encode())


# --------------------------------------------------------------------------- datagram handlers
class DatagramEcho(DatagramRequestHandler):
    """Send every datagram back to its sender."""

    async def handle(self) -> None:
        self.wfile.write(self.packet)


class DatagramDiscard(DatagramRequestHandler):
    """Receive datagrams and send nothing back."""

    async def handle(self) -> None:
        pass

    def finish(self) -> None:
        """Send no reply (the standard library's handler always sends one, even empty)."""


class DatagramDaytime(DatagramRequestHandler):
    """RFC 867 over UDP: answer any datagram with the daytime line."""

    async def handle(self) -> None:
        self.wfile.write(daytime().encode("ascii", "replace"))


class DatagramStatus(DatagramRequestHandler):
    """Answer any datagram with the request table (cut to `MAX_DATAGRAM_REPLY_BYTES`)."""

    async def handle(self) -> None:
        reply = _status_text(self).encode()
        if len(reply) > MAX_DATAGRAM_REPLY_BYTES:
            marker = b"... (cut: too long for a datagram)\n"
            cut = reply.rfind(b"\n", 0, MAX_DATAGRAM_REPLY_BYTES - len(marker)) + 1
            reply = reply[:cut] + marker
        self.wfile.write(reply)


Echo.datagram_handler = DatagramEcho
Discard.datagram_handler = DatagramDiscard
Daytime.datagram_handler = DatagramDaytime
Status.datagram_handler = DatagramStatus
