"""The interest table: which waiter wants to know when a descriptor is readable or writable.

This module is the sole caller of `selector.register/modify/unregister`. Each descriptor has
one reader slot and one writer slot; a slot holds an object with a `run()` method (a `Task` or
a callback handle). We update the kernel's interest lazily: clearing a slot does not touch the
selector; if the descriptor then reports an event nobody waits for, we drop that interest at
that moment. A request that waits for input over and over therefore costs no selector call per
wait. The price is one rule: forget a descriptor (`forget(fd)`) before closing it, or a later
descriptor reusing its number would inherit a stale registration.
"""

from __future__ import annotations

import os
import selectors
from typing import Any, Protocol

__all__ = ["Runnable", "FdInterest", "InterestTable"]

READ: int = selectors.EVENT_READ
WRITE: int = selectors.EVENT_WRITE


class Runnable(Protocol):
    def run(self) -> None: ...


class FdInterest:
    """Waiters of one descriptor and the event mask the selector currently holds for it."""

    __slots__ = ("fd", "reader", "writer", "mask")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.reader: Any = None
        self.writer: Any = None
        self.mask = 0


class InterestTable:
    """Maps descriptors to waiters over one selector."""

    __slots__ = ("_selector", "_by_fd")

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        self._by_fd: dict[int, FdInterest] = {}

    def __len__(self) -> int:
        return len(self._by_fd)

    def __contains__(self, fd: int) -> bool:
        return fd in self._by_fd

    def set_reader(self, fd: int, waiter: Runnable) -> None:
        """Run `waiter.run()` whenever `fd` is readable, until cleared."""
        interest = self._by_fd.get(fd)
        if interest is None:
            interest = self._by_fd[fd] = FdInterest(fd)
        interest.reader = waiter
        if not interest.mask & READ:
            self._apply(interest, interest.mask | READ)

    def set_writer(self, fd: int, waiter: Runnable) -> None:
        """Run `waiter.run()` whenever `fd` is writable, until cleared."""
        interest = self._by_fd.get(fd)
        if interest is None:
            interest = self._by_fd[fd] = FdInterest(fd)
        interest.writer = waiter
        if not interest.mask & WRITE:
            self._apply(interest, interest.mask | WRITE)

    def reader_of(self, fd: int) -> Any:
        interest = self._by_fd.get(fd)
        return None if interest is None else interest.reader

    def writer_of(self, fd: int) -> Any:
        interest = self._by_fd.get(fd)
        return None if interest is None else interest.writer

    def clear_reader(self, fd: int) -> None:
        """Stop waking anyone for readability of `fd` (the selector is updated lazily)."""
        interest = self._by_fd.get(fd)
        if interest is not None:
            interest.reader = None

    def clear_writer(self, fd: int) -> None:
        """Stop waking anyone for writability of `fd` (the selector is updated lazily)."""
        interest = self._by_fd.get(fd)
        if interest is not None:
            interest.writer = None

    def forget(self, fd: int) -> list[Any]:
        """Drop every interest in `fd` now (call this before the descriptor is closed);
        returns the waiters it had."""
        interest = self._by_fd.pop(fd, None)
        if interest is None:
            return []
        waiters = [w for w in (interest.reader, interest.writer) if w is not None]
        interest.reader = interest.writer = None  # an event already fetched must wake no one
        if interest.mask:
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass  # already closed by its owner: the kernel dropped it
        return waiters

    def closed_descriptors(self) -> list[int]:
        """Watched descriptors that are no longer open."""
        closed = []
        for fd in self._by_fd:
            try:
                os.fstat(fd)
            except OSError:
                closed.append(fd)
        return closed

    def dispatch(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        """Run the waiters of every ready descriptor in `events`."""
        for key, mask in events:
            interest = key.data
            if mask & READ:
                waiter = interest.reader
                if waiter is None:
                    self._drop_unwanted(interest, READ)
                else:
                    waiter.run()
            if mask & WRITE:
                waiter = interest.writer
                if waiter is None:
                    self._drop_unwanted(interest, WRITE)
                else:
                    waiter.run()

    def _drop_unwanted(self, interest: FdInterest, event: int) -> None:
        if self._by_fd.get(interest.fd) is interest and interest.mask & event:
            self._apply(interest, interest.mask & ~event)

    def _apply(self, interest: FdInterest, mask: int) -> None:
        selector = self._selector
        if interest.mask == 0:
            selector.register(interest.fd, mask, interest)
        elif mask == 0:
            selector.unregister(interest.fd)
        else:
            selector.modify(interest.fd, mask, interest)
        interest.mask = mask
        if mask == 0 and interest.reader is None and interest.writer is None:
            self._by_fd.pop(interest.fd, None)
