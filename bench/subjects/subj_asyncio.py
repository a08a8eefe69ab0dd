"""asyncio (and uvloop) subjects.

Kinds:

``asyncio-streams`` / ``uvloop-streams``
    ``start_server`` / ``start_unix_server`` with the idiomatic
    ``readline()`` / ``write()`` / ``await drain()`` loop; for ``--proto
    http`` the same style hello handler (request head read line by line).
``asyncio-protocol`` / ``uvloop-protocol``
    A ``Protocol`` whose ``data_received`` splits complete lines and answers
    them with a single ``transport.write`` (so pipelined lines cost one
    write); ``DatagramProtocol`` for UDP; an HTTP/1.1 hello keep-alive
    protocol for ``--proto http``.

With a TLS context (``--tls-cert``) the same servers are started with
``ssl=context``.  Servers are created with ``start_server(host, port)`` /
``create_server(factory, host, port)`` as the asyncio docs show: asyncio then
sets TCP_NODELAY on every accepted socket (it does so only for sockets whose
``proto`` is IPPROTO_TCP, which a hand-made listening socket passed with
``sock=`` would not be).
"""

from __future__ import annotations

import asyncio
import signal
import ssl
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


async def stream_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 keep-alive hello with streams, reading the request head line by line."""
    try:
        while True:
            request_line = await reader.readline()
            if not request_line:
                break
            close = request_line.rstrip().upper().endswith(b"HTTP/1.0")
            while True:
                header = await reader.readline()
                if not header:
                    return
                if header in (b"\r\n", b"\n"):
                    break
                if header[:11].lower() == b"connection:":
                    close = b"close" in header.lower()
            writer.write(HTTP_RESPONSE)
            await writer.drain()
            if close:
                break
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


async def listen(kind: str, addr: Address, proto: str,
                 tls: ssl.SSLContext | None) -> tuple[Any, object]:
    """Start serving on the running loop; return (server or datagram transport, bound address)."""
    loop = asyncio.get_running_loop()
    streams = kind.endswith("-streams")
    remove_stale_unix(addr)
    closer: Any
    if addr.transport == "udp":
        if streams or proto != "echo" or tls is not None:
            unsupported(kind, addr, proto, tls)
        closer, _ = await loop.create_datagram_endpoint(
            UdpEchoProtocol, local_addr=(addr.host, addr.port)
        )
        return closer, closer.get_extra_info("sockname")
    if streams:
        handler = stream_http if proto == "http" else stream_echo
        if addr.transport == "unix":
            closer = await asyncio.start_unix_server(handler, addr.path, backlog=BACKLOG,
                                                     ssl=tls)
        else:
            closer = await asyncio.start_server(
                handler, addr.host, addr.port, backlog=BACKLOG, ssl=tls
            )
    else:
        factory = HttpHelloProtocol if proto == "http" else EchoProtocol
        if addr.transport == "unix":
            closer = await loop.create_unix_server(factory, addr.path, backlog=BACKLOG, ssl=tls)
        else:
            closer = await loop.create_server(factory, addr.host, addr.port,
                                              backlog=BACKLOG, ssl=tls)
    return closer, closer.sockets[0].getsockname()


async def run(kind: str, addr: Address, proto: str, tls: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    closer, bound = await listen(kind, addr, proto, tls)
    announce(addr, bound)
    await stop.wait()
    closer.close()
    remove_stale_unix(addr)


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """The event loop of a kind: uvloop's for ``uvloop-*``, asyncio's default otherwise."""
    if kind.startswith("uvloop-"):
        import uvloop  # absent -> ImportError -> "failed to start" (runner skips it earlier)

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def serve(kind: str, addr: Address, proto: str, tls: ssl.SSLContext | None = None) -> None:
    loop = new_loop(kind)
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(run(kind, addr, proto, tls))
    finally:
        loop.close()
