"""The waker: how other threads and signal handlers interrupt a sleeping reactor.

A non-blocking socket pair; `wake()` sends one byte, which makes the reactor's `select()`
return; the reactor then drains the bytes. It needs no thread, so it works where threads cannot
be started, and `wake()` is safe to call from any thread and from a Python signal handler.

Why it is this way: since PEP 475 a `select()` interrupted by a signal runs the Python-level
signal handler and then retries with the remaining timeout. Our signal handlers therefore only
record the signal and call `wake()`; the retried `select()` returns at once and the callback
runs on the loop, between requests, never in the middle of one. A signal that lands after the
interpreter's last check but before `select()` blocks interrupts nothing, so while signal
handlers are installed the write end is also `signal.set_wakeup_fd()`: the C-level handler
wakes the loop itself.
"""

from __future__ import annotations

import socket

__all__ = ["Waker"]


class Waker:
    """A self-pipe made of a socket pair."""

    __slots__ = ("_rsock", "_wsock")

    def __init__(self) -> None:
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)

    def fileno(self) -> int:
        """The descriptor to watch for readability."""
        return self._rsock.fileno()

    def write_fileno(self) -> int:
        """The descriptor `wake()` writes to (given to `signal.set_wakeup_fd()`)."""
        return self._wsock.fileno()

    def wake(self) -> None:
        """Make the reactor's next (or current) wait return. Thread- and signal-safe."""
        try:
            self._wsock.send(b"\0")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed (nothing left to wake)

    def drain(self) -> None:
        """Consume pending wake-ups (the reactor calls this when the waker is readable)."""
        try:
            while self._rsock.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self._rsock.close()
        self._wsock.close()
