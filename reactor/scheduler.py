"""TaskScheduler: how a reactor runs coroutines (the request tasks of async handlers).

One path moves a task: `_advance()` resumes it (and only the loop's turn phases call it, from
the ready queue, a descriptor's readiness, a timer or a cancellation), then `_park()` registers
whatever it waits for next, or `_finish()` releases what it held. A second task waiting on a
descriptor another task already waits on is refused. This is the half of `Reactor` that knows
about tasks; `loop.py` owns the turn itself.

Why timeouts are lazy: a request that waits for input with a timeout would otherwise arm and
cancel a timer on every wait. Each task instead keeps one entry in a heap of wait deadlines; a
new wait only moves the task's `deadline` later, and when the entry comes due early it is
pushed again at the current deadline. A busy connection therefore costs no heap operation per
request. The heap is the scheduler's own, served by a single loop timer, so that a parked
connection costs one (deadline, task) tuple rather than a timer handle, its arguments and a
bound method (measured: bench idle-c1000).
"""

from __future__ import annotations

import collections
import heapq
import logging
from typing import Any, Callable, Coroutine, Final

from .errors import Cancelled, ReactorError
from .handles import Handle
from .interest import InterestTable
from .requests import RequestEntry, RequestTable, Stage
from .tasks import Task
from .timers import TimerHandle, TimerQueue
from .traps import Sleep, WaitReadable, WaitWritable

__all__ = ["TaskScheduler"]

logger = logging.getLogger("reactor")

_COMPACT_MIN = 64  # rebuild the deadline heap only past this many stale entries
_RUNNING: Final = Stage.RUNNING  # module constants: the hot path skips the enum lookups
_WAITING: Final = Stage.WAITING


class TaskScheduler:
    """The task-running half of `reactor.Reactor` (a base class of it; not used alone)."""

    _ready: collections.deque[Any]
    _interest: InterestTable
    _timers: TimerQueue
    _requests: RequestTable
    _tasks: dict[Task, None]
    _current: Task | None
    _step_end: list[Callable[[], object]]
    _now: Callable[[], float]
    # Every task's wait deadline, in one heap of (deadline, task) served by one loop timer
    # (created at the first deadline): a parked connection costs one tuple, not a timer.
    _deadlines: list[tuple[float, Task]] | None = None
    _deadline_timer: TimerHandle | None = None
    _stale_deadlines = 0  # entries in the heap that no task holds any more

    def _check_open(self) -> None:
        raise NotImplementedError  # pragma: no cover - Reactor provides it

    def spawn(self, coro: Coroutine[Any, Any, Any], entry: RequestEntry | None = None,
              on_done: Callable[[Task], None] | None = None, *, eager: bool = False) -> Task:
        """Run `coro` as a task on this loop, starting on the next turn.

        `entry`, if given, is the request-table row it serves: the task keeps its stage up to
        date, and the row leaves the table when the task ends. `on_done(task)` runs then.
        With `eager`, the first step runs now, up to the task's first suspension (as Python
        3.12's eager tasks do): a request that never waits costs no trip through the ready
        queue. Servers start request tasks eagerly when no other task is running.
        """
        self._check_open()
        task = Task(coro, entry, self)
        task.on_done = on_done
        if entry is not None:
            entry.task = task
        self._tasks[task] = None
        if eager and self._current is None:
            self._advance(task, None)
        else:
            self._ready.append(Handle(self._advance, (task, None)))
        return task

    def cancel(self, task: Task) -> None:
        """Throw `reactor.Cancelled` into `task` at its current (or next) suspension point."""
        if task.done:
            return
        task.cancel_requested = True
        if task.parked:  # otherwise it is running or not started: _advance/_park deliver it
            self._ready.append(Handle(self._deliver_cancel, (task,)))

    def at_step_end(self, callback: Callable[[], object]) -> None:
        """Run `callback()` as soon as the running task suspends or ends (at once when no task
        is running). Streams use it to send everything one step wrote in a single call."""
        if self._current is None:
            callback()
        else:
            self._step_end.append(callback)

    def _advance(self, task: Task, error: BaseException | None) -> None:
        """Resume one task and park it on whatever it waits for next."""
        if task.done:
            return
        if task.cancel_requested and error is None:
            task.cancel_requested = False
            error = Cancelled()
        task.deadline = None
        task.parked = False
        sleeper = task.sleep_timer
        if sleeper is not None:
            sleeper.cancel()
            task.sleep_timer = None
        entry = task.entry
        if entry is not None:
            entry.stage = _RUNNING  # hot path: WAITING/ACCEPTED -> RUNNING, always allowed
            entry.waiting_for = None
        previous, self._current = self._current, task
        try:
            trap = task.step(error)
        finally:
            self._current = previous
            if self._step_end:
                self._run_step_end()
        if trap is None:
            self._finish(task)
        else:
            self._park(task, trap)

    def _run_step_end(self) -> None:
        callbacks, self._step_end = self._step_end, []
        for callback in callbacks:
            callback()

    def _park(self, task: Task, trap: Any) -> None:
        previous = task.trap
        if previous is not None and previous is not trap:
            self._unregister_trap(task, previous)
        task.trap = trap
        error = self._register_trap(task, trap)
        if error is not None:
            task.trap = None
            self._ready.append(Handle(self._advance, (task, error)))
            return
        task.parked = True
        entry = task.entry
        if entry is not None:
            entry.stage = _WAITING
            entry.waiting_for = trap
        if task.cancel_requested:
            self._ready.append(Handle(self._deliver_cancel, (task,)))

    def _register_trap(self, task: Task, trap: Any) -> BaseException | None:
        """Arrange for `task` to be resumed when `trap` is satisfied; or return the error to
        resume it with at once (a closed descriptor, an unknown trap)."""
        kind = type(trap)
        if kind is WaitReadable or kind is WaitWritable:
            interest = self._interest
            other = interest.reader_of(trap.fd) if kind is WaitReadable else \
                interest.writer_of(trap.fd)
            if other is not None and other is not task and type(other) is Task:
                # Two tasks reading (or writing) one descriptor would steal each other's
                # wake-ups: the second is refused, the first keeps waiting.
                return ReactorError(
                    f"descriptor {trap.fd} is already awaited by {other!r}; one task at a time "
                    "may wait to {} it".format("read" if kind is WaitReadable else "write"))
            try:
                if kind is WaitReadable:
                    interest.set_reader(trap.fd, task)
                else:
                    interest.set_writer(trap.fd, task)
            except (OSError, ValueError) as exc:  # a closed or invalid descriptor
                interest.forget(trap.fd)
                return exc
            if trap.timeout is not None:
                self._arm_deadline(task, self._now() + trap.timeout)
        elif kind is Sleep:
            if trap.seconds > 0:
                task.sleep_timer = self._timers.schedule(
                    self._now() + trap.seconds, self._wake_sleeper, task, trap)
            else:
                self._ready.append(Handle(self._wake_sleeper, (task, trap)))
        else:
            return TypeError(f"a request awaited {trap!r}, which the reactor cannot wait for; "
                             "await reactor.sleep() or the request's stream methods instead")
        return None

    def _unregister_trap(self, task: Task, trap: Any) -> None:
        kind = type(trap)
        if kind is WaitReadable:
            if self._interest.reader_of(trap.fd) is task:
                self._interest.clear_reader(trap.fd)
        elif kind is WaitWritable:
            if self._interest.writer_of(trap.fd) is task:
                self._interest.clear_writer(trap.fd)

    def _wake_sleeper(self, task: Task, trap: Any) -> None:
        if task.parked and task.trap is trap:
            task.sleep_timer = None
            self._advance(task, None)

    def _deliver_cancel(self, task: Task) -> None:
        if task.parked and task.cancel_requested:
            self._advance(task, None)

    def _arm_deadline(self, task: Task, deadline: float) -> None:
        task.deadline = deadline
        at = task.timer
        if at is not None and at <= deadline:
            return  # the hot path: the entry in the heap fires first and re-arms lazily
        heap = self._deadlines
        if heap is None:
            heap = self._deadlines = []
        if at is not None:
            self._stale_deadlines += 1  # the old entry stays in the heap, skipped when popped
        task.timer = deadline
        heapq.heappush(heap, (deadline, task))
        timer = self._deadline_timer
        if timer is None or timer.deadline > deadline:
            if timer is not None:
                timer.cancel()
            self._deadline_timer = self._timers.schedule(deadline, self._on_deadlines)

    def _on_deadlines(self) -> None:
        """The loop's one timer for every task's wait deadline: time out the tasks whose
        deadline has passed, re-arm those whose deadline moved later, then re-arm itself."""
        self._deadline_timer = None
        heap = self._deadlines
        if heap is None:
            return
        now = self._now()
        while heap and heap[0][0] <= now:
            at, task = heapq.heappop(heap)
            if task.timer is not at:
                self._stale_deadlines -= 1  # superseded, or its task has ended
                continue
            task.timer = None
            deadline = task.deadline
            if task.done or deadline is None:
                continue
            if deadline <= now:
                trap = task.trap
                what = "send data" if type(trap) is WaitReadable else "read what was sent"
                self._advance(task, TimeoutError(
                    f"timed out: the peer did not {what} within "
                    f"{getattr(trap, 'timeout', '?')} s"))
            else:
                self._arm_deadline(task, deadline)
        self._rearm_deadlines()

    def _drop_deadline(self, task: Task) -> None:
        """Forget an ended task's deadline (its heap entry goes stale; the heap is rebuilt
        when stale entries dominate, so ended tasks are not kept alive for long)."""
        task.timer = None
        heap = self._deadlines
        if heap is None:
            return
        self._stale_deadlines += 1
        stale = self._stale_deadlines
        if stale >= len(heap):
            heap.clear()
            self._stale_deadlines = 0
        elif stale > _COMPACT_MIN and stale * 2 > len(heap):
            heap[:] = [item for item in heap if item[1].timer is item[0]]
            heapq.heapify(heap)
            self._stale_deadlines = 0
        else:
            return
        self._rearm_deadlines()

    def _rearm_deadlines(self) -> None:
        heap = self._deadlines
        timer = self._deadline_timer
        head = heap[0][0] if heap else None
        if timer is not None and (head is None or timer.deadline > head):
            timer.cancel()
            timer = self._deadline_timer = None
        if head is not None and timer is None:
            self._deadline_timer = self._timers.schedule(head, self._on_deadlines)

    def _pending_deadlines(self) -> int:
        """Task wait deadlines armed, beyond the one loop timer that serves them all."""
        heap = self._deadlines
        if heap is None or self._deadline_timer is None:
            return 0
        return max(0, len(heap) - self._stale_deadlines - 1)

    def _finish(self, task: Task) -> None:
        self._release(task)
        error = task.error
        if error is None or isinstance(error, Cancelled):
            return
        if isinstance(error, Exception):
            logger.error("task %r failed", task, exc_info=error)
            return
        raise error  # KeyboardInterrupt, SystemExit: leave the loop, as the stdlib does

    def _release(self, task: Task) -> None:
        """Drop what an ended task held (interest, timer, table row) and tell its owner."""
        self._tasks.pop(task, None)
        trap = task.trap
        if trap is not None:
            self._unregister_trap(task, trap)
            task.trap = None
        if task.timer is not None:
            self._drop_deadline(task)
        if task.entry is not None:
            self._requests.close(task.entry)
        if task.on_done is not None:
            try:
                task.on_done(task)
            except Exception:
                logger.exception("the completion callback of %r raised", task)
        if task.entry is not None:
            task.entry.task = None  # no entry <-> task cycle left for the garbage collector


def _close_coroutine(task: Task) -> None:
    try:
        task.coro.close()
    except BaseException:  # noqa: BLE001 - a coroutine that refuses to close is only logged
        logger.exception("closing %r at reactor close raised", task)
    task.done = True
    task.error = Cancelled()
