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
import ssl
from typing import Any, Callable

from handlers.transport import SocketTransport, TLSTransport, Transport, tls_of
from reactor import Stage

from . import tls as tls_stage
from .base import BaseServer, logger
from .unix import bind_unix, remove_if_ours

__all__ = ["TCPServer", "UnixStreamServer"]


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
    #: True in the threading/forking combinations: the thread or child completes the
    #: handshake (its CPU is then not the loop's); a plain server's reactor drives it.
    _handshake_in_worker = False

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
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer may already have gone
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Close the connection's socket."""
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
        context = self.ssl_context  # the value current now: rotation takes effect per accept
        if context is not None and tls_of(request) is None:
            try:
                request = tls_stage.wrap_accepted(context, request)
            except (OSError, ValueError) as exc:
                logger.warning("%s: cannot start TLS with %s: %s", self._name(),
                               client_address, exc)
                self.shutdown_request(request)
                return
        tls = tls_of(request)
        if tls is not None and tls_stage.handshake_pending(tls) and \
                not self._handshake_in_worker and self._reactor is not None:
            entry = self._stage_entry(request, client_address)
            entry.move_to(Stage.HANDSHAKING)
            tls_stage.ReactorHandshake(self._reactor, entry, self.ssl_handshake_timeout,
                                       self._name(), self._after_handshake,
                                       self._abandon).start()
            return
        if self.read_ahead is not None and self._can_read_ahead(request):
            self._start_read_ahead(self._stage_entry(request, client_address))
            return
        self._dispatch_request(request, client_address)

    def _after_handshake(self, entry: Any) -> None:
        request = entry.request
        request.setblocking(True)  # as accept() gives it; async handlers switch it back
        if self.read_ahead is not None and self._can_read_ahead(request):
            self._start_read_ahead(entry)
        else:
            self._dispatch_request(request, entry.client_address)

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

    def _start_read_ahead(self, entry: Any) -> None:
        entry.move_to(Stage.READING_AHEAD)
        timer = self._reactor.call_later(self.read_ahead_timeout, self._read_ahead_expired,
                                         entry)
        self._reactor.add_reader(entry.fd, self._read_ahead_ready, entry, timer)

    def _read_ahead_ready(self, entry: Any, timer: Any, low_water: int = 0) -> None:
        request = entry.request
        if tls_of(request) is not None:
            # Encrypted bytes cannot be peeked at: a readable socket means the first record
            # of the request has arrived, which is as far as read-ahead can see.
            self._read_ahead_done(entry, timer, 0)
            return
        limit = self.read_ahead_limit
        try:
            peeked = request.recv(limit, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            peeked = b""  # the handler will meet the error itself
        if peeked and len(peeked) < limit and self.read_ahead not in peeked and \
                not 0 < len(peeked) < low_water:  # woken with nothing new: EOF or an error
            self._read_ahead_wait_for_more(entry, timer, len(peeked))
            return
        self._read_ahead_done(entry, timer, low_water)

    def _read_ahead_done(self, entry: Any, timer: Any, low_water: int) -> None:
        timer.cancel()
        self._reactor.forget(entry.fd)
        if low_water:
            try:
                entry.request.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            except OSError:
                pass  # the handler will meet the error itself
        self._dispatch_request(entry.request, entry.client_address)  # adopts the entry

    def _read_ahead_wait_for_more(self, entry: Any, timer: Any, buffered: int) -> None:
        """The peeked bytes stay in the socket, which therefore stays readable: wake again
        only once more arrive, so that a client that dribbles cannot spin the loop. TCP has a
        receive low-water mark for that; elsewhere (Unix sockets) look again a little later."""
        request = entry.request
        if request.family in (socket.AF_INET, socket.AF_INET6) and \
                hasattr(socket, "SO_RCVLOWAT"):
            try:
                request.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, buffered + 1)
            except OSError:
                pass
            else:
                self._reactor.add_reader(entry.fd, self._read_ahead_ready, entry, timer,
                                         buffered + 1)
                return
        self._reactor.remove_reader(entry.fd)
        self._reactor.call_later(self.read_ahead_recheck, self._read_ahead_recheck, entry,
                                 timer)

    def _read_ahead_recheck(self, entry: Any, timer: Any) -> None:
        if entry.stage is Stage.READING_AHEAD and self._reactor is not None:
            self._reactor.add_reader(entry.fd, self._read_ahead_ready, entry, timer)

    def _read_ahead_expired(self, entry: Any) -> None:
        logger.info("%s: no complete request from %s within read_ahead_timeout=%ss; closing",
                    self._name(), entry.client_address, self.read_ahead_timeout)
        self._abandon(entry)


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
