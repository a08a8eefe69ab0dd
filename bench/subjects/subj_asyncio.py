"""asyncio (and uvloop) subjects.

Kinds:

``asyncio-streams`` / ``uvloop-streams``
    ``start_server`` / ``start_unix_server`` with the idiomatic
    ``readline()`` / ``write()`` / ``await drain()`` loop.
``asyncio-protocol`` / ``uvloop-protocol``
    A ``Protocol`` whose ``data_received`` splits complete lines and answers
    them with a single ``transport.write`` (so pipelined lines cost one
    write); ``DatagramProtocol`` for UDP; an HTTP/1.1 hello keep-alive
    protocol for ``--proto http``.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from subj_common import (
    BACKLOG,
    HTTP_RESPONSE,
    Address,
    announce,
    find_header_end,
    remove_stale_unix,
    unsupported,
    wants_close,
)


async def stream_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Idiomatic asyncio streams line echo."""
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


class EchoProtocol(asyncio.Protocol):
    """Line echo: split complete lines, answer them with one write."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        *lines, self.pending = data.split(b"\n")
        if lines:
            assert self.transport is not None
            self.transport.write(b"".join([line + b"\n" for line in lines]))


class HttpHelloProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive hello: one write per data_received (pipelining ok)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buf = self.pending + data if self.pending else data
        pos = count = 0
        close = False
        while True:
            end = find_header_end(buf, pos)
            if end < 0:
                break
            count += 1
            close = wants_close(buf[pos:end])
            pos = end
            if close:
                break
        self.pending = buf[pos:]
        if count:
            self.transport.write(HTTP_RESPONSE * count)
        if close:
            self.transport.close()


class UdpEchoProtocol(asyncio.DatagramProtocol):
    """Echo each datagram back to its sender."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)


async def run(kind: str, addr: Address, proto: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    streams = kind.endswith("-streams")
    remove_stale_unix(addr)
    closer: Any
    if addr.transport == "udp":
        if streams or proto != "echo":
            unsupported(kind, addr, proto)
        closer, _ = await loop.create_datagram_endpoint(
            UdpEchoProtocol, local_addr=(addr.host, addr.port)
        )
        bound = closer.get_extra_info("sockname")
    else:
        if streams:
            if proto != "echo":
                unsupported(kind, addr, proto)
            if addr.transport == "unix":
                closer = await asyncio.start_unix_server(stream_echo, addr.path, backlog=BACKLOG)
            else:
                closer = await asyncio.start_server(
                    stream_echo, addr.host, addr.port, backlog=BACKLOG
                )
        else:
            factory = HttpHelloProtocol if proto == "http" else EchoProtocol
            if addr.transport == "unix":
                closer = await loop.create_unix_server(factory, addr.path, backlog=BACKLOG)
            else:
                closer = await loop.create_server(factory, addr.host, addr.port, backlog=BACKLOG)
        bound = closer.sockets[0].getsockname()
    announce(addr, bound)
    await stop.wait()
    closer.close()
    remove_stale_unix(addr)


def serve(kind: str, addr: Address, proto: str) -> None:
    if kind.startswith("uvloop-"):
        import uvloop  # absent -> ImportError -> "failed to start" (runner skips it earlier)

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(run(kind, addr, proto))
    finally:
        loop.close()
