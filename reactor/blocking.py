"""Drive a coroutine with blocking waits, on the calling thread.

This is how an `async def` handler runs in a thread (`ThreadingMixIn`), in a forked child
(`ForkingMixIn`) or anywhere no reactor is available: each trap the coroutine yields becomes
a blocking wait (`select` on the descriptor, or `time.sleep`). It starts no thread and needs no
loop, so it works in a freshly forked child.
"""

from __future__ import annotations

import selectors
import time
from typing import Any, Coroutine, TypeVar

from .traps import Sleep, WaitReadable, WaitWritable

__all__ = ["run_blocking"]

T = TypeVar("T")


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion, blocking the calling thread on whatever it waits for.

    Returns the coroutine's result; its exceptions propagate. A wait whose timeout passes is
    resumed with `TimeoutError` raised at the `await`, as on the reactor.
    """
    error: BaseException | None = None
    while True:
        try:
            trap = coro.send(None) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        error = _wait_for(trap)


def _wait_for(trap: object) -> BaseException | None:
    if isinstance(trap, Sleep):
        time.sleep(trap.seconds)
        return None
    if isinstance(trap, (WaitReadable, WaitWritable)):
        event = selectors.EVENT_READ if isinstance(trap, WaitReadable) else selectors.EVENT_WRITE
        with selectors.DefaultSelector() as selector:
            selector.register(trap.fd, event)
            if not selector.select(trap.timeout):
                return TimeoutError(f"no progress on descriptor {trap.fd} for {trap.timeout} s")
        return None
    return TypeError(f"a coroutine driven by run_blocking awaited {trap!r}, which is not one of "
                     "reactor's traps; await reactor.sleep() or a stream method instead")
