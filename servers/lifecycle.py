"""RequestLifecycle: one request's table entry, from accept to close, in one place.

Every way a request runs goes through here: an entry is opened when the request is accepted
(`_open_entry`) or when it has work to do before its handler (`_stage_entry`, adopted later by
`_open_entry`: same id, same age); `_dispatch_request` calls `process_request()` under the
standard library's error handling, and `process_request()` hands the request to the server's
dispatch (`servers/dispatch.py`: on the loop, a thread, a child). A request ends through
`_request_closed` (accounting, resuming accepts, the drain check), whether its handler ran on
the loop (`_close_entry`, `_end_request`), in a thread or a child (`_mark_offloaded`, then
`_close_entry`), or never (`_abandon`). Failures are reported one way in every mode
(`_report_failure`).

The calls a dispatch or a stage makes are these: `_open_entry`, `_mark_offloaded`,
`_close_entry`, `_end_request`, `_request_closed`, `_report_failure`, `_abandon`,
`_dispatch_request`; `BaseServer` inherits them.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, Callable, Final

import handlers
from reactor import RequestEntry, Stage

__all__ = ["RequestLifecycle"]

logger = logging.getLogger("servers")

_FAILED: Final = object()  # what _guarded() returns when the hook raised an Exception


class RequestLifecycle:
    """The request-table half of `BaseServer` (a base class of it; not used alone)."""

    _reactor: Any
    _in_flight: Any
    _offloaded: int
    _staged_entries: dict[int, RequestEntry] | None
    max_connections: int | None
    RequestHandlerClass: Callable[..., Any]

    if TYPE_CHECKING:  # provided by BaseServer and the concrete servers
        def process_request(self, request: Any, client_address: Any) -> None:
            ...

        def finish_request(self, request: Any, client_address: Any) -> None:
            ...

        def shutdown_request(self, request: Any) -> None:
            ...

        def handle_error(self, request: Any, client_address: Any) -> None:
            ...

        def _stop_accepting(self) -> None:
            ...

        def _maybe_resume_accepting(self) -> None:
            ...

        def _check_drained(self) -> None:
            ...

        def _request_fd(self, request: Any) -> int:
            ...

        def _name(self) -> str:
            ...

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

    def _close_entry(self, entry: RequestEntry, reactor: Any) -> None:
        """End a request's table entry on `reactor` (the one it was opened on: the server may
        have left it since) and do the server's accounting."""
        reactor.close_request(entry)
        self._request_closed(entry)

    def _entries_in_flight(self) -> list[RequestEntry]:
        """This server's requests in flight, oldest first."""
        return list(self._in_flight)

    def _mark_offloaded(self, entry: RequestEntry, where: str) -> None:
        entry.move_to(Stage.OFFLOADED)
        entry.where = where
        self._offloaded += 1

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
