"""UDPServer and UnixDatagramServer: one request per datagram.

The request is `(data, server_socket)`; the server socket is shared by every request and is
never closed by a request. It stays blocking (handlers reply with `sendto`); the reactor
receives with MSG_DONTWAIT, so it can take a batch of datagrams per readiness event.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Callable

from .tcp import TCPServer
from .unix import bind_unix, remove_if_ours

if TYPE_CHECKING:
    import ssl

__all__ = ["UDPServer", "UnixDatagramServer"]


class UDPServer(TCPServer):
    """Same contract as `socketserver.UDPServer`.

    Attributes:
        max_packet_size: bytes read per datagram (longer ones are truncated by the kernel).
        ssl_context: always None: the standard library has no DTLS, so setting one raises
            ValueError.
    """

    allow_reuse_address: bool = False
    allow_reuse_port: bool = False
    socket_type: int = socket.SOCK_DGRAM
    max_packet_size: int = 8192

    def __init__(self, server_address: Any, RequestHandlerClass: Callable[..., Any],
                 bind_and_activate: bool = True) -> None:
        declared = next(vars(klass)["ssl_context"] for klass in type(self).__mro__
                        if "ssl_context" in vars(klass))  # as set on the class, not computed
        if not isinstance(declared, property) and declared is not None:
            _refuse_tls(type(self).__name__)
        TCPServer.__init__(self, server_address, RequestHandlerClass, bind_and_activate)

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return None

    @ssl_context.setter
    def ssl_context(self, value: ssl.SSLContext | None) -> None:
        if value is not None:
            _refuse_tls(type(self).__name__)

    def get_request(self) -> tuple[Any, Any]:
        """Receive one datagram: returns `((data, socket), client_address)`."""
        flags = socket.MSG_DONTWAIT if self._reactor is not None else 0
        data, client_address = self.socket.recvfrom(self.max_packet_size, flags)
        return (data, self.socket), client_address

    def server_activate(self) -> None:
        """Nothing to do: datagram sockets do not listen."""

    def shutdown_request(self, request: Any) -> None:
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Nothing to close: the socket belongs to the server."""

    def _prepare_listener(self) -> None:
        """The socket stays blocking: handlers reply on it."""

    def _accept_budget(self) -> int:
        # With settimeout(t > 0), recvfrom() waits t seconds inside Python even with
        # MSG_DONTWAIT: take one datagram per readiness event then.
        if type(self).get_request is not UDPServer.get_request or \
                self.socket.gettimeout() not in (None, 0.0):
            return 1
        return self.accept_batch

    def _prepare_request(self, request: Any) -> None:
        """Nothing to tune: the request holds the server's own socket."""

    def _prepare_for_reactor(self, request: Any) -> None:
        """The shared socket is never made non-blocking."""

    def _request_fd(self, request: Any) -> int:
        return -1

    def _can_read_ahead(self, request: Any) -> bool:
        return False

    def _admit_request(self, request: Any, client_address: Any) -> None:
        self._dispatch_request(request, client_address)  # a datagram has no stages

    def _transport_for(self, request: Any) -> Any:
        return None  # a datagram handler has no stream


def _refuse_tls(class_name: str) -> None:
    raise ValueError(f"{class_name} cannot use ssl_context: TLS needs a stream socket and the "
                     "standard library has no DTLS; use a TCP or Unix stream server for TLS")


class UnixDatagramServer(UDPServer):
    """Same contract as `socketserver.UnixDatagramServer`, with the socket-file care of
    `UnixStreamServer`."""

    address_family: int = getattr(socket, "AF_UNIX", -1)
    remove_stale_socket: bool = False
    _socket_inode: int | None = None

    def server_bind(self) -> None:
        if not self._adopted:  # from_socket(): the file is its binder's, never removed
            self._socket_inode = bind_unix(self.socket, self.server_address,
                                           self.remove_stale_socket)
        self.server_address = self.socket.getsockname()

    def server_close(self) -> None:
        UDPServer.server_close(self)
        remove_if_ours(self.server_address, self._socket_inode)
        self._socket_inode = None
