"""Dispatch: where a request's handler runs once the request has been admitted.

Every server has one dispatch object, made from its class's `dispatch_class` when first needed;
the mixins choose theirs:

    LoopDispatch    BaseServer's: on the reactor's thread, a classic handler inline and an
                    `async def` one as a task in the request table
    ThreadDispatch  ThreadingMixIn's: one `threading.Thread` per request
    ChildDispatch   ForkingMixIn's: one `os.fork()` per request

The server meets its dispatch at three points only: `process_request()` calls
`dispatch.start(request, client_address)`, accepting asks `dispatch.has_room()` before taking
more, and `server_close()` calls `dispatch.close()`. A dispatch keeps its own bookkeeping
(tasks, threads, children) and reaches the request table only through the server's request
lifecycle (`servers/lifecycle.py`: open an entry, mark it offloaded, close it, report a
failure), so every request, however it runs, is opened and closed on one path.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, ClassVar, Coroutine

import handlers
from reactor import RequestEntry, Stage, Task

if TYPE_CHECKING:
    from .base import BaseServer
    from .mixins import ForkingMixIn, ThreadingMixIn

__all__ = ["Dispatch", "LoopDispatch", "ThreadDispatch", "ChildDispatch"]


class Dispatch:
    """The interface every dispatch provides (see the module docstring).

    Attributes:
        kind: "loop", "thread" or "child".
        handshake_in_worker: True when the thread or child completes a TLS handshake itself
            (its CPU is then not the loop's); False when the reactor drives it before dispatch.
    """

    kind: ClassVar[str] = ""
    handshake_in_worker: ClassVar[bool] = False

    def start(self, request: Any, client_address: Any) -> None:
        """Run the request's handler (from `process_request()`); returns once it is handed
        over (a task, thread or child) or, inline, once it has ended."""
        raise NotImplementedError

    def has_room(self) -> bool:
        """False at this dispatch's own bound (`max_threads`, `max_children`): the server
        then stops accepting until a request ends."""
        return True

    @property
    def running(self) -> int:
        """Requests this dispatch runs right now."""
        raise NotImplementedError

    def close(self) -> None:
        """Called by `server_close()`: wait for what the server's settings say to wait for."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} running={self.running}>"


class LoopDispatch(Dispatch):
    """Runs handlers on the reactor's thread: a classic `handle()` inline (the loop waits for
    it, as the standard library's plain servers do), an `async def handle()` as a task that
    closes its request when it ends. Without a reactor (`process_request()` called directly)
    the handler runs inline, as in the standard library."""

    kind = "loop"
    __slots__ = ("server", "_on_task_done")

    def __init__(self, server: BaseServer) -> None:
        self.server = server
        self._on_task_done = self._task_done  # one bound method per server, not per request

    def start(self, request: Any, client_address: Any) -> None:
        server = self.server
        reactor = server.reactor
        if reactor is None:
            server.finish_request(request, client_address)
            server.shutdown_request(request)
            return
        entry = server._open_entry(request, client_address)
        if server._handlers_are_classic():
            self._run_inline(entry, request, client_address)
            return
        owned_by_task = False
        try:
            entry.stage = Stage.RUNNING
            with handlers.deferred_start(reactor, entry,
                                         server._transport_for(request)) as deferred:
                server.finish_request(request, client_address)
            if deferred.coroutine is not None:
                server._prepare_for_reactor(request)
                self.run_as_task(deferred.coroutine, entry)
                owned_by_task = True  # the task closes the request and its entry
            else:
                entry.move_to(Stage.CLOSING)
                server.shutdown_request(request)
        finally:
            if not owned_by_task:
                server._close_entry(entry, reactor)

    def run_as_task(self, coroutine: Coroutine[Any, Any, Any], entry: RequestEntry) -> None:
        """Run an async request's coroutine as a task on the server's reactor, started at
        once (up to its first suspension); when it ends, its error is reported and the
        request shut down and closed (see `_task_done`)."""
        reactor = self.server.reactor
        assert reactor is not None  # only a server on a reactor has tasks
        reactor.spawn(coroutine, entry, self._on_task_done, eager=True)

    def _run_inline(self, entry: RequestEntry, request: Any, client_address: Any) -> None:
        server = self.server
        try:
            entry.stage = Stage.RUNNING
            server.finish_request(request, client_address)
            entry.stage = Stage.CLOSING
            server.shutdown_request(request)
        finally:
            server._close_entry(entry, server.reactor)

    def _task_done(self, task: Task) -> None:
        """An async request ended: report its error the way the standard library would,
        then shut the request down and release its table row."""
        server, entry = self.server, task.entry
        assert entry is not None  # every request task serves an entry
        request, client_address = entry.request, entry.client_address
        try:
            error = task.error
            if isinstance(error, Exception):  # not finished, cancelled, or KeyboardInterrupt
                try:
                    raise error  # the reporting below reads the exception being handled
                except Exception:
                    server._report_failure(request, client_address, handler_is_async=True)
        finally:
            task.error = None if isinstance(task.error, Exception) else task.error
            try:
                server._end_request(request)
            finally:
                server._request_closed(entry)

    @property
    def running(self) -> int:
        return sum(1 for entry in self.server._entries_in_flight()
                   if entry.stage is not Stage.OFFLOADED)


class ThreadDispatch(Dispatch):
    """One new thread per request (the standard library's `ThreadingMixIn` contract): the
    thread runs `process_request_thread()`; the request stays in the reactor's table (stage
    OFFLOADED) until the thread ends. At `max_threads` the server stops accepting. Threads
    that will be joined (`block_on_close`, not `daemon_threads`) are kept until they end;
    finished ones are forgotten at the next request, and at `close()` the rest are joined."""

    kind = "thread"
    handshake_in_worker = True
    __slots__ = ("server", "_running", "_joinable")

    def __init__(self, server: ThreadingMixIn) -> None:
        self.server = server
        self._running = 0
        self._joinable: list[threading.Thread] = []

    def start(self, request: Any, client_address: Any) -> None:
        server = self.server
        reactor = server.reactor
        entry = None
        if reactor is not None:
            entry = server._open_entry(request, client_address)
            server._mark_offloaded(entry, "thread")
        thread = threading.Thread(target=self._thread_main,
                                  args=(request, client_address, entry, reactor))
        thread.daemon = server.daemon_threads
        joinable = self._forget_finished()
        if not thread.daemon and server.block_on_close:
            joinable.append(thread)
        self._running += 1
        try:
            thread.start()
        except BaseException:
            self._running -= 1
            if thread in joinable:
                joinable.remove(thread)
            if entry is not None:
                server._close_entry(entry, reactor)
            raise
        server._check_room()

    def _thread_main(self, request: Any, client_address: Any, entry: RequestEntry | None,
                     reactor: Any) -> None:
        server = self.server
        try:
            if server._complete_handshake(request, client_address):
                server.process_request_thread(request, client_address)
            else:
                server.shutdown_request(request)
        finally:
            if reactor is not None:
                reactor.call_soon_threadsafe(self._thread_done, entry, reactor)

    def _thread_done(self, entry: RequestEntry, reactor: Any) -> None:
        # `reactor` is the one the request started on: the server may have left it since.
        self._running -= 1
        if self._joinable:  # drop the ended ones; one still finishing stays for close()
            self._forget_finished()
        self.server._close_entry(entry, reactor)

    def _forget_finished(self) -> list[threading.Thread]:
        joinable = self._joinable
        joinable[:] = [t for t in joinable if t.is_alive() or not t.ident]
        return joinable

    def has_room(self) -> bool:
        limit = self.server.max_threads
        return limit is None or self._running < limit

    @property
    def running(self) -> int:
        """Request threads started and not yet reported ended to the loop."""
        return self._running

    @property
    def joinable(self) -> int:
        """Threads kept for `close()` to join: non-daemon ones (with `block_on_close`) not yet
        seen to end (ended ones are dropped when a request starts or a thread reports)."""
        return len(self._joinable)

    def close(self) -> None:
        threads, self._joinable = self._joinable, []
        for thread in threads:
            thread.join()

    def __repr__(self) -> str:
        return (f"<ThreadDispatch running={self._running} max_threads={self.server.max_threads}"
                f" joinable={len(self._joinable)}>")


class ChildDispatch(Dispatch):
    """One child process per request (the standard library's `ForkingMixIn` contract): the
    child serves the request with blocking I/O and ends in `os._exit()`; the parent records
    the pid in `active_children`, keeps the request in the table (OFFLOADED, "child PID") and
    reaps the child the moment it exits (through a pidfd where the platform has one, else at
    each `collect_children()`). At `max_children` a server on a reactor stops accepting instead
    of blocking in `waitpid()`."""

    kind = "child"
    handshake_in_worker = True
    __slots__ = ("server", "_children")

    def __init__(self, server: ForkingMixIn) -> None:
        self.server = server
        self._children: dict[int, tuple[RequestEntry, int, Any]] = {}  # pid -> (entry, pidfd, reactor)

    def start(self, request: Any, client_address: Any) -> None:
        server = self.server
        pid = os.fork()
        if pid:
            if server.active_children is None:
                server.active_children = set()
            server.active_children.add(pid)
            self._watch(pid, request, client_address)  # adopts a staged entry by its fd
            server.close_request(request)
            return
        status = 1
        try:
            if server._complete_handshake(request, client_address):
                server.finish_request(request, client_address)
                status = 0
        except Exception:
            server._report_failure(request, client_address)
        finally:
            try:
                server.shutdown_request(request)
            finally:
                os._exit(status)

    def _watch(self, pid: int, request: Any, client_address: Any) -> None:
        server = self.server
        reactor = server.reactor
        if reactor is None:
            return
        entry = server._open_entry(request, client_address)
        entry.fd = -1  # the parent's copy of the socket is closed now; the child owns it
        server._mark_offloaded(entry, f"child {pid}")
        pidfd = -1
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pidfd = -1  # an old kernel: collect() reaps it instead
        self._children[pid] = (entry, pidfd, reactor)
        if pidfd >= 0:
            reactor.add_reader(pidfd, self._wait, pid, os.WNOHANG)
        server._check_room()

    def collect(self, blocking: bool) -> None:
        """Reap finished children (see `ForkingMixIn.collect_children`)."""
        server = self.server
        active = server.active_children
        if active is None:
            return
        while len(active) >= server.max_children and not blocking and server.reactor is None:
            self._wait(next(iter(active)), 0)
        watched = self._children
        for pid in list(active):
            if not blocking and pid in watched and watched[pid][1] >= 0:
                continue  # its pidfd wakes the reactor when it exits: no polling needed
            self._wait(pid, 0 if blocking else os.WNOHANG)

    def _wait(self, pid: int, flags: int) -> None:
        try:
            reaped, _status = os.waitpid(pid, flags)
        except ChildProcessError:
            reaped = pid  # already reaped elsewhere: it is gone all the same
        if reaped == 0:
            return
        if self.server.active_children is not None:
            self.server.active_children.discard(pid)
        self._forget(pid)

    def _forget(self, pid: int) -> None:
        item = self._children.pop(pid, None)
        if item is None:
            return
        entry, pidfd, reactor = item  # the reactor the child was started from
        if pidfd >= 0:
            if not reactor.closed:
                reactor.forget(pidfd)
            os.close(pidfd)
        self.server._close_entry(entry, reactor)

    def has_room(self) -> bool:
        return len(self.server.active_children or ()) < self.server.max_children

    @property
    def running(self) -> int:
        return len(self.server.active_children or ())

    def close(self) -> None:
        self.collect(blocking=self.server.block_on_close)
        for pid in list(self._children):
            self._forget(pid)

    def __repr__(self) -> str:
        return f"<ChildDispatch running={self.running} max_children={self.server.max_children}>"
