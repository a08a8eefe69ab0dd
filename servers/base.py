"""BaseServer: the standard library's server contract, as a listener on a reactor.

Every request takes the standard route through the overridable hooks: `fileno` (watched by the
reactor) → `get_request` → `verify_request` → `process_request` → `finish_request` (the
handler) → `shutdown_request` → `close_request`, with `handle_error` for exceptions and
`service_actions` once per loop turn. `serve_forever()` and `handle_request()` are turns of a
reactor: a private one the server creates when first needed (and closes in `server_close()`),
or a shared one the server was registered on with `Reactor.register(server)`.

How a request runs is decided per request: a handler whose `handle()` is `async def` becomes a
task in the reactor's table; a classic handler runs inline, as in the standard library (or in
a thread / a child with the mixins). This module holds the loop-facing half (accepting,
bounds, back-off, shutdown and drain); `tcp.py`/`udp.py` hold the socket-facing half.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import threading
import traceback
from typing import Any, Callable, Final, TypeVar

import handlers
import reactor as reactor_pkg
from reactor import RequestEntry, Stage

__all__ = ["BaseServer"]

logger = logging.getLogger("servers")

# Accept errors that mean "out of a resource": back off instead of retrying at once (which
# would spin the loop at 100% CPU while the listening socket stays readable).
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


_FAILED: Final = object()  # what _guarded() returns when the hook raised an Exception
_ServerT = TypeVar("_ServerT", bound="BaseServer")


def _release_descriptor_number(reactor: Any, holder: socket.socket) -> None:
    """On the loop: forget the number a closed listener had, then let it be reused."""
    if not reactor.closed:
        reactor.forget(holder.fileno())
    holder.close()


def _async_request_done(task: Any) -> None:
    """Completion callback of every async request (a plain function: no bound method is kept
    per connection)."""
    task.entry.server._task_done(task)


class BaseServer:
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
        """Run the request: as a task on the reactor when the handler is `async def`,
        otherwise inline (`finish_request()` then `shutdown_request()`), as the standard
        library does. The mixins override this to use threads or child processes."""
        reactor = self._reactor
        if reactor is None:
            self.finish_request(request, client_address)
            self.shutdown_request(request)
            return
        if self._handlers_are_classic():
            self._process_inline(request, client_address)
            return
        entry = self._open_entry(request, client_address)
        owned_by_task = False
        try:
            entry.stage = Stage.RUNNING
            with handlers.deferred_start(reactor, entry,
                                         self._transport_for(request)) as deferred:
                self.finish_request(request, client_address)
            if deferred.coroutine is not None:
                self._prepare_for_reactor(request)
                reactor.spawn(deferred.coroutine, entry, _async_request_done)
                owned_by_task = True  # the task closes the request and its entry
            else:
                entry.move_to(Stage.CLOSING)
                self.shutdown_request(request)
        finally:
            if not owned_by_task:
                reactor.close_request(entry)
                self._request_closed(entry)

    def _handlers_are_classic(self) -> bool:
        """True when every request is known to run a `def handle()` (no coroutine can come
        out of `finish_request()`), so the deferral machinery can be skipped."""
        return (getattr(self.RequestHandlerClass, "handle_is_async", None) is False
                and type(self).finish_request is BaseServer.finish_request)

    def _process_inline(self, request: Any, client_address: Any) -> None:
        """Run a classic handler on the reactor's thread, its entry in the table meanwhile."""
        entry = self._open_entry(request, client_address)
        try:
            entry.stage = Stage.RUNNING
            self.finish_request(request, client_address)
            entry.stage = Stage.CLOSING
            self.shutdown_request(request)
        finally:
            self._reactor.close_request(entry)
            self._request_closed(entry)

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
    def attach(self, reactor: Any) -> None:
        """Start accepting on `reactor` (called by `Reactor.register(server)`)."""
        if self._reactor is not None and self._reactor is not reactor:
            raise reactor_pkg.ReactorError(
                f"{self!r} is already registered on another reactor; unregister it there first")
        self._prepare_listener()  # refuses invalid settings before the server is tied to it
        self._reactor = reactor
        if self._in_flight is None:
            self._in_flight = {}
        self._start_accepting()

    def detach(self, reactor: Any) -> None:
        """Stop accepting on `reactor` (called by `Reactor.unregister(server)`). Requests in
        flight keep running."""
        self._stop_accepting()
        for timer in (self._backoff_timer, self._drain_timer):
            if timer is not None:
                timer.cancel()
        self._backoff_timer = self._drain_timer = None
        if self._reactor is reactor and reactor is not self._own_reactor:
            self._reactor = None

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

    def _on_listener_readable(self) -> None:
        budget = 1 if self._single_request else self._accept_budget()
        for _ in range(budget):
            before = self._accept_count
            self._handle_request_noblock()
            if self._accept_count == before or not self._accepting:
                break

    def _accept_budget(self) -> int:
        return 1

    def _handle_request_noblock(self) -> None:
        """Accept one request and run it through the standard hooks (never blocks: the
        listening descriptor was reported ready)."""
        try:
            request, client_address = self.get_request()  # type: ignore[attr-defined]
        except OSError as exc:
            if not isinstance(exc, (BlockingIOError, InterruptedError)):
                self._failed_accepts += 1
            self._accept_failed(exc)
            return
        self._accept_count += 1
        self._episode_logged = False
        self._prepare_request(request)
        verdict = self._guarded(self.verify_request, request, client_address)
        if verdict is _FAILED:
            return
        if not verdict:
            self.shutdown_request(request)
        else:
            self._admit_request(request, client_address)

    def _admit_request(self, request: Any, client_address: Any) -> None:
        """Run the work due before the handler (stream servers: TLS handshake, read-ahead),
        then dispatch. Those stages live on one table entry, which `process_request()` then
        adopts (same id, same age)."""
        self._dispatch_request(request, client_address)

    def _dispatch_request(self, request: Any, client_address: Any) -> None:
        """`process_request()` under the standard error handling. A staged entry that an
        overridden `process_request()` did not adopt leaves the table now."""
        fd = self._request_fd(request) if self._staged_entries else -1
        self._guarded(self.process_request, request, client_address)
        staged = self._staged_entries
        if staged and fd >= 0:
            entry = staged.pop(fd, None)
            if entry is None:
                return
            if self._reactor is not None:
                self._reactor.close_request(entry)
            self._request_closed(entry)

    def _stage_entry(self, request: Any, client_address: Any) -> RequestEntry:
        """Open the table entry of a request that has work to do before its handler runs;
        `process_request()` adopts it later through `_open_entry()`."""
        entry = self._open_entry(request, client_address)
        if self._staged_entries is None:
            self._staged_entries = {}
        self._staged_entries[entry.fd] = entry  # by descriptor: a TLS wrap keeps it
        return entry

    def _guarded(self, hook: Callable[[Any, Any], Any], request: Any,
                 client_address: Any) -> Any:
        """Call `hook(request, client_address)` (verify_request, process_request) with the
        standard library's error handling: an Exception goes to `handle_error()` and the
        request is shut down (returns `_FAILED`); anything else shuts it down and propagates."""
        try:
            return hook(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
            return _FAILED
        except BaseException:
            self.shutdown_request(request)
            raise

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno not in _RESOURCE_ERRNOS or self._reactor is None:
            return  # the standard library ignores accept errors (a reset client, EAGAIN)
        if not self._episode_logged:
            logger.warning("%s: accept failed (%s); pausing accepts for %ss, again until "
                           "descriptors are free", self._name(), exc, self.accept_backoff)
            self._episode_logged = True
        self._stop_accepting()
        if self._backoff_timer is None:
            self._backoff_timer = self._reactor.call_later(self.accept_backoff,
                                                           self._end_backoff)

    def _end_backoff(self) -> None:
        self._backoff_timer = None
        self._maybe_resume_accepting()

    def _open_entry(self, request: Any, client_address: Any) -> RequestEntry:
        staged = self._staged_entries
        if staged:
            adopted = staged.pop(self._request_fd(request), None)
            if adopted is not None:
                adopted.request = request  # TLS may have wrapped it meanwhile
                return adopted  # its stages are over: the same entry goes on
        entry: RequestEntry = self._reactor.open_request(self, request, client_address,
                                           self._request_fd(request))
        self._in_flight[entry] = None
        limit = self.max_connections
        if limit is not None and len(self._in_flight) >= limit:
            self._stop_accepting()
        return entry

    def _request_closed(self, entry: RequestEntry) -> None:
        if entry in self._in_flight:
            del self._in_flight[entry]
            if entry.where is not None:
                self._offloaded -= 1
            self._maybe_resume_accepting()
            self._check_drained()

    def _mark_offloaded(self, entry: RequestEntry, where: str) -> None:
        entry.move_to(Stage.OFFLOADED)
        entry.where = where
        self._offloaded += 1

    def _maybe_resume_accepting(self) -> None:
        if (self._accepting or self._reactor is None or self._drain_state is not None
                or self._backoff_timer is not None or not self._below_limits()):
            return
        self._start_accepting()

    def _below_limits(self) -> bool:
        limit = self.max_connections
        return limit is None or len(self._in_flight) < limit

    def _start_accepting(self) -> None:
        if not self._accepting and self._drain_state is None and self._below_limits():
            self._reactor.add_reader(self.fileno(), self._on_listener_readable)  # type: ignore
            self._accepting = True

    def _stop_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            try:
                self._reactor.remove_reader(self.fileno())  # type: ignore[attr-defined]
            except (OSError, ValueError):
                pass  # the socket is already closed

    def _task_done(self, task: Any) -> None:
        """An async request ended: report its error the way the standard library would,
        then shut the request down and release its table row."""
        entry = task.entry
        request, client_address = entry.request, entry.client_address
        try:
            error = task.error
            if isinstance(error, Exception):  # not finished, cancelled, or KeyboardInterrupt
                try:
                    raise error  # the reporting below reads the exception being handled
                except Exception:
                    self._report_failure(request, client_address, handler_is_async=True)
        finally:
            task.error = None if isinstance(task.error, Exception) else task.error
            try:
                self._end_request(request)
            finally:
                self._request_closed(entry)

    def _report_failure(self, request: Any, client_address: Any,
                        handler_is_async: bool | None = None) -> None:
        """Report the exception being handled (call inside `except Exception`), in every mode
        alike: a client over a bound (`handlers.LimitExceeded`) is one WARNING; for async
        handlers a timeout or a connection error (reset, broken pipe) is one INFO line; any
        other exception goes to `handle_error()`, as the standard library does."""
        error = sys.exc_info()[1]
        if handler_is_async is None:
            handler_is_async = bool(getattr(self.RequestHandlerClass, "handle_is_async", False))
        if isinstance(error, handlers.LimitExceeded):
            logger.warning("%s: closing connection from %s: %s", self._name(), client_address,
                           error)
        elif handler_is_async and isinstance(error, (ConnectionError, TimeoutError)):
            logger.info("%s: connection from %s ended: %s", self._name(), client_address,
                        error)
        else:
            self.handle_error(request, client_address)

    def _end_request(self, request: Any) -> None:
        fd = self._request_fd(request)
        if fd >= 0 and self._reactor is not None and not self._reactor.closed:
            self._reactor.forget(fd)
        self.shutdown_request(request)

    def _abandon(self, entry: RequestEntry) -> None:
        """Close a request that has no task (in one of its stages) without running it."""
        if self._staged_entries:
            self._staged_entries.pop(entry.fd, None)
        if self._reactor is not None and entry.fd >= 0:
            self._reactor.forget(entry.fd)
        self.shutdown_request(entry.request)
        self._reactor.close_request(entry)
        self._request_closed(entry)

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
        return f"<{self._name()}>"
