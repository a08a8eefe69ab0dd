"""Helpers for testing code that runs on a reactor: a clock you move by hand, and a way to run
the loop until nothing is left to do. Public, so users can test their own handlers."""

from __future__ import annotations

from .loop import Reactor

__all__ = ["FakeClock", "run_until_idle"]


class FakeClock:
    """A clock that only moves when told to: `clock.advance(30)` then `reactor.run_once(0)`
    tests a 30-second timeout in microseconds."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (never backwards)."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards; pass seconds >= 0")
        self._now += seconds


def run_until_idle(reactor: Reactor, max_turns: int = 10_000) -> int:
    """Run non-blocking turns until one does nothing; return the number of turns that did
    something.

    Raises:
        RuntimeError: still busy after `max_turns` turns (a request that never waits).
    """
    for turn in range(max_turns):
        if not reactor.run_once(0):
            return turn
    raise RuntimeError(f"the reactor was still busy after {max_turns} turns")
