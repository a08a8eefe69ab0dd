"""Timers: a heap of deadlines with lazy cancellation.

`TimerQueue` reads no clock: every method takes `now` from the caller, which makes it testable
with plain numbers. A cancelled timer stays in the heap until it reaches the top (cancelling is
O(1)); the queue counts cancelled entries and rebuilds itself when they dominate, so a program
that arms and cancels many timers does not grow the heap without bound.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable

__all__ = ["TimerHandle", "TimerQueue"]

# Rebuild the heap when more than this share of it is cancelled timers (and it is not tiny).
_COMPACT_RATIO = 0.5
_COMPACT_MIN = 64


class TimerHandle:
    """A scheduled callback. `cancel()` stops it from running; cancelling twice is harmless."""

    __slots__ = ("deadline", "callback", "args", "cancelled", "_queue")

    def __init__(
        self, deadline: float, callback: Callable[..., Any], args: tuple[Any, ...],
        queue: TimerQueue | None,
    ) -> None:
        self.deadline = deadline
        self.callback = callback
        self.args = args
        self.cancelled = False
        self._queue = queue

    def cancel(self) -> None:
        """Prevent the callback from running. Safe to call at any time, from the loop's thread."""
        if not self.cancelled:
            self.cancelled = True
            if self._queue is not None:
                self._queue._note_cancelled()
                self._queue = None

    def run(self) -> None:
        """Run the callback (the reactor calls this when the deadline has passed), unless it
        was cancelled after `pop_due()` returned it (by an earlier timer of the same batch)."""
        self._queue = None
        if not self.cancelled:
            self.callback(*self.args)

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else "pending"
        return f"<TimerHandle {state} at {self.deadline:.6f} {self.callback!r}>"


class TimerQueue:
    """Deadlines in order. Not thread-safe: used only from the reactor's thread."""

    __slots__ = ("_heap", "_seq", "_cancelled")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._cancelled = 0

    def __len__(self) -> int:
        """Timers still pending (cancelled ones excluded)."""
        return len(self._heap) - self._cancelled

    @property
    def held(self) -> int:
        """Timers the queue holds in memory: the pending ones plus cancelled ones not yet
        discarded (cancelling is O(1); the heap is compacted once most of it is cancelled)."""
        return len(self._heap)

    def schedule(self, deadline: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Arrange for `callback(*args)` to be returned by `pop_due()` once `deadline` passes."""
        handle = TimerHandle(deadline, callback, args, self)
        heapq.heappush(self._heap, (deadline, next(self._seq), handle))
        return handle

    def next_deadline(self) -> float | None:
        """The earliest pending deadline, or None when nothing is scheduled."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[TimerHandle]:
        """Remove and return, in deadline order, every pending timer due at `now` or earlier."""
        heap = self._heap
        due: list[TimerHandle] = []
        while heap and heap[0][0] <= now:
            handle = heapq.heappop(heap)[2]
            if handle.cancelled:
                self._cancelled -= 1
            else:
                handle._queue = None
                due.append(handle)
        return due

    def _note_cancelled(self) -> None:
        self._cancelled += 1
        if self._cancelled > _COMPACT_MIN and self._cancelled > len(self._heap) * _COMPACT_RATIO:
            self._heap = [item for item in self._heap if not item[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0
