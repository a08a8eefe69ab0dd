"""TimerQueue: a heap of deadlines with lazy cancellation. Pure unit tests: no clock, no loop."""

from __future__ import annotations

import pytest

from reactor.timers import _COMPACT_MIN, TimerHandle, TimerQueue


def noop() -> None:
    pass


def test_empty_queue_has_no_deadline_and_nothing_due() -> None:
    queue = TimerQueue()
    assert len(queue) == 0
    assert not queue
    assert queue.next_deadline() is None
    assert queue.pop_due(1e9) == []


def test_pop_due_returns_timers_in_deadline_order_not_scheduling_order() -> None:
    queue = TimerQueue()
    late = queue.schedule(30.0, noop)
    early = queue.schedule(10.0, noop)
    middle = queue.schedule(20.0, noop)
    assert queue.next_deadline() == 10.0
    assert queue.pop_due(100.0) == [early, middle, late]
    assert len(queue) == 0


def test_timers_with_equal_deadlines_come_out_first_in_first_out() -> None:
    queue = TimerQueue()
    handles = [queue.schedule(5.0, noop, n) for n in range(10)]
    assert queue.pop_due(5.0) == handles


def test_pop_due_treats_deadline_equal_to_now_as_due_and_later_ones_as_pending() -> None:
    queue = TimerQueue()
    due = queue.schedule(10.0, noop)
    pending = queue.schedule(10.000001, noop)
    assert queue.pop_due(9.999999) == []
    assert queue.pop_due(10.0) == [due]
    assert len(queue) == 1
    assert queue.next_deadline() == pending.deadline


def test_schedule_returns_a_handle_carrying_callback_and_args() -> None:
    queue = TimerQueue()
    calls = []
    handle = queue.schedule(1.0, calls.append, "x")
    assert isinstance(handle, TimerHandle)
    assert (handle.deadline, handle.callback, handle.args) == (1.0, calls.append, ("x",))
    handle.run()
    assert calls == ["x"]


def test_cancelled_timer_is_excluded_from_len_and_never_returned() -> None:
    queue = TimerQueue()
    keep = queue.schedule(1.0, noop)
    drop = queue.schedule(2.0, noop)
    drop.cancel()
    assert drop.cancelled
    assert len(queue) == 1
    assert queue.pop_due(10.0) == [keep]
    assert len(queue) == 0
    assert queue.next_deadline() is None


def test_cancelling_twice_counts_once() -> None:
    queue = TimerQueue()
    handle = queue.schedule(1.0, noop)
    queue.schedule(2.0, noop)
    handle.cancel()
    handle.cancel()
    assert len(queue) == 1


def test_cancel_is_lazy_the_heap_keeps_the_entry_until_it_surfaces() -> None:
    queue = TimerQueue()
    first = queue.schedule(1.0, noop)
    queue.schedule(2.0, noop)
    first.cancel()
    assert queue.held == 2  # O(1) cancel: nothing removed yet
    assert queue.next_deadline() == 2.0  # skips (and discards) the cancelled head
    assert queue.held == 1
    assert len(queue) == 1


def test_next_deadline_skips_every_cancelled_head() -> None:
    queue = TimerQueue()
    handles = [queue.schedule(float(n), noop) for n in range(5)]
    for handle in handles[:4]:
        handle.cancel()
    assert queue.next_deadline() == 4.0
    handles[4].cancel()
    assert queue.next_deadline() is None
    assert len(queue) == 0


def test_cancelling_a_timer_after_it_was_popped_does_not_corrupt_the_count() -> None:
    queue = TimerQueue()
    popped = queue.schedule(1.0, noop)
    queue.schedule(2.0, noop)
    assert queue.pop_due(1.0) == [popped]
    popped.cancel()  # e.g. the reactor cancels a timer whose callback already ran
    assert len(queue) == 1
    assert queue.next_deadline() == 2.0


def test_cancelling_a_popped_timer_stops_it_from_running() -> None:
    # A timer cancelled after pop_due() but before it ran (by an earlier timer of the same
    # batch) must not run: cancel() promises that.
    queue = TimerQueue()
    calls = []
    handle = queue.schedule(1.0, calls.append, "ran")
    [due] = queue.pop_due(1.0)
    handle.cancel()
    due.run()
    assert calls == []


def test_many_cancelled_timers_trigger_compaction() -> None:
    queue = TimerQueue()
    keep = [queue.schedule(1000.0 + n, noop) for n in range(10)]
    doomed = [queue.schedule(float(n), noop) for n in range(_COMPACT_MIN * 2)]
    for handle in doomed:
        handle.cancel()
    # More than half the heap was cancelled: it was rebuilt without them (the few cancelled
    # since the last rebuild stay until the next one).
    assert queue.held - len(queue) <= _COMPACT_MIN
    assert queue.held <= len(keep) + _COMPACT_MIN
    assert len(queue) == len(keep)
    assert queue.pop_due(1e9) == keep


def test_a_few_cancelled_timers_do_not_trigger_compaction() -> None:
    queue = TimerQueue()
    handles = [queue.schedule(float(n), noop) for n in range(_COMPACT_MIN)]
    for handle in handles:
        handle.cancel()
    assert queue.held == _COMPACT_MIN  # at most _COMPACT_MIN: tiny heaps stay lazy
    assert len(queue) == 0


def test_compaction_keeps_ordering_and_fifo_ties() -> None:
    queue = TimerQueue()
    tied = [queue.schedule(7.0, noop, n) for n in range(5)]
    other = queue.schedule(3.0, noop)
    for n in range(_COMPACT_MIN * 3):
        queue.schedule(float(n), noop).cancel()
    assert queue.held - len(queue) < _COMPACT_MIN * 3  # compacted at least once
    assert queue.pop_due(10.0) == [other, *tied]


def test_cancelled_count_stays_consistent_after_compaction() -> None:
    queue = TimerQueue()
    live = [queue.schedule(float(n), noop) for n in range(200)]
    for handle in live[:150]:
        handle.cancel()
    assert len(queue) == 50
    for handle in live[150:]:
        handle.cancel()
    assert len(queue) == 0
    assert queue.next_deadline() is None
    assert queue.held == 0


def test_timer_handle_repr_shows_state_and_deadline() -> None:
    queue = TimerQueue()
    handle = queue.schedule(12.5, noop)
    assert repr(handle).startswith("<TimerHandle pending at 12.500000 ")
    handle.cancel()
    assert repr(handle).startswith("<TimerHandle cancelled at 12.500000 ")


@pytest.mark.parametrize("now", [0.0, -5.0])
def test_pop_due_before_any_deadline_returns_nothing(now: float) -> None:
    queue = TimerQueue()
    queue.schedule(1.0, noop)
    assert queue.pop_due(now) == []
    assert len(queue) == 1
