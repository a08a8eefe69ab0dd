"""TCPServer and UnixStreamServer: stream listeners.

The listening socket stays as the standard library leaves it as far as Python can tell
(`gettimeout()` is None), but its descriptor is switched to O_NONBLOCK when it goes on a
reactor: the reactor accepts in batches after one readiness event, and an accept that finds
the queue empty (another process took the connection) must fail instead of freezing the loop.
Accepted sockets are blocking, as the standard library hands them to classic handlers; a
request whose handler is `async def` is switched to non-blocking just before its task starts.

The work due before a handler runs (the TLS handshake, read-ahead) is done here as stages of
the request's one table entry (`_admit_request`); `servers.tls` holds the TLS mechanics.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any, Callable, Final

from handlers.transport import SocketTransport, TLSTransport, Transport, tls_of

from . import tls as tls_stage
from .base import BaseServer
from .stages import Admission
from .unix import bind_unix, remove_if_ours

if TYPE_CHECKING:
    # Only a program that uses TLS imports ssl, and only one that uses the PROXY protocol
    # imports its parser (servers.proxy): a smaller process forks faster (ForkingMixIn).
    import ssl

    from .proxy import ProxyInfo, ProxyTrust

__all__ = ["TCPServer", "UnixStreamServer"]


# = servers.proxy.DEFAULT_TRUSTED_NETWORKS, which this module does not import (see above)
_DEFAULT_TRUSTED: Final = ("127.0.0.0/8", "::1/128")


class TCPServer(BaseServer):
    """Same contract as `socketserver.TCPServer`.

    An IPv6 literal host (`("::1", 0)`) selects AF_INET6 without subclassing.

    TLS attributes (also on `UnixStreamServer` and the threading/forking combinations):
        ssl_context: an `ssl.SSLContext` (server side) to encrypt every connection with, or
            None. Read when each connection is accepted: assigning a new context rotates
            certificates without a restart. Handlers get an `ssl.SSLSocket` as `request`.
        ssl_handshake_timeout: seconds a client has to complete its TLS handshake (None: no
            limit); a stalled or failed handshake ends that connection alone, with one log
            line. It also bounds the handshake of a listening socket wrapped by a standard-
            library recipe (`server.socket = ctx.wrap_socket(server.socket, ...)`), which
            here never runs inside `accept()` on the loop.

    PROXY protocol attributes (stream servers; see docs/proxy.md):
        proxy_protocol: None (default), "v1", "v2" or "any": every connection must then start
            with a PROXY header of that version, read and checked on the reactor before the
            handler runs; `client_address` becomes the real client's, and the handler's
            `self.proxy` holds the header (`servers.proxy.ProxyInfo`).
        proxy_trusted: networks allowed to send a header (CIDR strings or `ipaddress`
            networks); loopback only by default. Unix socket peers are always trusted.
        proxy_header_timeout: seconds for the whole header to arrive.
        proxy_header_max_size: the largest v2 header accepted, in bytes.
    """

    address_family: int = socket.AF_INET
    socket_type: int = socket.SOCK_STREAM
    request_queue_size: int = 5
    allow_reuse_address: bool = False
    allow_reuse_port: bool = False
    #: Set TCP_NODELAY on every accepted TCP connection (as asyncio does). A handler that
    #: answers with two writes (http.server: headers, then body) otherwise waits ~40 ms per
    #: response for the client's delayed ACK. False keeps the kernel's default.
    tcp_nodelay: bool = True
    ssl_context: ssl.SSLContext | None = None
    ssl_handshake_timeout: float | None = 30.0
    proxy_protocol: str | None = None
    proxy_trusted: Any = _DEFAULT_TRUSTED
    proxy_header_timeout: float | None = 5.0
    proxy_header_max_size: int = 4096
    _proxy_headers: dict[Any, ProxyInfo] | None = None  # request -> its PROXY header
    _trust_cache: tuple[Any, ProxyTrust] | None = None

    def __init__(self, server_address: Any, RequestHandlerClass: Callable[..., Any],
                 bind_and_activate: bool = True) -> None:
        BaseServer.__init__(self, server_address, RequestHandlerClass)
        if self.address_family == socket.AF_INET and _is_ipv6_literal(server_address):
            self.address_family = socket.AF_INET6
        self.socket = socket.socket(self.address_family, self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    def server_bind(self) -> None:
        """Bind the socket (after SO_REUSEADDR / SO_REUSEPORT if asked) and record the real
        address in `server_address`."""
        if self._adopted:  # from_socket(): bound already, by whoever made the socket
            self.server_address = self.socket.getsockname()
            return
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.allow_reuse_port and hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Listen, with a backlog of `request_queue_size`."""
        if not self._adopted:  # from_socket(): listening already, with its owner's backlog
            self.socket.listen(self.request_queue_size)

    def server_close(self) -> None:
        """Stop serving and close the listening socket."""
        BaseServer.server_close(self)
        self.socket.close()

    def fileno(self) -> int:
        """The listening socket's descriptor (what the reactor watches)."""
        return self.socket.fileno()

    def get_request(self) -> tuple[Any, Any]:
        """Accept a connection: returns `(socket, client_address)`.

        When `self.socket` was wrapped with `ssl.SSLContext.wrap_socket()` (a standard-library
        recipe) the connection is returned wrapped but not yet handshaken: the handshake runs
        later, off the loop's critical path, bounded by `ssl_handshake_timeout`."""
        listener = self.socket
        listener_tls = tls_of(listener)
        if listener_tls is None:
            return listener.accept()
        conn, address = socket.socket.accept(listener_tls)
        try:
            return tls_stage.wrap_accepted(listener_tls.context, conn, getattr(
                listener_tls, "suppress_ragged_eofs", True)), address
        except BaseException:
            conn.close()
            raise

    def shutdown_request(self, request: Any) -> None:
        """Send TLS close_notify on an encrypted connection (without waiting for the peer's),
        shut the connection's write side (ignoring errors), then `close_request()`."""
        tls = tls_of(request)
        if tls is not None:
            tls_stage.send_close_notify(tls)
        if self._proxy_headers:
            self._proxy_headers.pop(request, None)
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer may already have gone
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Close the connection's socket."""
        if self._proxy_headers:
            self._proxy_headers.pop(request, None)
        request.close()

    # -------------------------------------------------------------- from_socket() hooks
    _adopted = False  # the socket came through from_socket(): never bind or listen it

    @classmethod
    def _check_adoptable(cls, sock: socket.socket) -> None:
        got = _SERVER_FOR.get((sock.family, sock.type))
        wanted = _SERVER_FOR.get((cls.address_family, cls.socket_type))
        if got != wanted or (wanted is None and (sock.family, sock.type) !=
                             (cls.address_family, cls.socket_type)):
            family, kind = getattr(sock.family, "name", sock.family), getattr(
                sock.type, "name", sock.type)
            hint = f"; use {got}.from_socket()" if got else ""
            raise TypeError(f"{cls.__name__} cannot serve {family}/{kind} sockets{hint}")
        if sock.type == socket.SOCK_STREAM and hasattr(socket, "SO_ACCEPTCONN") and \
                not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ValueError(f"{sock!r} is not listening: call its listen() first "
                             "(from_socket() never binds or listens)")
        address = sock.getsockname()
        if address in ("", b"") or (isinstance(address, tuple) and address[1] == 0):
            raise ValueError(f"{sock!r} is not bound: call its bind() first (from_socket() "
                             "never binds or listens)")

    def _adopt_socket(self, sock: socket.socket) -> None:
        unused, self.socket = self.socket, sock
        unused.close()
        self.address_family = sock.family
        self._adopted = True
        if sock.type == socket.SOCK_DGRAM and sock.gettimeout() is None:
            # Service managers pass O_NONBLOCK sockets; handlers reply on a datagram server's
            # socket with sendto(), which must block as it does on a socket we made.
            sock.setblocking(True)

    # -------------------------------------------------------------- reactor hooks
    _listener_nonblocking = False

    def _prepare_listener(self) -> None:
        if self.proxy_protocol is not None or self.proxy_trusted is not _DEFAULT_TRUSTED or \
                self.proxy_header_max_size != TCPServer.proxy_header_max_size:
            self._check_proxy_settings()
        if self.socket.gettimeout() is None:
            os.set_blocking(self.socket.fileno(), False)
            self._listener_nonblocking = True

    def _accept_budget(self) -> int:
        # An overridden get_request() is called only when the socket is readable, as the
        # standard library does: no extra call that would fail with "would block".
        # A socket with a timeout (settimeout(t > 0)) would make a "would block" accept()
        # wait t seconds inside Python, freezing the loop: accept one per readiness then.
        if type(self).get_request is not TCPServer.get_request or \
                self.socket.gettimeout() not in (None, 0.0):
            return 1
        # O_NONBLOCK was set by _prepare_listener (checked once there, not per event)
        return self.accept_batch if self._listener_nonblocking else 1

    def _prepare_request(self, request: Any) -> None:
        if self.tcp_nodelay and self.address_family in _TCP_FAMILIES and \
                self.socket_type == socket.SOCK_STREAM:
            try:
                request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass  # not a TCP socket after all (an overridden get_request)

    def _prepare_for_reactor(self, request: Any) -> None:
        request.setblocking(False)

    def _transport_for(self, request: Any) -> Transport:
        if tls_of(request) is not None:
            return TLSTransport(request)
        return SocketTransport(request)

    # ---------------------------------------------------- stages before the handler runs
    def _admit_request(self, request: Any, client_address: Any) -> None:
        if self._reactor is None or not self._has_stages(request):
            self._dispatch_request(request, client_address)  # the hot path: nothing to do
            return
        Admission(self, self._stage_entry(request, client_address)).start()

    def _has_stages(self, request: Any) -> bool:
        if self.proxy_protocol is not None or self.ssl_context is not None:
            return True
        if self.read_ahead is not None and self._can_read_ahead(request):
            return True
        tls = tls_of(request)  # a standard-library recipe wrapped it
        return tls is not None and tls_stage.handshake_pending(tls) and \
            not self.request_dispatch.handshake_in_worker

    def proxy_header(self, request: Any) -> ProxyInfo | None:
        """The PROXY protocol header that `request` started with (None without one); the
        handler's `self.proxy` asks this."""
        return self._proxy_headers.get(request) if self._proxy_headers else None

    def _remember_proxy_header(self, request: Any, info: ProxyInfo) -> None:
        if self._proxy_headers is None:
            self._proxy_headers = {}
        self._proxy_headers[request] = info

    def _check_proxy_settings(self) -> None:
        from . import proxy
        if self.proxy_protocol not in (None, *proxy.ACCEPT_VALUES):
            raise ValueError(f"proxy_protocol must be None, 'v1', 'v2' or 'any', not "
                             f"{self.proxy_protocol!r}")
        self._proxy_trust()  # a malformed proxy_trusted network fails now, not per connection
        size = self.proxy_header_max_size
        if isinstance(size, bool) or not isinstance(size, int) or size < proxy.V2_PREFIX_BYTES:
            raise ValueError(f"proxy_header_max_size must be an int of at least "
                             f"{proxy.V2_PREFIX_BYTES} (a v2 header's fixed prefix), not "
                             f"{size!r}")

    def _proxy_trust(self) -> ProxyTrust:
        networks = self.proxy_trusted
        cached = self._trust_cache
        if cached is None or cached[0] is not networks:
            from .proxy import ProxyTrust
            cached = self._trust_cache = (networks, ProxyTrust(networks))
        return cached[1]

    def _complete_handshake(self, request: Any, client_address: Any) -> bool:
        tls = tls_of(request)
        if tls is None or not tls_stage.handshake_pending(tls):
            return True
        return tls_stage.complete_handshake(tls, self.ssl_handshake_timeout, self._name(),
                                            client_address)

    def _request_fd(self, request: Any) -> int:
        fileno = getattr(request, "fileno", None)
        return fileno() if callable(fileno) else -1

    # Seconds between looks at a read-ahead connection holding part of a request, where the
    # socket has no receive low-water mark to wake us when more arrives (Unix sockets).
    read_ahead_recheck: float = 0.05

    def _can_read_ahead(self, request: Any) -> bool:
        if not isinstance(request, socket.socket) or getattr(
                self.RequestHandlerClass, "handle_is_async", False):
            return False
        tls = tls_of(request)  # a TLS handshake left to a worker must come first
        return tls is None or not tls_stage.handshake_pending(tls)


class UnixStreamServer(TCPServer):
    """Same contract as `socketserver.UnixStreamServer`, plus socket-file care: a stale file
    left by a crashed run gets an error saying what to do (or is removed when
    `remove_stale_socket` is True), and `server_close()` removes the file it created."""

    address_family: int = getattr(socket, "AF_UNIX", -1)
    remove_stale_socket: bool = False
    _socket_inode: int | None = None

    def server_bind(self) -> None:
        if not self._adopted:  # from_socket(): the file is its binder's, never removed
            self._socket_inode = bind_unix(self.socket, self.server_address,
                                           self.remove_stale_socket)
        self.server_address = self.socket.getsockname()

    def server_close(self) -> None:
        TCPServer.server_close(self)
        remove_if_ours(self.server_address, self._socket_inode)
        self._socket_inode = None


_TCP_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6})

# (family, type) -> the library's class that serves such sockets, for from_socket()'s checks
_SERVER_FOR: dict[tuple[int, int], str] = {
    (socket.AF_INET, socket.SOCK_STREAM): "TCPServer",
    (socket.AF_INET6, socket.SOCK_STREAM): "TCPServer",
    (socket.AF_INET, socket.SOCK_DGRAM): "UDPServer",
    (socket.AF_INET6, socket.SOCK_DGRAM): "UDPServer",
}
if hasattr(socket, "AF_UNIX"):
    _SERVER_FOR[socket.AF_UNIX, socket.SOCK_STREAM] = "UnixStreamServer"
    _SERVER_FOR[socket.AF_UNIX, socket.SOCK_DGRAM] = "UnixDatagramServer"


def _is_ipv6_literal(address: Any) -> bool:
    return (isinstance(address, tuple) and len(address) >= 2 and isinstance(address[0], str)
            and ":" in address[0] and socket.has_ipv6)
