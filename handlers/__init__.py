"""handlers: request handlers with the standard library's contract, for `def` and `async def`.

- `BaseRequestHandler`, `StreamRequestHandler`, `DatagramRequestHandler`: drop-in equivalents
  of `socketserver`'s; `handle()` may be `async def` (see `handlers.base`).
- `AsyncReader`, `AsyncWriter`: the awaitable `rfile`/`wfile` of async stream handlers.
- `SocketWriter`: the unbuffered classic `wfile`.
- `LimitExceeded`, `LineTooLong`, `BufferLimitExceeded`: what a client over a bound causes.
"""

from __future__ import annotations

from .base import BaseRequestHandler, DeferredStart, deferred_start
from .datagram import DatagramRequestHandler
from .errors import BufferLimitExceeded, LimitExceeded, LineTooLong
from .io import AsyncReader, AsyncWriter
from .stream import SocketWriter, StreamRequestHandler

__all__ = [
    "BaseRequestHandler", "StreamRequestHandler", "DatagramRequestHandler",
    "AsyncReader", "AsyncWriter", "SocketWriter",
    "DeferredStart", "deferred_start",
    "LimitExceeded", "LineTooLong", "BufferLimitExceeded",
]
