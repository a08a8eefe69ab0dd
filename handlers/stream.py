"""StreamRequestHandler: `rfile`/`wfile` over a connected socket.

For `def handle()` it is the standard library's class: `rfile` a buffered file from
`makefile('rb', rbufsize)`, `wfile` an unbuffered `SocketWriter` (or `makefile('wb', wbufsize)`),
the socket blocking or with exactly `timeout`. For `async def handle()` the files are an
`AsyncReader`/`AsyncWriter` pair whose methods are awaited and whose bounds are the
`max_*` attributes below.
"""

from __future__ import annotations

import io
import socket
from typing import Any

from .base import BaseRequestHandler
from .io import AsyncReader, AsyncWriter, _smallest
from .transport import NO_SIGNAL, Transport, choose_transport, tls_of

__all__ = ["StreamRequestHandler", "SocketWriter"]


class SocketWriter(io.BufferedIOBase):
    """An unbuffered binary writer over a socket: `write()` sends everything at once (retrying
    after signals, as `sendall()` does) and returns the byte count. Closing it does not close
    the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        # MSG_NOSIGNAL on plain sockets; an `ssl.SSLSocket` refuses flags
        self._flags = 0 if tls_of(sock) is not None else NO_SIGNAL

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._sock.sendall(b, self._flags)
        with memoryview(b) as view:
            return view.nbytes

    def fileno(self) -> int:
        return self._sock.fileno()


class StreamRequestHandler(BaseRequestHandler):
    """Same contract as `socketserver.StreamRequestHandler`, plus async files.

    Attributes (class-level defaults; override in a subclass):
        rbufsize: read buffer of a classic `rfile` (-1: default size, 0: unbuffered).
        wbufsize: write buffer of a classic `wfile` (0: unbuffered `SocketWriter`).
        timeout: seconds a single socket operation (classic) or wait (async) may take;
            None for no limit. Exceeding it raises `TimeoutError` in `handle()`.
        disable_nagle_algorithm: set TCP_NODELAY on the connection.
        idle_timeout: async: seconds a connection may wait with no request begun (between
            requests of a keep-alive connection) before `TimeoutError`. None: no limit.
        request_timeout: async: seconds a client has to complete a request once it has begun
            (a line, or a `read(n)`), however it trickles in: a slowloris client sending a
            byte a second is cut off. None: no limit.
        write_timeout: async: seconds output may wait for a client that reads nothing
            (`drain()`, and the final flush before close) before the client is dropped.
        max_line_length: async `readline()` bound (LineTooLong beyond it).
        max_buffer_size: async input bytes buffered at most (BufferLimitExceeded beyond it).
        write_high_water: async queued output above which `drain()` waits.
        max_write_buffer: async queued output bound (BufferLimitExceeded from `write()`).
    """

    rbufsize = -1
    wbufsize = 0
    timeout: float | None = None
    disable_nagle_algorithm = False
    idle_timeout: float | None = 300.0
    request_timeout: float | None = 60.0
    write_timeout: float | None = 60.0
    max_line_length = 65536
    max_buffer_size = 262144
    write_high_water = 65536
    max_write_buffer = 4 * 1024 * 1024

    connection: Any
    rfile: Any
    wfile: Any

    @property
    def tls(self) -> Any:
        """The connection's `ssl.SSLSocket` when it is encrypted (ask it `version()`,
        `cipher()`, `selected_alpn_protocol()`, `getpeercert()`), else None."""
        return tls_of(getattr(self, "connection", self.request))

    @property
    def proxy(self) -> Any:
        """The PROXY protocol header the connection started with (a `servers.proxy.ProxyInfo`:
        version, source, destination, the immediate peer, TLVs), or None without one."""
        lookup = getattr(self.server, "proxy_header", None)
        return lookup(self.request) if callable(lookup) else None

    def setup(self) -> Any:
        self.connection = self.request
        connection = self.connection
        if self.disable_nagle_algorithm and not getattr(self.server, "tcp_nodelay", False):
            # (a server of this library with tcp_nodelay set it at accept: no second syscall)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        if self.handle_is_async:
            transport: Transport | None = self._transport  # the server's choice, on a reactor
            if transport is None or transport.sock is not connection:
                # Driven in a thread, a child, or by a server of the standard library.
                if self.timeout is not None and connection.gettimeout() != 0.0:
                    connection.settimeout(self.timeout)
                transport = choose_transport(connection)
            loop = None if transport.blocking else self.reactor
            stats = self._request_entry
            self.rfile = AsyncReader(
                transport, timeout=self.timeout, idle_timeout=self.idle_timeout,
                request_timeout=self.request_timeout, clock=loop and loop.timefunc,
                max_line_length=self.max_line_length, max_buffer_size=self.max_buffer_size,
                stats=stats)
            self.wfile = AsyncWriter(
                transport, reactor=loop,
                timeout=_smallest(self.timeout, self.write_timeout),
                high_water=self.write_high_water,
                max_write_buffer=self.max_write_buffer, stats=stats,
                reader=self.rfile if loop is not None else None)
            return
        if self.timeout is not None:
            connection.settimeout(self.timeout)
        self.rfile = connection.makefile("rb", self.rbufsize)
        if self.wbufsize == 0:
            self.wfile = SocketWriter(connection)
        else:
            self.wfile = connection.makefile("wb", self.wbufsize)

    def finish(self) -> Any:
        if not self.wfile.closed:
            try:
                self.wfile.flush()
            except OSError:
                pass  # the peer has gone; nothing more can be delivered
        self.wfile.close()
        self.rfile.close()

    async def _wait_output_sent(self) -> None:
        wfile = getattr(self, "wfile", None)
        if isinstance(wfile, AsyncWriter):
            await wfile.wait_flushed()
