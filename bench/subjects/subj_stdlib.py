"""Subjects built on the standard library's ``socketserver`` / ``http.server``.

Kinds: ``stdlib-classic`` (TCPServer / UDPServer / UnixStreamServer),
``stdlib-threading`` (Threading*Server, ThreadingHTTPServer for HTTP) and
``stdlib-forking`` (Forking*Server).  The handlers are the textbook ones.
"""

from __future__ import annotations

import socketserver

from subj_common import (
    BACKLOG,
    MAX_CHILDREN,
    Address,
    announce,
    on_sigterm,
    remove_stale_unix,
    unsupported,
)


class ClassicEcho(socketserver.StreamRequestHandler):
    """Blocking line echo."""

    disable_nagle_algorithm = True

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class UdpEcho(socketserver.DatagramRequestHandler):
    """Echo one datagram."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


_BASES: dict[tuple[str, str], type[socketserver.BaseServer]] = {
    ("stdlib-classic", "tcp"): socketserver.TCPServer,
    ("stdlib-threading", "tcp"): socketserver.ThreadingTCPServer,
    ("stdlib-forking", "tcp"): socketserver.ForkingTCPServer,
    ("stdlib-classic", "unix"): socketserver.UnixStreamServer,
    ("stdlib-threading", "unix"): socketserver.ThreadingUnixStreamServer,
    ("stdlib-classic", "udp"): socketserver.UDPServer,
    ("stdlib-threading", "udp"): socketserver.ThreadingUDPServer,
    ("stdlib-forking", "udp"): socketserver.ForkingUDPServer,
}


def build(kind: str, addr: Address, proto: str, tls: object = None) -> socketserver.BaseServer:
    """Create (bind and listen) the server for one kind/transport/protocol."""
    if tls is not None:
        unsupported(kind, addr, proto, tls)
    if proto == "http":
        if kind != "stdlib-threading" or addr.transport != "tcp":
            unsupported(kind, addr, proto)
        # Imported here only: http.server pulls in email, html, mimetypes, ... and a bigger
        # process forks slower (the forking subjects would pay for it on every connection).
        import http.server

        from subj_http import HelloHTTPHandler

        base: type = http.server.ThreadingHTTPServer
        handler: type = HelloHTTPHandler
    else:
        base = _BASES.get((kind, addr.transport)) or unsupported(kind, addr, proto)
        handler = UdpEcho if addr.transport == "udp" else ClassicEcho

    class Server(base):  # type: ignore[valid-type, misc]
        address_family = addr.family
        request_queue_size = BACKLOG
        allow_reuse_address = True
        daemon_threads = True
        block_on_close = False
        max_children = MAX_CHILDREN

    if addr.transport != "tcp":  # TCP_NODELAY fails with EOPNOTSUPP elsewhere
        handler = type(handler.__name__, (handler,), {"disable_nagle_algorithm": False})
    remove_stale_unix(addr)
    return Server(addr.sockaddr, handler)


def serve(kind: str, addr: Address, proto: str, tls: object = None) -> None:
    srv = build(kind, addr, proto, tls)
    on_sigterm(srv.shutdown)
    announce(addr, srv.server_address)
    try:
        srv.serve_forever()
    finally:
        srv.server_close()
        remove_stale_unix(addr)
