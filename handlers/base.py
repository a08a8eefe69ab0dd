"""BaseRequestHandler: the standard library's handler contract, for `def` and `async def`.

A classic handler (`def handle`) does the whole request inside its constructor, exactly as
`socketserver.BaseRequestHandler` does: `setup()`, then `handle()`, then `finish()` (skipped
when `setup()` raises). A handler whose `handle()` is `async def` runs the same sequence as a
coroutine (`setup()` and `finish()` may be `def` or `async def`):
- when a server of this library starts it on a reactor, the constructor only records the
  request; the server receives the coroutine through `deferred_start()` and runs it as a task;
- anywhere else (a thread, a forked child, a server of the standard library) the constructor
  drives the coroutine itself with blocking I/O (`reactor.run_blocking`).
So a handler written once runs in every mode.
"""

from __future__ import annotations

import collections.abc
import contextlib
import contextvars
import functools
import types
from typing import Any, Awaitable, Coroutine, Final, Iterator, cast

import reactor

from .types import Address, ServerLike

__all__ = ["BaseRequestHandler", "DeferredStart", "deferred_start"]


class DeferredStart:
    """Filled in by an async handler's constructor inside `deferred_start()`.

    Attributes:
        reactor: the reactor the coroutine will run on (given by the server).
        entry: the request-table row of the request, if any.
        transport: the byte transport the server chose for the request, if any.
        handler: the handler instance that deferred itself, or None.
        coroutine: its lifecycle coroutine, for the server to run, or None.
    """

    __slots__ = ("reactor", "entry", "transport", "handler", "coroutine")

    def __init__(self, reactor: Any, entry: Any = None, transport: Any = None) -> None:
        self.reactor = reactor
        self.entry = entry
        self.transport = transport
        self.handler: BaseRequestHandler | None = None
        self.coroutine: Coroutine[Any, Any, None] | None = None


_deferral: contextvars.ContextVar[DeferredStart | None] = contextvars.ContextVar(
    "handlers_deferral", default=None)


@contextlib.contextmanager
def deferred_start(reactor: Any, entry: Any = None,
                   transport: Any = None) -> Iterator[DeferredStart]:
    """Make async handlers constructed inside the block hand their coroutine to the caller
    instead of running it (servers use this around `finish_request()`); `transport` is the
    `handlers.transport.Transport` the server chose for the request."""
    slot = DeferredStart(reactor, entry, transport)
    token = _deferral.set(slot)
    try:
        yield slot
    finally:
        _deferral.reset(token)


class BaseRequestHandler:
    """Same contract as `socketserver.BaseRequestHandler`; `handle()` may be `async def`.

    Attributes:
        request: the request (a connected socket, or `(data, socket)` for datagrams).
        client_address: the client's address.
        server: the server that accepted the request.
        reactor: the reactor running an async handler on a server's loop, else None.
    """

    #: True when this class's `handle` is `async def` (computed for each subclass).
    handle_is_async: bool = False
    reactor: Any = None
    _request_entry: Any = None
    _transport: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.handle_is_async = _is_async_function(cls.handle)

    def __init__(self, request: Any, client_address: Address, server: ServerLike) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server
        if self.handle_is_async:
            coroutine = self._lifecycle()
            slot = _deferral.get()
            if slot is not None and slot.coroutine is None:
                self.reactor = slot.reactor
                self._request_entry = slot.entry
                self._transport = slot.transport
                slot.handler = self
                slot.coroutine = coroutine
            else:
                reactor.run_blocking(coroutine)
            return
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self) -> Any:
        """Prepare for `handle()`; may be `async def` in an async handler."""

    def handle(self) -> Any:
        """Serve the request; override this (as `def` or `async def`)."""

    def finish(self) -> Any:
        """Clean up after `handle()`, even when it raised; may be `async def`."""

    async def _lifecycle(self) -> None:
        await _maybe_await(self.setup())
        try:
            await self.handle()
        finally:
            try:
                await _maybe_await(self.finish())
            finally:
                await self._wait_output_sent()

    async def _wait_output_sent(self) -> None:
        """Async handlers: deliver queued output before the server closes the request."""


# The code flags that mark an `async def` function and a `@types.coroutine` generator. The
# module does not import `inspect` for them: its imports (ast, dis, tokenize, ...) would grow
# every process that imports handlers, and ForkingMixIn copies the process per request.
_CO_COROUTINE: Final = 0x80
_CO_ITERABLE_COROUTINE: Final = 0x100


def _is_async_function(function: Any) -> bool:
    """True for an `async def` function (or a partial of one), as
    `inspect.iscoroutinefunction` answers for a handler's `handle`."""
    while isinstance(function, functools.partial):
        function = function.func
    function = getattr(function, "__func__", function)  # a bound or class method
    code = getattr(function, "__code__", None)
    return code is not None and bool(code.co_flags & _CO_COROUTINE)


def _is_awaitable(value: Any) -> bool:
    """What `inspect.isawaitable` answers: a coroutine, an object with `__await__`, or a
    `@types.coroutine` generator."""
    return isinstance(value, collections.abc.Awaitable) or (
        isinstance(value, types.GeneratorType)
        and bool(value.gi_code.co_flags & _CO_ITERABLE_COROUTINE))


async def _maybe_await(result: Awaitable[Any] | Any) -> Any:
    if _is_awaitable(result):
        return await cast("Awaitable[Any]", result)
    return result
