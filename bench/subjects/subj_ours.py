"""Subjects built on this repository's ``servers`` / ``handlers`` packages.

Kinds:

``ours-async``
    ``servers.TCPServer`` (``servers.UnixStreamServer`` for Unix sockets)
    with an ``async def handle()`` handler: the reactor mode.  ``--proto
    http`` serves an HTTP/1.1 hello keep-alive handler written the same way;
    UDP: ``servers.UDPServer`` with an ``async def handle()`` datagram
    handler.  With TLS (``--tls-cert``): the same echo handler on a
    ``TCPServer`` whose ``ssl_context`` attribute is the context; a checkout
    whose servers have no ``ssl_context`` exits with status 3 (skipped).
``ours-classic``
    ``servers.TCPServer`` with a blocking handler (one client at a time, as
    in the standard library); ``servers.UDPServer`` with a
    ``DatagramRequestHandler`` for UDP.
``ours-threading``
    ``servers.ThreadingTCPServer`` with the blocking handler; for ``--proto
    http`` the standard library's ``http.server`` handler served by
    ``class S(servers.ThreadingMixIn, servers.TCPServer)``.
``ours-forking``
    ``servers.ForkingTCPServer`` with the blocking handler.

The repository root (the parent of ``bench/``) is put first on ``sys.path``.
"""

from __future__ import annotations

import ssl
import sys

from subj_common import (
    BACKLOG,
    HTTP_RESPONSE,
    MAX_CHILDREN,
    REPO_ROOT,
    Address,
    announce,
    feature_missing,
    on_sigterm,
    remove_stale_unix,
    unsupported,
)

sys.path.insert(0, REPO_ROOT)

import handlers  # noqa: E402
import servers  # noqa: E402


class AsyncEcho(handlers.StreamRequestHandler):
    """Reactor-mode line echo (the library's documented example).

    TCP_NODELAY as in every other subject (asyncio sets it by default):
    with Nagle on, each pipelined batch waits ~40 ms for a delayed ACK.
    """

    disable_nagle_algorithm = True

    async def handle(self) -> None:
        while True:
            line = await self.rfile.readline()
            if not line:
                break
            self.wfile.write(line)


class AsyncBatchEcho(handlers.StreamRequestHandler):
    """Reactor-mode line echo with the opt-in batch API: every complete line of a wake-up
    from one ``readlines_available()`` call; the replies leave in one send."""

    disable_nagle_algorithm = True

    async def handle(self) -> None:
        while True:
            lines = await self.rfile.readlines_available()
            if not lines:
                break
            for line in lines:
                self.wfile.write(line)


class ClassicEcho(handlers.StreamRequestHandler):
    """Blocking line echo, same code as the standard library subject."""

    disable_nagle_algorithm = True

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class UdpEcho(handlers.DatagramRequestHandler):
    """Echo one datagram."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


class AsyncUdpEcho(handlers.DatagramRequestHandler):
    """Echo one datagram from an ``async def handle()`` (reactor mode)."""

    async def handle(self) -> None:
        self.wfile.write(self.rfile.read())


class AsyncHttpHello(handlers.StreamRequestHandler):
    """HTTP/1.1 hello with keep-alive, reading the request head line by line."""

    disable_nagle_algorithm = True

    async def handle(self) -> None:
        while True:
            request_line = await self.rfile.readline()
            if not request_line:
                return
            close = request_line.rstrip().upper().endswith(b"HTTP/1.0")
            while True:
                header = await self.rfile.readline()
                if not header:
                    return
                if header in (b"\r\n", b"\n"):
                    break
                if header[:11].lower() == b"connection:":
                    close = b"close" in header.lower()
            self.wfile.write(HTTP_RESPONSE)
            if close:
                return


def ours_http_server_class() -> type:
    """What ``http.server.ThreadingHTTPServer`` is, built on our classes."""

    class OursHTTPServer(servers.ThreadingMixIn, servers.TCPServer):  # type: ignore[misc]
        daemon_threads = True

    return OursHTTPServer


def _choose(kind: str, addr: Address, proto: str, tls: ssl.SSLContext | None) -> tuple:
    """Return (server base class, handler class) for one combination."""
    t = addr.transport
    if tls is not None:
        if kind != "ours-async" or t == "udp" or proto != "echo":
            unsupported(kind, addr, proto, tls)
        base = servers.TCPServer if t == "tcp" else servers.UnixStreamServer
        if "ssl_context" not in dir(base):
            feature_missing(f"servers.{base.__name__} has no ssl_context attribute in this "
                            "checkout (native TLS not built yet)")
        return base, AsyncEcho
    if proto == "http":
        if t != "tcp":
            unsupported(kind, addr, proto)
        if kind == "ours-async":
            return servers.TCPServer, AsyncHttpHello
        if kind == "ours-threading":
            from subj_http import HelloHTTPHandler  # http.server: imported only when used

            return ours_http_server_class(), HelloHTTPHandler
        unsupported(kind, addr, proto)
    table = {
        ("ours-async", "tcp"): ("TCPServer", AsyncEcho),
        ("ours-async", "unix"): ("UnixStreamServer", AsyncEcho),
        ("ours-async", "udp"): ("UDPServer", AsyncUdpEcho),
        ("ours-batch", "tcp"): ("TCPServer", AsyncBatchEcho),
        ("ours-batch", "unix"): ("UnixStreamServer", AsyncBatchEcho),
        ("ours-classic", "tcp"): ("TCPServer", ClassicEcho),
        ("ours-classic", "udp"): ("UDPServer", UdpEcho),
        ("ours-threading", "tcp"): ("ThreadingTCPServer", ClassicEcho),
        ("ours-forking", "tcp"): ("ForkingTCPServer", ClassicEcho),
    }
    if (kind, t) not in table:
        unsupported(kind, addr, proto)
    name, handler = table[(kind, t)]
    return getattr(servers, name), handler


def build(kind: str, addr: Address, proto: str, tls: ssl.SSLContext | None = None) -> object:
    """Create (bind and listen) the server for one kind/transport/protocol."""
    base, handler = _choose(kind, addr, proto, tls)

    class Server(base):  # type: ignore[valid-type, misc]
        address_family = addr.family
        request_queue_size = BACKLOG
        allow_reuse_address = True
        daemon_threads = True
        block_on_close = False
        max_children = MAX_CHILDREN
        max_threads = MAX_CHILDREN  # default 256 would serve 1000 clients 256 at a time

    if tls is not None:
        Server.ssl_context = tls  # the documented class attribute (an instance one works too)
    if addr.transport != "tcp" and getattr(handler, "disable_nagle_algorithm", False):
        handler = type(handler.__name__, (handler,), {"disable_nagle_algorithm": False})
    remove_stale_unix(addr)
    return Server(addr.sockaddr, handler)


def serve(kind: str, addr: Address, proto: str, tls: ssl.SSLContext | None = None) -> None:
    srv = build(kind, addr, proto, tls)
    on_sigterm(srv.shutdown)  # type: ignore[attr-defined]
    announce(addr, srv.server_address)  # type: ignore[attr-defined]
    try:
        srv.serve_forever()  # type: ignore[attr-defined]
    finally:
        srv.server_close()  # type: ignore[attr-defined]
        remove_stale_unix(addr)
