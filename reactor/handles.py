"""Handle: a callback queued on a reactor, or registered for a descriptor or a signal."""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["Handle"]


class Handle:
    """A queued or registered callback. `cancel()` stops it from running again."""

    __slots__ = ("callback", "args", "cancelled")

    def __init__(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def run(self) -> None:
        if not self.cancelled:
            self.callback(*self.args)

    def __repr__(self) -> str:
        return f"<Handle {'cancelled ' if self.cancelled else ''}{self.callback!r}>"
