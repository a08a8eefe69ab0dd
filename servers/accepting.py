"""Accepting: how a server takes requests from its listening descriptor on a reactor.

The reactor calls `attach()` / `detach()` (the `reactor.Listener` interface); while the server
is below its bounds (`max_connections`, and the mixins' `max_threads` / `max_children`) its
descriptor is watched, and each readiness event accepts a batch (`_accept_budget`) through the
standard hooks (`get_request` → `verify_request` → the stages → `process_request`). At a bound,
or after an out-of-descriptors accept error (`accept_backoff`), the server stops watching
instead of blocking or spinning the loop; the kernel's backlog holds the rest.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any

import reactor as reactor_pkg

from .lifecycle import _FAILED

if TYPE_CHECKING:
    from .dispatch import Dispatch

__all__ = ["Accepting"]

logger = logging.getLogger("servers")

# Accept errors that mean "out of a resource": back off instead of retrying at once (which
# would spin the loop at 100% CPU while the listening socket stays readable).
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Accepting:
    """The accepting half of `BaseServer` (a base class of it; not used alone)."""

    _reactor: Any
    _own_reactor: Any
    _in_flight: Any
    _accepting: bool
    _accept_count: int
    _failed_accepts: int
    _single_request: bool
    _drain_state: str | None
    _episode_logged: bool
    _drain_timer: Any
    _backoff_timer: Any
    max_connections: int | None
    accept_backoff: float

    if TYPE_CHECKING:  # provided by BaseServer and the concrete servers
        def fileno(self) -> int:
            ...

        def get_request(self) -> tuple[Any, Any]:
            ...

        def verify_request(self, request: Any, client_address: Any) -> bool:
            ...

        def shutdown_request(self, request: Any) -> None:
            ...

        def _guarded(self, hook: Any, request: Any, client_address: Any) -> Any:
            ...

        def _admit_request(self, request: Any, client_address: Any) -> None:
            ...

        def _prepare_listener(self) -> None:
            ...

        def _prepare_request(self, request: Any) -> None:
            ...

        def _name(self) -> str:
            ...

        @property
        def request_dispatch(self) -> Dispatch:
            ...

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
            request, client_address = self.get_request()
        except OSError as exc:
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

    def _accept_failed(self, exc: OSError) -> None:
        """`get_request()` (or a datagram server's receive) raised `exc`: count it unless it
        was "would block", and pause accepting after an out-of-resources error."""
        if not isinstance(exc, (BlockingIOError, InterruptedError)):
            self._failed_accepts += 1
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

    def _maybe_resume_accepting(self) -> None:
        if (self._accepting or self._reactor is None or self._drain_state is not None
                or self._backoff_timer is not None or not self._below_limits()):
            return
        self._start_accepting()

    def _below_limits(self) -> bool:
        limit = self.max_connections
        return ((limit is None or len(self._in_flight) < limit)
                and self.request_dispatch.has_room())

    def _check_room(self) -> None:
        """Stop accepting if a request just started took the last room (a dispatch calls
        this after starting a thread or a child)."""
        if not self._below_limits():
            self._stop_accepting()

    def _start_accepting(self) -> None:
        if not self._accepting and self._drain_state is None and self._below_limits():
            self._reactor.add_reader(self.fileno(), self._on_listener_readable)
            self._accepting = True

    def _stop_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            try:
                self._reactor.remove_reader(self.fileno())
            except (OSError, ValueError):
                pass  # the socket is already closed
