"""DatagramRequestHandler: one datagram in, one reply out (the standard library's contract).

`rfile` holds the datagram and `wfile` collects the reply, both in memory, so they are the
same objects for `def` and `async def` handlers. The reply is sent to the client at `finish()`,
always, even when empty. On a reactor the reply is sent without blocking the loop: if the
socket's send buffer is full the datagram is dropped and logged, as UDP allows.
"""

from __future__ import annotations

import io
import logging
import socket
from typing import Any

from .base import BaseRequestHandler, _is_awaitable

__all__ = ["DatagramRequestHandler"]

logger = logging.getLogger("handlers")


class DatagramRequestHandler(BaseRequestHandler):
    """Same contract as `socketserver.DatagramRequestHandler`.

    Attributes:
        packet: the datagram received.
        socket: the server's socket (shared by every request: never close it).
        rfile: `io.BytesIO` over the datagram.
        wfile: `io.BytesIO` collecting the reply.
    """

    packet: bytes
    socket: socket.socket
    rfile: io.BytesIO
    wfile: io.BytesIO

    def setup(self) -> Any:
        self.packet, self.socket = self.request
        self.rfile = io.BytesIO(self.packet)
        self.wfile = io.BytesIO()

    async def _lifecycle(self) -> None:
        # BaseRequestHandler's sequence, without a coroutine per def setup()/finish() (a
        # datagram server runs it once per datagram), and without waiting for queued output:
        # a datagram handler has none, its reply leaves in finish().
        started = self.setup()
        if started is not None and _is_awaitable(started):
            await started
        try:
            await self.handle()
        finally:
            ended = self.finish()
            if ended is not None and _is_awaitable(ended):
                await ended

    def finish(self) -> Any:
        reply = self.wfile.getvalue()
        if self.reactor is None:
            self.socket.sendto(reply, self.client_address)
            return
        try:
            self.socket.sendto(reply, socket.MSG_DONTWAIT, self.client_address)
        except (BlockingIOError, InterruptedError):
            logger.warning("reply to %s dropped: the socket's send buffer is full",
                           self.client_address)
