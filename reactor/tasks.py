"""Task: one coroutine driven by the reactor.

`Task.step` is the only place in the library that calls `coro.send()` / `coro.throw()`. A task
belongs to one reactor and, usually, to one request-table entry; it knows which trap it is
parked on, its current wait deadline, and the lazy timer that enforces that deadline (see
`loop.py`). It performs no I/O itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Coroutine

if TYPE_CHECKING:  # pragma: no cover - typing only, within the package
    from .requests import RequestEntry
    from .timers import TimerHandle

__all__ = ["Task"]


class Task:
    """A coroutine the reactor runs. Create tasks with `Reactor.spawn()`, not directly.

    Attributes:
        entry: the request-table entry this task serves, if any.
        done: True once the coroutine has returned or raised.
        result: the coroutine's return value, once done without error.
        error: the exception that ended the coroutine, if any.
    """

    __slots__ = ("coro", "entry", "trap", "deadline", "timer", "sleep_timer", "done", "result",
                 "error", "on_done", "cancel_requested", "parked", "_loop")

    def __init__(self, coro: Coroutine[Any, Any, Any], entry: RequestEntry | None,
                 loop: Any) -> None:
        self.coro = coro
        self.entry = entry
        self.trap: Any = None              # the trap whose interest is registered for us
        self.deadline: float | None = None  # when the current wait times out
        self.timer: float | None = None  # when its entry in the loop's deadline heap fires
        self.sleep_timer: TimerHandle | None = None  # set while parked on Sleep
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.on_done: Callable[[Task], None] | None = None
        self.cancel_requested = False
        self.parked = False
        self._loop = loop

    def run(self) -> None:
        """Resume the task because what it waits for happened (interest table, timers)."""
        if self.parked:
            self._loop._advance(self, None)

    def __lt__(self, other: Task) -> bool:
        """Order of two tasks whose deadlines are equal in the loop's deadline heap."""
        return id(self) < id(other)

    def step(self, error: BaseException | None) -> Any:
        """Resume the coroutine once; return the trap it parks on, or None when it ended."""
        try:
            if error is None:
                return self.coro.send(None)
            return self.coro.throw(error)
        except StopIteration as stop:
            self.result = stop.value
        except BaseException as exc:  # noqa: BLE001 - stored, then handled by the loop
            self.error = exc
        self.done = True
        return None

    def __repr__(self) -> str:
        state = "done" if self.done else ("parked" if self.trap is not None else "runnable")
        return f"<Task {state} {getattr(self.coro, '__qualname__', self.coro)!s} entry={self.entry!r}>"
