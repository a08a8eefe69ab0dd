"""Reactor: the selectors-driven loop every server of the library runs on.

The loop owns the phases of one turn (`run_once`): wait for I/O, run the waiters of ready
descriptors, run due timers, run callbacks queued with `call_soon`. The mechanics live
elsewhere: `interest.py` (descriptor waiters), `timers.py` (deadlines), `requests.py` (the
table), `tasks.py` (coroutines), `waker.py` (wake-ups from other threads and signals).

How tasks are driven (resumed, parked, timed out, released) is `scheduler.py`'s:
`Reactor` inherits it from `TaskScheduler`. This module is over 400 lines because the loop's
public surface (serving, callbacks, descriptors, signals, closing from any thread) is one
object's contract, documented method by method.
"""

from __future__ import annotations

import collections
import errno
import logging
import selectors
import signal
import threading
import time
from typing import Any, Callable, Final, final

from .clock import Clock, MonotonicClock
from .errors import ClosedResourceError, ReactorError
from .handles import Handle
from .interest import InterestTable
from .listener import Listener
from .requests import RequestEntry, RequestTable
from .scheduler import TaskScheduler, _close_coroutine
from .tasks import Task
from .timers import TimerHandle, TimerQueue
from .waker import Waker

__all__ = ["Reactor", "Handle"]

logger = logging.getLogger("reactor")

MAX_SLEEP_SECONDS: Final = 24 * 60 * 60  # keeps epoll's millisecond timeout in range


@final
class Reactor(TaskScheduler):
    """A single-threaded event loop that serves any number of servers.

    Args:
        selector: the `selectors.BaseSelector` to wait with (default `DefaultSelector()`).
        clock: where time is read (default the monotonic clock; tests pass a fake one).

    All methods must be called from the thread running the loop, except `call_soon_threadsafe`
    and `shutdown`, which any thread (or a signal handler) may call.
    """

    def __init__(self, selector: selectors.BaseSelector | None = None, *,
                 clock: Clock | None = None) -> None:
        self._selector = selector if selector is not None else selectors.DefaultSelector()
        self._clock = clock if clock is not None else MonotonicClock()
        # time.monotonic itself when the clock is the real one: one call less per wait
        self._now = time.monotonic if type(self._clock) is MonotonicClock else self._clock.now
        self._interest = InterestTable(self._selector)
        self._timers = TimerQueue()
        self._ready: collections.deque[Any] = collections.deque()
        self._requests = RequestTable(self._now)
        self._listeners: list[Any] = []
        self._service_actions: list[tuple[Any, Callable[[], object]]] = []
        self._signals: dict[int, tuple[Handle, Any]] = {}
        self._old_wakeup_fd: int | None = None  # set while we own signal.set_wakeup_fd()
        self._pending_signals: collections.deque[int] = collections.deque()
        self._waker = Waker()
        self._interest.set_reader(self._waker.fileno(), Handle(self._on_wake, ()))
        self._current: Task | None = None
        self._selecting = False  # True from just before select() computes its timeout
        self._step_end: list[Callable[[], object]] = []
        self._tasks: dict[Task, None] = {}  # live tasks, so close() can close them all
        self._loop_thread: int | None = None
        self._stop_requested = False
        self._shutdown_pending = False  # shutdown() called, the servers not yet told
        self._stopped = threading.Event()
        self._stopped.set()
        self._closed = False
        self._lifecycle = threading.RLock()  # see close(): who releases, and when
        self._close_state: str | None = None  # None, "requested" (loop runs) or "releasing"

    # ----------------------------------------------------------------- public surface
    @property
    def requests(self) -> RequestTable:
        """Every request in flight on this reactor: a read-only sequence of `RequestEntry`."""
        return self._requests

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def servers(self) -> tuple[Any, ...]:
        """The servers registered on this reactor, in registration order."""
        return tuple(self._listeners)

    def time(self) -> float:
        """The reactor clock's current time (seconds)."""
        return self._now()

    @property
    def timefunc(self) -> Callable[[], float]:
        """The function `time()` calls: hand it to code that needs the reactor's clock
        (one shared object, unlike a fresh bound method per use)."""
        return self._now

    def is_serving_thread(self) -> bool:
        """True when called on the thread that is running this reactor's loop right now."""
        return self._loop_thread is not None and self._loop_thread == threading.get_ident()

    def register(self, server: Any) -> None:
        """Serve `server` on this loop.

        Servers of this library are `reactor.Listener`s and attach themselves. Any other
        object with `fileno()` (a server
        of the standard library's `socketserver`, for example) is run the classic way: when
        its descriptor is readable the loop calls its `_handle_request_noblock()` (or
        `handle_request()`), and its `service_actions()` once per turn.
        """
        self._check_open()
        if server in self._listeners:
            raise ReactorError(f"{server!r} is already registered on this reactor")
        if isinstance(server, Listener):
            server.attach(self)
        else:
            serve_one = getattr(server, "_handle_request_noblock", None) or server.handle_request
            self.add_reader(server.fileno(), serve_one)
        self._listeners.append(server)
        actions = getattr(server, "service_actions", None)
        if callable(actions):
            self._service_actions.append((server, actions))

    def unregister(self, server: Any) -> None:
        """Stop serving `server` at once (no drain; see `shutdown()` for a graceful stop).
        Requests already handed to threads or children are not affected."""
        if server not in self._listeners:
            return
        self._listeners.remove(server)
        self._service_actions = [(s, a) for s, a in self._service_actions if s is not server]
        if isinstance(server, Listener):
            server.detach(self)
        else:
            try:
                self.remove_reader(server.fileno())
            except (OSError, ValueError):
                pass  # its socket is already closed
        self._waker.wake()  # serve_forever may be waiting for the last server to leave

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Handle:
        """Run `callback(*args)` on the loop's next turn, after I/O and timers."""
        handle = Handle(callback, args)
        self._ready.append(handle)
        return handle

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> Handle:
        """Like `call_soon`, from any thread or a signal handler; wakes the loop at once.
        A callback sent to a closed reactor is dropped."""
        handle = Handle(callback, args)
        if not self._closed:
            self._ready.append(handle)
            # A loop that is not waiting in select() sees the callback anyway: its next
            # select() has a zero timeout while callbacks are queued. Waking only a sleeping
            # loop saves two system calls per thread completion (measured: bench churn).
            if self._selecting:
                self._waker.wake()
        return handle

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run `callback(*args)` after `delay` seconds; returns a handle with `cancel()`."""
        return self._timers.schedule(self._now() + max(0.0, delay), callback, *args)

    def call_at(self, deadline: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run `callback(*args)` once the reactor clock reaches `deadline`."""
        return self._timers.schedule(deadline, callback, *args)

    def add_reader(self, fd: Any, callback: Callable[..., Any], *args: Any) -> Handle:
        """Call `callback(*args)` whenever `fd` (a descriptor or object with `fileno()`) is
        readable, until `remove_reader(fd)`. Replaces any earlier reader of `fd`."""
        handle = Handle(callback, args)
        self._interest.set_reader(_fileno(fd), handle)
        return handle

    def remove_reader(self, fd: Any) -> None:
        """Stop watching `fd` for readability. Call it before closing the descriptor."""
        fd = _fileno(fd)
        self._interest.clear_reader(fd)
        if self._interest.writer_of(fd) is None:
            self._interest.forget(fd)

    def add_writer(self, fd: Any, callback: Callable[..., Any], *args: Any) -> Handle:
        """Call `callback(*args)` whenever `fd` is writable, until `remove_writer(fd)`."""
        handle = Handle(callback, args)
        self._interest.set_writer(_fileno(fd), handle)
        return handle

    def remove_writer(self, fd: Any) -> None:
        """Stop watching `fd` for writability. Call it before closing the descriptor."""
        fd = _fileno(fd)
        self._interest.clear_writer(fd)
        if self._interest.reader_of(fd) is None:
            self._interest.forget(fd)

    def watched_for(self, fd: Any) -> str:
        """What the loop watches `fd` for now: "read", "write", "read+write", or "" (nothing
        wakes for it)."""
        fd = _fileno(fd)
        reading = self._interest.reader_of(fd) is not None
        writing = self._interest.writer_of(fd) is not None
        return "+".join(word for word, on in (("read", reading), ("write", writing)) if on)

    def forget(self, fd: int) -> None:
        """Drop every reader and writer of `fd` now; call before closing a descriptor that
        tasks waited on."""
        self._interest.forget(fd)

    def add_signal_handler(self, signum: int, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback(*args)` on the loop when signal `signum` arrives.

        The callback runs between requests, never inside one, so it may call `shutdown()`.
        Must be called from the main thread (Python delivers signals there).

        Raises:
            ValueError: not on the main thread, or `signum` cannot be caught.
        """
        self._check_open()
        previous = signal.signal(signum, self._on_signal)
        old = self._signals.get(signum)
        self._signals[signum] = (Handle(callback, args), old[1] if old else previous)
        if self._old_wakeup_fd is None:
            # A signal landing after the loop's last bytecode but before select() blocks runs
            # no Python handler until select() returns: let the C-level handler wake us too.
            self._old_wakeup_fd = signal.set_wakeup_fd(self._waker.write_fileno(),
                                                       warn_on_full_buffer=False)

    def remove_signal_handler(self, signum: int) -> bool:
        """Restore the handler `signum` had before `add_signal_handler`; False if none was set."""
        item = self._signals.pop(signum, None)
        if item is None:
            return False
        signal.signal(signum, item[1] if item[1] is not None else signal.SIG_DFL)
        if not self._signals and self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = None
        return True

    def open_request(self, server: Any, request: Any, client_address: Any,
                     fd: int = -1) -> RequestEntry:
        """Add a row to the request table (servers call this when they accept a request)."""
        return self._requests.open(server, request, client_address, fd)

    def close_request(self, entry: RequestEntry) -> None:
        """Remove a row from the request table; closing twice is harmless."""
        self._requests.close(entry)

    def statistics(self) -> dict[str, int]:
        """Counts an operator (or a leak check) can look at."""
        return {
            "requests": len(self._requests),
            # the waker is ours, not the user's (and close() has already forgotten it)
            "descriptors": len(self._interest) - (not self._closed),
            "timers": len(self._timers) + self._pending_deadlines(),
            "callbacks": len(self._ready),
            "servers": len(self._listeners),
        }

    # ----------------------------------------------------------------- running
    def run_once(self, timeout: float | None = None) -> int:
        """Wait at most `timeout` seconds (None: until something happens) for I/O, then run
        everything that became runnable. Returns how many events, timers and callbacks ran."""
        self._check_open()
        self._selecting = True  # set before _sleep_budget reads _ready: see call_soon_threadsafe
        try:
            events = self._selector.select(self._sleep_budget(timeout))
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            events = []
            self._evict_closed_descriptors()
        finally:
            self._selecting = False
        if self._shutdown_pending:
            # Before this turn's events: a connection that is ready now must not be accepted
            # after shutdown() returned (from a signal handler, it may have run just now).
            self._begin_shutdown()
        self._interest.dispatch(events)
        done = len(events)
        if self._timers:
            done += self._run_due_timers()
        if self._ready:
            done += self._run_ready()
        return done

    def run_until(self, finished: Callable[[], bool], poll_interval: float | None = 0.5) -> None:
        """Run turns until `finished()` is true, calling each server's `service_actions()`
        once per turn. Waits at most `poll_interval` seconds per turn (None: no limit).
        Returns early, with the reactor closed, when `close()` was called meanwhile."""
        with self._lifecycle:
            self._check_open()
            if self._loop_thread is not None:
                raise ReactorError("this reactor is already running; one loop runs it at a time")
            self._loop_thread = threading.get_ident()
            self._stopped.clear()
        try:
            while self._close_state is None and not finished():
                self.run_once(poll_interval)
                if self._service_actions:
                    self._run_service_actions()
        finally:
            self._stop_running()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve every registered server until `shutdown()` has drained them all.

        `poll_interval` bounds how long a turn waits, so that `service_actions()` runs at
        least that often; wake-ups (shutdown, other threads, signals) never wait for it.
        """
        try:
            self.run_until(self._shutdown_complete, poll_interval)
        finally:
            self._stop_requested = False

    def shutdown(self) -> None:
        """Stop every server gracefully and make `serve_forever()` return.

        Servers stop accepting at once; requests in flight finish within each server's
        `shutdown_timeout`, then are cancelled. From another thread this blocks until the loop
        has returned; on the loop's thread (in a handler, a callback, a signal handler) it
        returns at once and the loop stops after the current turn.
        """
        if self._closed:
            return
        self._stop_requested = True
        self._shutdown_pending = True
        self.call_soon_threadsafe(self._begin_shutdown)
        if self._loop_thread is not None and not self.is_serving_thread():
            self._stopped.wait()

    #: Seconds `close()` and `call_and_wait()`, called from another thread while the loop runs,
    #: wait for the loop to act. A loop busy for longer (a classic handler running inline)
    #: acts as soon as its current turn ends; meanwhile they return.
    handover_timeout: float = 1.0

    def close(self) -> None:
        """Release the loop's descriptors and signal handlers, after unregistering every server
        still registered. Tasks still alive are closed (their `finally` blocks run). Closing
        twice is harmless. Any thread (or a signal handler) may call it, at any time.

        While the loop runs, the loop's own thread does the work, so that nothing is closed
        under a `select()` in progress: the loop returns after its current turn and releases
        everything. Called on the loop's thread (a handler, a callback), close() returns at
        once; from another thread it waits at most `handover_timeout` seconds for the loop to
        finish (`closed` tells whether it has).
        """
        with self._lifecycle:
            if self._closed or self._close_state == "releasing":
                return
            running = self._loop_thread is not None
            self._close_state = "requested" if running else "releasing"
        if not running:
            self._release_resources()
        elif not self.is_serving_thread():
            self._waker.wake()  # out of select(): the loop sees the request at once
            self._stopped.wait(self.handover_timeout)

    def call_and_wait(self, callback: Callable[..., Any], *args: Any) -> bool:
        """Run `callback(*args)` on the loop's thread and wait until it has run.

        It runs at once when called on the loop's thread or while no loop runs; otherwise it
        is handed to the loop (as with `call_soon_threadsafe`) and this waits at most
        `handover_timeout` seconds. Returns True once it has run, False when the loop has not
        got to it in time: it then runs when the loop's current turn ends. An exception it
        raises propagates on the thread that ran it.
        """
        if self._loop_thread is None or self.is_serving_thread():
            callback(*args)
            return True
        claim = threading.Lock()  # whoever takes it runs the callback: the loop, or we
        done = threading.Event()

        def run_on_loop() -> None:
            if claim.acquire(blocking=False):
                try:
                    callback(*args)
                finally:
                    done.set()

        handle = self.call_soon_threadsafe(run_on_loop)
        if done.wait(self.handover_timeout):
            return True
        if self._loop_thread is None and claim.acquire(blocking=False):
            handle.cancel()  # the loop stopped (or was closed) before getting to it
            callback(*args)
            return True
        return False

    def _stop_running(self) -> None:
        """The loop's last act: release everything if `close()` was called meanwhile."""
        with self._lifecycle:
            self._loop_thread = None
            release = self._close_state == "requested"
            if release:
                self._close_state = "releasing"
        try:
            if release:
                self._release_resources()
        finally:
            self._stopped.set()

    def _release_resources(self) -> None:
        for server in list(self._listeners):
            self.unregister(server)
        for signum in list(self._signals):
            self.remove_signal_handler(signum)
        for task in list(self._tasks):
            if not task.done:
                _close_coroutine(task)
                self._release(task)
        self._tasks.clear()
        for entry in list(self._requests):
            self._requests.close(entry)
        self._closed = True
        self._ready.clear()
        self._interest.forget(self._waker.fileno())
        self._waker.close()
        self._selector.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Reactor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._loop_thread else "idle")
        return (f"<Reactor {state} servers={len(self._listeners)} "
                f"requests={len(self._requests)}>")

    # ----------------------------------------------------------------- turn phases
    def _sleep_budget(self, timeout: float | None) -> float | None:
        if self._ready:
            return 0.0
        deadline = self._timers.next_deadline()
        if deadline is not None:
            until_timer = max(0.0, deadline - self._now())
            timeout = until_timer if timeout is None else min(timeout, until_timer)
        return None if timeout is None else min(max(0.0, timeout), MAX_SLEEP_SECONDS)

    def _evict_closed_descriptors(self) -> None:
        """A descriptor was closed while registered (select() says EBADF): wake its waiters
        with the error, so one bad request fails alone instead of stopping the loop."""
        for fd in self._interest.closed_descriptors():
            waiters = self._interest.forget(fd)
            logger.warning("descriptor %d was closed while the reactor watched it", fd)
            for waiter in waiters:
                if isinstance(waiter, Task):
                    self._ready.append(Handle(self._advance, (waiter, OSError(
                        errno.EBADF, f"descriptor {fd} was closed while awaited"))))

    def _run_due_timers(self) -> int:
        due = self._timers.pop_due(self._now())
        for timer in due:
            timer.run()
        return len(due)

    def _run_ready(self) -> int:
        # Only what is runnable now: callbacks queued meanwhile wait for the next turn,
        # so no request can starve the others.
        ready = self._ready
        count = len(ready)
        for _ in range(count):
            ready.popleft().run()
        return count

    def _run_service_actions(self) -> None:
        for server, actions in list(self._service_actions):
            try:
                actions()
            except Exception:
                logger.exception("service_actions() of %r raised; the server keeps serving",
                                 server)
                handle_error = getattr(server, "handle_error", None)
                if callable(handle_error):
                    handle_error(None, None)

    def _on_wake(self) -> None:
        self._waker.drain()
        pending = self._pending_signals
        while pending:
            item = self._signals.get(pending.popleft())
            if item is not None:
                item[0].run()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._pending_signals.append(signum)
        self._waker.wake()

    def _begin_shutdown(self) -> None:
        if not self._shutdown_pending:
            return  # begun already, at the start of this turn
        self._shutdown_pending = False
        for server in list(self._listeners):
            if isinstance(server, Listener):
                server.begin_shutdown()
            else:
                self.unregister(server)

    def _shutdown_complete(self) -> bool:
        return self._stop_requested and not self._listeners

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError("this reactor is closed; create a new Reactor()")


def _fileno(fd: Any) -> int:
    return fd if isinstance(fd, int) else int(fd.fileno())
