"""Traps: what a coroutine yields to whoever drives it.

A coroutine run by the reactor (or by `reactor.blocking.run_blocking`) suspends only by
awaiting one of the awaitables here; each yields a small frozen trap object saying what it
waits for. This module is the sole yield point of the library's coroutines; it does no I/O
and knows nothing about loops. Callers that wait on the same thing again and again (a stream
waiting for input) keep one trap object and reuse it, so a suspension allocates nothing.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Generator, Union

__all__ = ["WaitReadable", "WaitWritable", "Sleep", "Trap", "wait", "sleep", "checkpoint"]


@dataclass(frozen=True, slots=True)
class WaitReadable:
    """Suspend until `fd` is readable; `timeout` seconds (None: no limit) then TimeoutError."""

    fd: int
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class WaitWritable:
    """Suspend until `fd` is writable; `timeout` seconds (None: no limit) then TimeoutError."""

    fd: int
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Sleep:
    """Suspend for `seconds` (0 just lets every other runnable request go first)."""

    seconds: float


Trap = Union[WaitReadable, WaitWritable, Sleep]

_CHECKPOINT = Sleep(0.0)


@types.coroutine
def wait(trap: Trap) -> Generator[Trap, None, None]:
    """Suspend the calling coroutine on `trap`.

    Raises:
        TimeoutError: the trap's timeout passed first.
        reactor.Cancelled: the request was cancelled while waiting.
    """
    yield trap


async def sleep(seconds: float) -> None:
    """Suspend the calling request for `seconds` without blocking other requests."""
    await wait(Sleep(max(0.0, float(seconds))))


async def checkpoint() -> None:
    """Let every other runnable request run before this one continues."""
    await wait(_CHECKPOINT)
