"""BaseServer: the standard library's server contract, as a listener on a reactor.

Every request takes the standard route through the overridable hooks: `fileno` (watched by the
reactor) → `get_request` → `verify_request` → `process_request` → `finish_request` (the
handler) → `shutdown_request` → `close_request`, with `handle_error` for exceptions and
`service_actions` once per loop turn. `serve_forever()` and `handle_request()` are turns of a
reactor: a private one the server creates when first needed (and closes in `server_close()`),
or a shared one the server was registered on with `Reactor.register(server)`.

How a request runs is decided per request: a handler whose `handle()` is `async def` becomes a
task in the reactor's table; a classic handler runs inline, as in the standard library (or in
a thread / a child with the mixins). This module holds the loop-facing half (the standard
hooks and serving loops, accepting, bounds, back-off, shutdown and drain); `lifecycle.py` the
request's table entry from accept to close; `accepting.py` accepting under bounds and
back-off; `tcp.py`/`udp.py` the socket-facing half.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import traceback
from typing import Any, Callable, TypeVar

import reactor as reactor_pkg
from reactor import RequestEntry, Stage

from .accepting import Accepting
from .dispatch import Dispatch, LoopDispatch
from .lifecycle import RequestLifecycle

__all__ = ["BaseServer"]

logger = logging.getLogger("servers")


_ServerT = TypeVar("_ServerT", bound="BaseServer")


def _release_descriptor_number(reactor: Any, holder: socket.socket) -> None:
    """On the loop: forget the number a closed listener had, then let it be reused."""
    if not reactor.closed:
        reactor.forget(holder.fileno())
    holder.close()


class BaseServer(Accepting, RequestLifecycle):
    """Same contract as `socketserver.BaseServer`, running on a reactor.

    Differences from the standard library, all of them additions:
        - `shutdown()` works from any thread, a signal handler, or a handler on the serving
          thread (where the standard library deadlocks); it drains requests in flight.
        - Requests with an `async def` handler run concurrently on one thread.
        - Bounds: `max_connections`, `shutdown_timeout`, read-ahead (`read_ahead`).
        - Exceptions from `verify_request()` reach `handle_error()` instead of ending the loop.

    Attributes:
        timeout: seconds `handle_request()` waits for a request (None: no limit).
        max_connections: requests in flight at once; at the bound the server stops accepting
            (the kernel's backlog holds the rest) until one ends. None: no bound.
        shutdown_timeout: seconds `shutdown()` lets requests on the reactor finish before
            cancelling them.
        read_ahead: None (default), or a line ending such as b"\\n" / b"\\r\\n\\r\\n": hold each
            new stream connection until its first request has arrived (up to
            `read_ahead_limit` bytes, for at most `read_ahead_timeout` seconds) before the
            handler runs, so a client that connects and dribbles cannot freeze a reactor
            running classic handlers. The bytes stay in the socket for the handler to read.
        accept_backoff: seconds to pause accepting after EMFILE-like accept errors.
    """

    timeout: float | None = None
    max_connections: int | None = 4096
    shutdown_timeout: float = 30.0
    read_ahead: bytes | None = None
    read_ahead_limit: int = 8192  # each event re-peeks from the start: keep this small
    read_ahead_timeout: float = 30.0
    accept_backoff: float = 0.1
    accept_batch: int = 32

    # Private state has class-level defaults so that subclasses whose __init__ skips ours
    # (the standard library tolerates that) still work.
    #: Where handlers run: `LoopDispatch` (here), `ThreadDispatch` / `ChildDispatch` (mixins).
    request_dispatch_class: Callable[[Any], Dispatch] = LoopDispatch
    _request_dispatch: Dispatch | None = None
    _reactor: Any = None
    _own_reactor: Any = None
    _in_flight: Any = None
    _offloaded = 0
    _accepting = False
    _accept_paused_until: Any = None
    _accept_count = 0
    _failed_accepts = 0  # get_request() errors other than "would block"
    _single_request = False
    _drain_state: str | None = None
    _episode_logged = False  # an accept-error episode has been logged
    _drain_timer: Any = None
    _backoff_timer: Any = None
    _staged_entries: dict[int, RequestEntry] | None = None  # fd -> entry, during its stages

    def __init__(self, server_address: Any, RequestHandlerClass: Callable[..., Any]) -> None:
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        self.__is_shut_down = threading.Event()
        self.__shutdown_request = False
        self._in_flight = {}

    @property
    def reactor(self) -> Any:
        """The `reactor.Reactor` this server is registered on (its private one while
        `serve_forever()`/`handle_request()` run), or None."""
        return self._reactor

    @classmethod
    def from_socket(cls: type[_ServerT], sock: socket.socket,
                    RequestHandlerClass: Callable[..., Any]) -> _ServerT:
        """A server on `sock`, a socket already bound (and, for a stream server, listening):
        one a service manager passed (`servers.systemd.listen_fds()`), or one made by the
        caller. Connections already waiting on it are served once the server runs.

        The server never binds or listens: the constructor runs with
        `bind_and_activate=False`, then `server_bind()` and `server_activate()` run as usual,
        so that subclasses that set themselves up there (`http.server.HTTPServer`) work, but
        the library's own versions leave the socket as it is. `server_address` is
        `sock.getsockname()` and `address_family` is `sock.family`. The server then owns
        `sock`: `server_close()` closes it, but never removes a Unix socket's file (it belongs
        to whoever bound it).

        Raises:
            TypeError: this class cannot serve such a socket (a datagram socket for a stream
                server, an AF_UNIX socket for `TCPServer`, ...); the message names the class
                that can. `sock` is left as it was.
            ValueError: `sock` is not bound, or a stream socket is not listening. `sock` is
                left as it was.
        """
        cls._check_adoptable(sock)
        server = cls(sock.getsockname(), RequestHandlerClass,
                     bind_and_activate=False)  # type: ignore[call-arg]
        server._adopt_socket(sock)
        try:
            server.server_bind()  # type: ignore[attr-defined]
            server.server_activate()
        except BaseException:
            server.server_close()
            raise
        return server

    @property
    def accepting(self) -> bool:
        """True while the reactor watches the listening socket: the server is registered,
        below its bounds (`max_connections`, the dispatch's), not backing off after accept
        errors, and not shutting down."""
        return self._accepting

    @property
    def draining(self) -> bool:
        """True from the moment a shutdown begins until the requests in flight on the
        reactor have finished (or `shutdown_timeout` cancelled them)."""
        return self._drain_state == "draining"

    @property
    def requests_accepted(self) -> int:
        """Requests `get_request()` has returned so far (refused ones included)."""
        return self._accept_count

    # ------------------------------------------------------------ standard hooks
    def server_activate(self) -> None:
        """Called by the constructor to activate the server. May be overridden."""

    def service_actions(self) -> None:
        """Called once per turn of `serve_forever()`. May be overridden."""

    def handle_timeout(self) -> Any:
        """Called when `handle_request()` waited `timeout` seconds for nothing."""

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Return False to refuse the request (it is then shut down unhandled)."""
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        """Run the request through the server's dispatch: as a task on the reactor when the
        handler is `async def`, otherwise inline (`finish_request()` then
        `shutdown_request()`), as the standard library does. The mixins choose another
        dispatch (`request_dispatch_class`): a thread or a child process per request."""
        (self._request_dispatch or self.request_dispatch).start(request, client_address)

    @property
    def request_dispatch(self) -> Dispatch:
        """Where this server's handlers run (`servers.dispatch`): its `kind` ("loop",
        "thread", "child"), `running` (requests it runs now) and bounds. Made from the class's
        `request_dispatch_class` when first needed."""
        dispatch = self._request_dispatch
        if dispatch is None:
            dispatch = self._request_dispatch = self.request_dispatch_class(self)
        return dispatch

    def _handlers_are_classic(self) -> bool:
        """True when every request is known to run a `def handle()` (no coroutine can come
        out of `finish_request()`), so the deferral machinery can be skipped."""
        return (getattr(self.RequestHandlerClass, "handle_is_async", None) is False
                and type(self).finish_request is BaseServer.finish_request)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Construct the handler, which serves the request."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request: Any) -> None:
        """Called to shut down and close an individual request."""
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Called to clean up an individual request."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Report an exception raised while serving a request (call it inside `except`).

        Prints the traceback to stderr, as the standard library does; override to log instead.
        """
        print("-" * 40, file=sys.stderr)
        print("Exception occurred during processing of request from", client_address,
              file=sys.stderr)
        traceback.print_exc()
        print("-" * 40, file=sys.stderr)

    def server_close(self) -> None:
        """Stop serving and release the server's reactor resources; same contract as
        `socketserver.BaseServer.server_close`.

        Any thread may call it at any time, also while `serve_forever()` runs in another
        thread: the reactor's part of the work is then handed to the loop's thread (nothing is
        closed under a `select()` in progress), and `serve_forever()` returns (a shared reactor
        goes on serving its other servers). It waits at most the reactor's
        `handover_timeout` for that; a loop busy for longer (a classic handler running
        inline) finishes its current turn first, but the listening socket is closed at once
        all the same.
        """
        reactor = self._reactor
        own, self._own_reactor = self._own_reactor, None
        done = True
        if own is not None:
            # Unregisters this server, on the loop's thread if it runs. If that loop is busy
            # past the wait, the listener is closed all the same: no placeholder is needed,
            # as nothing else registers on a private reactor before it closes itself.
            own.close()
            done = own.closed
        if reactor is not None and reactor is not own and not reactor.closed:
            done = reactor.call_and_wait(reactor.unregister, self)
            if not done:
                self._hold_descriptor_number(reactor)
        if done:  # else the loop's unregister() clears it (detach() needs it till then)
            self._reactor = None

    def _hold_descriptor_number(self, reactor: Any) -> None:
        """A shared loop, busy in a long turn, has not yet taken this server off: close the
        listening socket now, but keep its descriptor number taken (by a placeholder) until
        the loop has forgotten it. A new descriptor with the same number (a connection another
        server accepts meanwhile) would otherwise inherit the loop's stale registration."""
        sock = getattr(self, "socket", None)
        if not isinstance(sock, socket.socket) or sock.fileno() < 0:
            return
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as placeholder:
            os.dup2(placeholder.fileno(), sock.fileno(), inheritable=False)  # closes the listener
        holder = socket.socket(fileno=sock.detach())  # the caller's socket.close() is now a no-op
        reactor.call_soon_threadsafe(_release_descriptor_number, reactor, holder)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *args: object) -> None:
        self.server_close()

    # ------------------------------------------------------------ serving loops
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle requests until `shutdown()`; same contract as the standard library's.

        `poll_interval` bounds the time between `service_actions()` calls; `shutdown()` takes
        effect at once, without waiting for it.

        Raises:
            reactor.ReactorError: the server is registered on a shared reactor (run that
                reactor's `serve_forever()` instead).
        """
        self.__is_shut_down.clear()
        try:
            reactor = self._serving_reactor()
            reactor.run_until(self._serve_forever_done, poll_interval)
        finally:
            if self._reactor is not None and self._reactor is self._own_reactor:
                self._reactor.unregister(self)
            self._drain_state = None
            self.__shutdown_request = False
            self.__is_shut_down.set()

    def shutdown(self) -> None:
        """Stop `serve_forever()`: stop accepting at once, let requests on the reactor finish
        within `shutdown_timeout`, then cancel the rest.

        From another thread this blocks until the loop has stopped serving this server; on
        the serving thread (in a handler, `service_actions()`, a signal handler) it returns
        at once and the loop stops after the current turn.
        """
        self.__shutdown_request = True
        reactor = self._reactor
        if reactor is not None:
            if reactor.is_serving_thread():
                self._begin_shutdown_if_requested()
                return
            reactor.call_soon_threadsafe(self._begin_shutdown_if_requested)
        self.__is_shut_down.wait()

    def handle_request(self) -> Any:
        """Handle one request, waiting at most `timeout` (or the socket's timeout, whichever is
        smaller) for it; returns `handle_timeout()`'s result if none came. An async request
        is run to completion before this returns."""
        timeout = self.socket.gettimeout()  # type: ignore[attr-defined]
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        reactor = self._serving_reactor()
        deadline = None if timeout is None else reactor.time() + timeout
        before = (self._accept_count, self._failed_accepts)
        self._single_request = True
        try:
            # Poll first, then check the deadline (as the standard library does), so that a
            # zero timeout still serves a pending request; a failed get_request() also ends
            # the call, silently.
            while True:
                remaining = None if deadline is None else max(0.0, deadline - reactor.time())
                reactor.run_once(remaining)
                if (self._accept_count, self._failed_accepts) != before:
                    break
                if deadline is not None and reactor.time() > deadline:
                    return self.handle_timeout()
            # One request per call, as in the standard library: while the async request runs
            # to completion, connections that arrive wait for the next call.
            self._stop_accepting()
            while self._reactor is reactor and len(self._in_flight) > self._offloaded:
                reactor.run_once(None)
        finally:
            self._single_request = False
            self._maybe_resume_accepting()
        return None

    # ------------------------------------------------------------ the listener protocol
    def begin_shutdown(self) -> None:
        """Stop accepting and drain (called by `Reactor.shutdown()` on the loop's thread)."""
        if self._drain_state is not None or self._reactor is None:
            return
        self._drain_state = "draining"
        self._stop_accepting()
        self._drain_timer = self._reactor.call_later(self.shutdown_timeout, self._drain_expired)
        self._check_drained()

    # ------------------------------------------------------------ internals
    def _serving_reactor(self) -> Any:
        reactor = self._reactor
        if reactor is None:
            if self._own_reactor is None or self._own_reactor.closed:
                self._own_reactor = reactor_pkg.Reactor()
            reactor = self._own_reactor
            reactor.register(self)
        elif reactor is not self._own_reactor:
            raise reactor_pkg.ReactorError(
                f"{self!r} is registered on a shared reactor; call that reactor's "
                "serve_forever() instead of the server's")
        elif self not in reactor.servers:
            reactor.register(self)  # serve_forever() returned (and unregistered): serve again
        return reactor

    def _serve_forever_done(self) -> bool:
        self._begin_shutdown_if_requested()
        return self._drain_state == "drained"

    def _begin_shutdown_if_requested(self) -> None:
        if self.__shutdown_request:
            self.begin_shutdown()

    def _check_drained(self) -> None:
        if self._drain_state != "draining" or len(self._in_flight) > self._offloaded:
            return
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        self._drain_state = "drained"
        reactor = self._reactor
        if reactor is not None and reactor is not self._own_reactor:
            reactor.unregister(self)  # shared reactor: this server leaves, the others stay
            self._drain_state = None
            self.__shutdown_request = False
            self.__is_shut_down.set()
        elif reactor is not None:
            # Wakes a loop sleeping in select() too: shutdown() may come from a signal.signal()
            # handler, which runs while select() waits (PEP 475 resumes the wait after it).
            reactor.call_soon_threadsafe(lambda: None)

    def _drain_expired(self) -> None:
        self._drain_timer = None
        stuck = [e for e in self._in_flight if e.stage is not Stage.OFFLOADED]
        if stuck:
            logger.warning("%s: shutdown_timeout=%ss passed with %d %s in flight; "
                           "cancelling %s", self._name(), self.shutdown_timeout, len(stuck),
                           *(("request", "it") if len(stuck) == 1 else ("requests", "them")))
        for entry in stuck:
            if entry.task is not None:
                self._reactor.cancel(entry.task)
            else:
                self._abandon(entry)

    def _admit_request(self, request: Any, client_address: Any) -> None:
        """Run the work due before the handler (stream servers: TLS handshake, read-ahead),
        then dispatch. Those stages live on one table entry, which `process_request()` then
        adopts (same id, same age)."""
        self._dispatch_request(request, client_address)

    # --- socket-facing hooks the concrete servers provide
    def _complete_handshake(self, request: Any, client_address: Any) -> bool:
        """In a thread or a child, before the handler: finish what the reactor left to the
        worker (a TLS handshake). False: the request failed (logged) and must be shut down."""
        return True

    def _transport_for(self, request: Any) -> Any:
        """The `handlers.transport.Transport` an async handler on the reactor reads and
        writes through (stream servers choose it), or None."""
        return None

    @classmethod
    def _check_adoptable(cls, sock: socket.socket) -> None:
        """Raise TypeError/ValueError unless `from_socket()` can serve `sock` with this class."""
        raise TypeError(f"{cls.__name__} has no socket of its own; from_socket() makes socket "
                        "servers: TCPServer, UDPServer, UnixStreamServer, UnixDatagramServer "
                        "and their subclasses")

    def _adopt_socket(self, sock: socket.socket) -> None:
        """Serve on `sock` instead of the socket the constructor made (checked already)."""
        raise NotImplementedError  # pragma: no cover - socket servers implement it

    def _prepare_listener(self) -> None:
        """Make the listening descriptor safe to poll (stream servers set O_NONBLOCK)."""

    def _prepare_request(self, request: Any) -> None:
        """Tune a freshly accepted request's socket (TCP servers set TCP_NODELAY)."""

    def _prepare_for_reactor(self, request: Any) -> None:
        """Make a request's socket non-blocking before its coroutine runs on the reactor."""

    def _request_fd(self, request: Any) -> int:
        return -1

    def _name(self) -> str:
        return f"{type(self).__name__}({self.server_address!r})"

    def __repr__(self) -> str:
        reactor = self._reactor
        if reactor is None or (reactor.closed or self not in reactor.servers):
            return f"<{self._name()}>"  # not serving: the rest would say nothing
        state = "draining" if self.draining else ("accepting" if self._accepting else "paused")
        return (f"<{self._name()} {state}, {len(self._in_flight)} in flight, "
                f"{self.request_dispatch!r}>")
