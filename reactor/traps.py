"""Traps: what a coroutine yields to whoever drives it.

A coroutine run by the reactor (or by `reactor.blocking.run_blocking`) suspends only by
awaiting one of the awaitables here; each yields a small frozen trap object saying what it
waits for. This module is the sole yield point of the library's coroutines; it does no I/O
and knows nothing about loops. Callers that wait on the same thing again and again (a stream
waiting for input) keep one trap object and reuse it, so a suspension allocates nothing.
"""

from __future__ import annotations

import types
from typing import Any, Generator, Union

__all__ = ["WaitReadable", "WaitWritable", "Sleep", "Trap", "wait", "sleep", "checkpoint"]


class _FrozenTrap:
    """Value semantics for the traps: equal when of the same kind with the same fields,
    hashable, immutable. (Written by hand rather than with `dataclasses`, whose import costs
    every process that imports the reactor a few hundred kilobytes.)"""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; make a new one")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"


class _DescriptorTrap(_FrozenTrap):
    """A wait on descriptor `fd`, bounded by `timeout` seconds (None: no limit)."""

    __slots__ = ("fd", "timeout")
    _fields = __slots__
    fd: int
    timeout: float | None

    def __init__(self, fd: int, timeout: float | None = None) -> None:
        object.__setattr__(self, "fd", fd)
        object.__setattr__(self, "timeout", timeout)


class WaitReadable(_DescriptorTrap):
    """Suspend until `fd` is readable; `timeout` seconds (None: no limit) then TimeoutError."""

    __slots__ = ()


class WaitWritable(_DescriptorTrap):
    """Suspend until `fd` is writable; `timeout` seconds (None: no limit) then TimeoutError."""

    __slots__ = ()


class Sleep(_FrozenTrap):
    """Suspend for `seconds` (0 just lets every other runnable request go first)."""

    __slots__ = ("seconds",)
    _fields = __slots__
    seconds: float

    def __init__(self, seconds: float) -> None:
        object.__setattr__(self, "seconds", seconds)


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
