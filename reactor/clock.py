"""Where the reactor reads the time.

`MonotonicClock` is the only caller of `time.monotonic()` in the reactor; tests pass a
`reactor.testing.FakeClock` instead so that timeouts can be tested without waiting.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "MonotonicClock"]


class Clock(Protocol):
    """What the reactor needs from a clock: seconds on a monotonic scale."""

    def now(self) -> float:
        """Return the current time in seconds; only differences between values are meaningful."""
        ...


class MonotonicClock:
    """The real clock: `time.monotonic()`."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()
