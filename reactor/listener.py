"""The interface between a reactor and the servers registered on it.

A `Listener` is what `Reactor.register()` attaches: the reactor calls `attach(reactor)` once
(the listener then arranges its own readiness callbacks through `add_reader`), `detach(reactor)`
when it is unregistered, `begin_shutdown()` when `Reactor.shutdown()` asks every listener to
stop accepting and drain (it unregisters itself once drained); its `service_actions()`, if it
has one, runs once per turn. Servers of this library are listeners; anything else with `fileno()` (a server of the
standard library's `socketserver`) is run the classic way by the reactor itself.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Listener"]


@runtime_checkable
class Listener(Protocol):
    """What a server offers the reactor it is registered on."""

    def attach(self, reactor: Any) -> None:
        """Start serving on `reactor` (called by `Reactor.register()`)."""

    def detach(self, reactor: Any) -> None:
        """Stop accepting on `reactor` (called by `Reactor.unregister()`); requests in flight
        keep running."""

    def begin_shutdown(self) -> None:
        """Stop accepting and drain; unregister from the reactor once drained."""
