"""ThreadingMixIn and ForkingMixIn: run each request in a thread or a child process.

They keep the standard library's contract (one real `threading.Thread` per request, one
`os.fork()` per request, `daemon_threads`, `block_on_close`, `max_children`,
`active_children`, `collect_children()`), and add what a reactor makes possible: the handed-off
request stays visible in the reactor's table (stage OFFLOADED) until its thread or child ends,
finished threads are forgotten once they have ended (at the next request, or joined at close),
children are reaped as soon as they exit (through a pidfd where the platform has one, else
once per loop turn), and at `max_threads` /
`max_children` the server stops accepting instead of blocking the loop.

Why a forked child never touches the reactor: in the child only the forking thread exists
and the parent's loop state is a copy; the child runs the handler with blocking I/O and ends
in `os._exit()`, as the standard library's does.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

import handlers

if TYPE_CHECKING:  # the mixins are written against BaseServer, which they come before
    from .base import BaseServer as _ServerBase
else:
    _ServerBase = object  # at run time their only base is object, as in the standard library

__all__ = ["ThreadingMixIn", "ForkingMixIn"]

logger = logging.getLogger("servers")


class ThreadingMixIn(_ServerBase):
    """Run each request in a new thread (same contract as `socketserver.ThreadingMixIn`).

    Attributes:
        daemon_threads: request threads are daemon threads (not joined at close).
        block_on_close: `server_close()` waits for non-daemon request threads.
        max_threads: request threads at once; at the bound the server stops accepting until
            one ends (the kernel's backlog holds the rest). None: no bound.
    """

    daemon_threads = False
    block_on_close = True
    max_threads: int | None = 256
    _handshake_in_worker = True  # TLS handshakes run in the request's thread
    _threads: Any = None
    _thread_count = 0

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Run one request in the current thread: `finish_request()`, `handle_error()` for an
        Exception (client faults of async handlers are logged instead, as on the reactor:
        see `BaseServer._report_failure`), and `shutdown_request()` always."""
        try:
            self.finish_request(request, client_address)
        except Exception:
            self._report_failure(request, client_address)
        finally:
            self.shutdown_request(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a thread for the request and return at once."""
        reactor = self._reactor
        entry = None
        if reactor is not None:
            entry = self._open_entry(request, client_address)
            self._mark_offloaded(entry, "thread")
        thread = threading.Thread(target=self._thread_main,
                                  args=(request, client_address, entry, reactor))
        thread.daemon = self.daemon_threads
        threads = self._live_threads()
        if not thread.daemon and self.block_on_close:
            threads.append(thread)
        self._thread_count += 1
        try:
            thread.start()
        except BaseException:
            self._thread_count -= 1
            if thread in threads:
                threads.remove(thread)
            if entry is not None:
                reactor.close_request(entry)
                self._request_closed(entry)
            raise
        if not self._below_limits():
            self._stop_accepting()

    def server_close(self) -> None:
        super().server_close()
        threads, self._threads = self._threads or [], []
        for thread in threads:
            thread.join()

    def _thread_main(self, request: Any, client_address: Any, entry: Any, reactor: Any) -> None:
        try:
            if self._complete_handshake(request, client_address):
                self.process_request_thread(request, client_address)
            else:
                self.shutdown_request(request)
        finally:
            if reactor is not None:
                reactor.call_soon_threadsafe(self._thread_done, entry, threading.current_thread(),
                                             reactor)

    def _thread_done(self, entry: Any, thread: threading.Thread, reactor: Any) -> None:
        # `reactor` is the one the request started on: the server may have left it since.
        self._thread_count -= 1
        threads = self._threads
        if threads:  # drop the ended ones; one still finishing stays for server_close() to join
            threads[:] = [t for t in threads if t.is_alive() or not t.ident]
        reactor.close_request(entry)
        self._request_closed(entry)

    def _live_threads(self) -> list[threading.Thread]:
        threads: list[threading.Thread] | None = self._threads
        if threads is None:
            threads = self._threads = []
        threads[:] = [t for t in threads if t.is_alive() or not t.ident]
        return threads

    def _below_limits(self) -> bool:
        limit = self.max_threads
        return super()._below_limits() and (
            limit is None or self._thread_count < limit)


class ForkingMixIn(_ServerBase):
    """Run each request in a child process (same contract as `socketserver.ForkingMixIn`).

    Attributes:
        timeout: `handle_request()`'s wait, 300 s as in the standard library.
        active_children: pids of children still running (None until the first fork).
        max_children: children at once; on a reactor the server stops accepting at the bound
            instead of blocking in `waitpid()`.
        block_on_close: `server_close()` waits for every child.
    """

    timeout: float | None = 300
    active_children: set[int] | None = None
    max_children = 40
    block_on_close = True
    _handshake_in_worker = True  # TLS handshakes run in the request's child
    _children: Any = None  # pid -> (entry, pidfd, reactor)

    def collect_children(self, *, blocking: bool = False) -> None:
        """Reap finished children (only ours); with `blocking`, wait for all of them.

        Off a reactor, at `max_children` this waits for a child to end, as the standard
        library does; on a reactor it never blocks (accepting is paused instead). Children
        watched through a pidfd are reaped the moment they exit, so the non-blocking call
        polls only the others (the standard library polls every child on every turn)."""
        if self.active_children is None:
            return
        while (len(self.active_children) >= self.max_children and not blocking
               and self._reactor is None):
            self._wait_child(next(iter(self.active_children)), 0)
        watched = self._children or {}
        for pid in list(self.active_children):
            if not blocking and watched.get(pid, (None, -1))[1] >= 0:
                continue  # its pidfd wakes the reactor when it exits: no polling needed
            self._wait_child(pid, 0 if blocking else os.WNOHANG)

    def handle_timeout(self) -> None:
        self.collect_children()

    def service_actions(self) -> None:
        self.collect_children()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Fork; the child serves the request and exits, the parent closes its copy."""
        pid = os.fork()
        if pid:
            if self.active_children is None:
                self.active_children = set()
            self.active_children.add(pid)
            self._watch_child(pid, request, client_address)  # adopts a staged entry by its fd
            self.close_request(request)
            return
        status = 1
        try:
            if self._complete_handshake(request, client_address):
                self.finish_request(request, client_address)
                status = 0
        except Exception:
            self._report_failure(request, client_address)
        finally:
            try:
                self.shutdown_request(request)
            finally:
                os._exit(status)

    def server_close(self) -> None:
        super().server_close()
        self.collect_children(blocking=self.block_on_close)
        for pid in list(self._children or ()):
            self._forget_child(pid)

    def _watch_child(self, pid: int, request: Any, client_address: Any) -> None:
        reactor = self._reactor
        if reactor is None:
            return
        entry = self._open_entry(request, client_address)
        entry.fd = -1
        self._mark_offloaded(entry, f"child {pid}")
        pidfd = -1
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pidfd = -1  # an old kernel: service_actions() reaps it instead
        if self._children is None:
            self._children = {}
        self._children[pid] = (entry, pidfd, reactor)
        if pidfd >= 0:
            reactor.add_reader(pidfd, self._wait_child, pid, os.WNOHANG)
        if not self._below_limits():
            self._stop_accepting()

    def _wait_child(self, pid: int, flags: int) -> None:
        try:
            reaped, _status = os.waitpid(pid, flags)
        except ChildProcessError:
            reaped = pid  # already reaped elsewhere: it is gone all the same
        if reaped == 0:
            return
        if self.active_children is not None:
            self.active_children.discard(pid)
        self._forget_child(pid)

    def _forget_child(self, pid: int) -> None:
        item = (self._children or {}).pop(pid, None)
        if item is None:
            return
        entry, pidfd, reactor = item  # the reactor the child was started from
        if pidfd >= 0:
            if not reactor.closed:
                reactor.forget(pidfd)
            os.close(pidfd)
        reactor.close_request(entry)
        self._request_closed(entry)

    def _below_limits(self) -> bool:
        return super()._below_limits() and (
            len(self.active_children or ()) < self.max_children)

