"""reactor: a selectors-driven, single-threaded event loop with an explicit request table.

Imports only the standard library and starts no thread. The public surface:

- `Reactor`: the loop (`register`, `serve_forever`, `shutdown`, `call_later`, `add_reader`,
  `add_signal_handler`, `requests`, ...).
- `Listener`: what a server offers the reactor it is registered on.
- `RequestEntry`, `Stage`: rows of the request table and their stages.
- `sleep`, `checkpoint`, `wait` and the trap types: how coroutines suspend.
- `run_blocking`: drive a coroutine with blocking waits (threads, forked children).
- `Cancelled`, `ReactorError`, `ReactorInternalError`, `ClosedResourceError`.
"""

from __future__ import annotations

from .blocking import run_blocking
from .clock import Clock, MonotonicClock
from .errors import Cancelled, ClosedResourceError, ReactorError, ReactorInternalError
from .listener import Listener
from .loop import Handle, Reactor
from .requests import NEXT_STAGES, RequestEntry, RequestTable, Stage
from .tasks import Task
from .timers import TimerHandle
from .traps import Sleep, Trap, WaitReadable, WaitWritable, checkpoint, sleep, wait

__all__ = [
    "Reactor", "Listener", "Handle", "TimerHandle", "Task", "Clock", "MonotonicClock",
    "RequestEntry", "RequestTable", "Stage", "NEXT_STAGES",
    "Trap", "WaitReadable", "WaitWritable", "Sleep", "wait", "sleep", "checkpoint",
    "run_blocking",
    "Cancelled", "ReactorError", "ReactorInternalError", "ClosedResourceError",
]

__version__ = "0.1.0"
