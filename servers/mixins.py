"""ThreadingMixIn and ForkingMixIn: run each request in a thread or a child process.

They keep the standard library's contract (one real `threading.Thread` per request, one
`os.fork()` per request, `daemon_threads`, `block_on_close`, `max_children`,
`active_children`, `collect_children()`), and add what a reactor makes possible: the handed-off
request stays visible in the reactor's table (stage OFFLOADED) until its thread or child ends,
finished threads are forgotten once they have ended (at the next request, or joined at close),
children are reaped as soon as they exit (through a pidfd where the platform has one, else
once per loop turn), and at `max_threads` /
`max_children` the server stops accepting instead of blocking the loop.

Each mixin chooses its dispatch (`servers/dispatch.py`: `ThreadDispatch`, `ChildDispatch`),
which owns the threads or children and their bookkeeping; the mixin keeps the standard
library's attributes and methods, which the dispatch reads and calls.

Why a forked child never touches the reactor: in the child only the forking thread exists
and the parent's loop state is a copy; the child runs the handler with blocking I/O and ends
in `os._exit()`, as the standard library's does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .dispatch import ChildDispatch, ThreadDispatch

if TYPE_CHECKING:  # the mixins are written against BaseServer, which they come before
    from .base import BaseServer as _ServerBase
else:
    _ServerBase = object  # at run time their only base is object, as in the standard library

__all__ = ["ThreadingMixIn", "ForkingMixIn"]


class ThreadingMixIn(_ServerBase):
    """Run each request in a new thread (same contract as `socketserver.ThreadingMixIn`).

    Attributes:
        daemon_threads: request threads are daemon threads (not joined at close).
        block_on_close: `server_close()` waits for non-daemon request threads.
        max_threads: request threads at once; at the bound the server stops accepting until
            one ends (the kernel's backlog holds the rest). None: no bound.
        request_dispatch: the server's `ThreadDispatch` (`running`: threads serving now).
    """

    daemon_threads = False
    block_on_close = True
    max_threads: int | None = 256
    request_dispatch_class = ThreadDispatch

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
        """Start a thread for the request (it runs `process_request_thread()`) and return at
        once."""
        self.request_dispatch.start(request, client_address)

    def server_close(self) -> None:
        """Close the server, then join the request threads `block_on_close` keeps."""
        super().server_close()
        self.request_dispatch.close()


class ForkingMixIn(_ServerBase):
    """Run each request in a child process (same contract as `socketserver.ForkingMixIn`).

    Attributes:
        timeout: `handle_request()`'s wait, 300 s as in the standard library.
        active_children: pids of children still running (None until the first fork).
        max_children: children at once; on a reactor the server stops accepting at the bound
            instead of blocking in `waitpid()`.
        block_on_close: `server_close()` waits for every child.
        request_dispatch: the server's `ChildDispatch`.
    """

    timeout: float | None = 300
    active_children: set[int] | None = None
    max_children = 40
    block_on_close = True
    request_dispatch_class = ChildDispatch

    def collect_children(self, *, blocking: bool = False) -> None:
        """Reap finished children (only ours); with `blocking`, wait for all of them.

        Off a reactor, at `max_children` this waits for a child to end, as the standard
        library does; on a reactor it never blocks (accepting is paused instead). Children
        watched through a pidfd are reaped the moment they exit, so the non-blocking call
        polls only the others (the standard library polls every child on every turn)."""
        dispatch = self.request_dispatch
        if isinstance(dispatch, ChildDispatch):  # else a subclass chose another dispatch
            dispatch.collect(blocking)

    def handle_timeout(self) -> None:
        self.collect_children()

    def service_actions(self) -> None:
        self.collect_children()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Fork; the child serves the request and exits, the parent closes its copy."""
        self.request_dispatch.start(request, client_address)

    def server_close(self) -> None:
        """Close the server, then reap the children (waiting for them with `block_on_close`)."""
        super().server_close()
        self.request_dispatch.close()
