"""Exceptions raised by the reactor.

This module owns the reactor's error vocabulary and nothing else. Errors that signal a bug in the
reactor itself (`ReactorInternalError`) are kept apart from errors a caller can fix, so that our
bugs never look like the user's.
"""

from __future__ import annotations

__all__ = ["ReactorError", "ReactorInternalError", "Cancelled", "ClosedResourceError"]


class ReactorError(RuntimeError):
    """A reactor was used in a way it does not support; the message says what to do instead."""


class ReactorInternalError(ReactorError):
    """An invariant of the reactor broke. This is a bug in the library: please report it."""


class Cancelled(BaseException):
    """Thrown into a request's coroutine when the reactor cancels it (for example at the end of
    a graceful shutdown's `shutdown_timeout`).

    It derives from `BaseException` so that a handler's `except Exception:` does not swallow it;
    `finally:` blocks and `finish()` still run.
    """


class ClosedResourceError(ReactorError):
    """An operation was attempted on a reactor or stream that is already closed."""
