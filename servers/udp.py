"""UDPServer and UnixDatagramServer: one request per datagram.

The request is `(data, server_socket)`; the server socket is shared by every request and is
never closed by a request. It stays blocking (handlers reply with `sendto`); the reactor
receives with MSG_DONTWAIT, so it can take a batch of datagrams per readiness event.

The fast path (`_receive_batch`): when the standard hooks that carry a datagram are the
library's own, each datagram of a batch goes straight from `recvfrom` to its handler. A classic
handler runs inline, as in the standard library; an async handler's coroutine is run inline up
to its first suspension. Neither gets a row in the request table unless the coroutine suspends:
only then does it become a task, with its row, as every async request on a stream server.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Final, Generator

import handlers
from reactor import Stage

from .base import BaseServer
from .dispatch import LoopDispatch
from .lifecycle import _FAILED
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

    # ------------------------------------------------------------------ the fast path
    def _on_listener_readable(self) -> None:
        cls = type(self)
        if (self._single_request or cls.get_request is not UDPServer.get_request
                or cls.process_request is not BaseServer.process_request
                or cls.request_dispatch_class is not LoopDispatch
                or cls._admit_request is not UDPServer._admit_request
                or cls._prepare_request is not UDPServer._prepare_request
                or not isinstance(getattr(self.RequestHandlerClass, "handle_is_async", None),
                                  bool)
                or self.socket.gettimeout() not in (None, 0.0)):
            TCPServer._on_listener_readable(self)  # the standard route, hook by hook
            return
        if getattr(self.RequestHandlerClass, "handle_is_async") or \
                cls.finish_request is not BaseServer.finish_request:  # it may make async ones
            with handlers.deferred_start(self._reactor) as slot:
                self._receive_batch(slot)
        else:
            self._receive_batch(None)

    def _receive_batch(self, slot: handlers.DeferredStart | None) -> None:
        """Receive up to `accept_batch` datagrams and run each one's handler (`slot`: the
        deferral async handlers hand their coroutine to, None for classic handlers). The
        hooks are called as the standard library calls them, except the library's own
        `verify_request` and `shutdown_request` (they do nothing for a datagram) and
        `finish_request` (the handler class is called directly, as it would call it)."""
        cls = type(self)
        sock = self.socket
        receive = sock.recvfrom
        size = self.max_packet_size
        verify = None if cls.verify_request is BaseServer.verify_request else self.verify_request
        shutdown = None if (cls.shutdown_request is UDPServer.shutdown_request and
                            cls.close_request is UDPServer.close_request) \
            else self.shutdown_request
        handler_class = self.RequestHandlerClass
        construct = cls.finish_request is BaseServer.finish_request  # skip a frame: the same call
        for _ in range(self.accept_batch):
            try:
                data, client_address = receive(size, socket.MSG_DONTWAIT)
            except OSError as exc:
                self._accept_failed(exc)
                return
            self._accept_count += 1
            self._episode_logged = False
            request = (data, sock)
            if verify is not None:
                verdict = self._guarded(verify, request, client_address)
                if verdict is _FAILED or not verdict:
                    if verdict is not _FAILED:
                        self.shutdown_request(request)
                    if not self._accepting:
                        return
                    continue
            try:
                if slot is not None:
                    slot.coroutine = None
                if construct:  # a classic handler runs now; an async one defers itself
                    handler_class(request, client_address, self)
                else:
                    self.finish_request(request, client_address)
                coroutine = None if slot is None else slot.coroutine
                if coroutine is not None:
                    try:
                        # A for loop, not send(): a coroutine that returns without
                        # suspending then raises no StopIteration (the common case).
                        for trap in coroutine.__await__():
                            break
                        else:
                            trap = _RETURNED
                    except Exception:
                        self._report_failure(request, client_address, handler_is_async=True)
                    else:
                        if trap is not _RETURNED:
                            self._continue_as_task(coroutine, trap, request, client_address)
                            if not self._accepting:
                                return
                            continue  # the task shuts the request down when it ends
            except Exception:
                self.handle_error(request, client_address)
            except BaseException:
                if shutdown is not None:
                    shutdown(request)
                raise
            if shutdown is not None:
                shutdown(request)
            if not self._accepting:  # a bound, shutdown() or server_close() from a handler
                return

    def _continue_as_task(self, coroutine: Coroutine[Any, Any, Any], trap: Any,
                          request: Any, client_address: Any) -> None:
        """An async handler run inline suspended on `trap`: from now on it is a task, with
        its row in the request table, like any async request."""
        entry = self._open_entry(request, client_address)
        entry.stage = Stage.RUNNING
        dispatch = self.request_dispatch
        assert isinstance(dispatch, LoopDispatch)  # the fast path runs only on the loop's
        dispatch.run_as_task(_Resumed(coroutine, trap), entry)

    def _transport_for(self, request: Any) -> Any:
        return None  # a datagram handler has no stream


_RETURNED: Final = object()  # no trap: the coroutine returned (or its trap was handed over)


class _Resumed(Coroutine[Any, Any, Any]):
    """A coroutine that was run up to its first suspension, as a task takes it: the first
    `send()` returns the trap it suspended on; everything else goes to the coroutine."""

    __slots__ = ("_coroutine", "_trap", "__qualname__")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], trap: Any) -> None:
        self._coroutine = coroutine
        self._trap = trap
        self.__qualname__ = getattr(coroutine, "__qualname__", type(coroutine).__name__)

    def send(self, value: Any) -> Any:
        trap, self._trap = self._trap, _RETURNED
        if trap is not _RETURNED:
            return trap
        return self._coroutine.send(value)

    def throw(self, *args: Any) -> Any:
        self._trap = _RETURNED
        return self._coroutine.throw(*args)

    def close(self) -> None:
        self._trap = _RETURNED
        self._coroutine.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        raise TypeError("a request's coroutine is run by the reactor, never awaited")


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
