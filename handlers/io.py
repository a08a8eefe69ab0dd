"""AsyncReader / AsyncWriter: awaitable `rfile` / `wfile` for `async def` handlers.

They sit on a byte transport (`handlers.transport`) that the server chose when the request
started, and never ask the socket which world they are in:
- a non-blocking transport (the reactor's own requests, plain or TLS): reads and writes that
  would block suspend the request through `reactor` traps; output that cannot leave at once is
  queued and sent by the reactor as the socket allows;
- a blocking transport (threads, forked children, `run_blocking`): plain blocking calls, each
  bounded by what is left of the read's time. No trap is ever yielded for I/O there.

Timeouts: `timeout` bounds each read call as the handler sees it (the whole `readline()`, the
whole `read(n)`), however the bytes trickle in; `idle_timeout` bounds a wait with no request
begun; `request_timeout` bounds the rest of a request once its first byte is in.

Why reads wait before they try: after a short `recv()` the kernel buffer is almost always
empty, so trying again would cost a failed system call and an exception per request. We wait
for readability first then, and try first only after a `recv()` filled its whole buffer.

This module is over 400 lines because the reader and the writer share their hot paths (the
writer corks replies while the reader still holds pipelined requests) and one set of timeout
rules; split, each half would reach into the other's internals.
"""

from __future__ import annotations

import collections
import time
import types
from typing import Any, AsyncIterator, Awaitable, Callable, Generator, Protocol, cast

import reactor

from .buffers import ReceiveBuffer
from .errors import BufferLimitExceeded
from .transport import NO_SIGNAL, BlockingTransport, Transport, choose_transport

__all__ = ["AsyncReader", "AsyncWriter", "ByteCounter", "NO_SIGNAL"]

RECV_SIZE = 65536


class ByteCounter(Protocol):
    """Where a stream reports the bytes it moved (a request-table entry is one)."""

    def count_in(self, size: int) -> None: ...

    def count_out(self, size: int) -> None: ...


class AsyncReader:
    """The `rfile` of an async handler. Its methods are awaited; EOF gives b"" as a file does.

    Args:
        transport: the connection's `handlers.transport.Transport` (a socket is accepted too:
            its transport is then chosen from its blocking mode).

    Raises (from the read methods):
        TimeoutError: the read did not complete within the handler's `timeout`, the client
            sent nothing for `idle_timeout`, or did not complete a request begun within
            `request_timeout`.
        LineTooLong / BufferLimitExceeded: the peer exceeded `max_line_length` /
            `max_buffer_size`.
    """

    _transport: Transport

    __slots__ = ("_transport", "_buffer", "_trap", "_nonblocking", "_eof", "_try_first",
                 "_stats", "_timeout", "_idle_timeout", "_request_timeout", "_clock", "_batched",
                 "closed")

    def __init__(self, transport: Any, *, timeout: float | None = None,
                 idle_timeout: float | None = None, request_timeout: float | None = None,
                 clock: Callable[[], float] | None = None,
                 max_line_length: int = 65536, max_buffer_size: int = 262144,
                 stats: ByteCounter | None = None) -> None:
        if not isinstance(transport, Transport):
            transport = choose_transport(transport)
        self._transport = transport
        self._buffer = ReceiveBuffer(max_line_length, max_buffer_size)
        # A non-blocking transport suspends through traps (a reactor or run_blocking serves
        # them); a blocking one blocks in recv() under the bound of each read.
        self._nonblocking = not transport.blocking
        if transport.blocking:
            timeout = _smallest(timeout, transport.timeout)  # the socket's own timeout holds
        # Waiting with nothing buffered (between requests) is bounded by the idle timeout;
        # waiting for the rest of a request already begun, by the request deadline.
        self._trap = reactor.WaitReadable(transport.fd, _smallest(timeout, idle_timeout))
        self._timeout = timeout
        self._idle_timeout = idle_timeout
        self._request_timeout = request_timeout
        self._clock = clock if clock is not None else time.monotonic
        self._eof = False
        self._try_first = True
        self._stats = stats
        self._batched = False  # readlines_available() gave several lines: replies follow
        self.closed = False

    @property
    def transport(self) -> Transport:
        """The byte transport this reader reads from."""
        return self._transport

    def fileno(self) -> int:
        return self._transport.fd

    def at_eof(self) -> bool:
        """True once the peer has closed its side and every byte has been read."""
        return self._eof and not len(self._buffer)

    def readline(self, limit: int = -1) -> Awaitable[bytes]:
        """One line including its b"\\n"; at most `limit` bytes when `limit` >= 0; the rest of
        the stream (maybe b"") at EOF. Await the result: `line = await rfile.readline()`.

        A plain method returning an awaitable (measured: bench idle-c1000, pipe-d16): a line
        already buffered costs no frame of the waiting logic, and a connection parked here
        keeps one small generator that yields the reactor's trap itself (the `async def`
        readline it replaces kept its own frame and a `reactor.wait()` generator).
        """
        buffer = self._buffer
        if buffer._data:
            line = buffer.take_line(limit)
            if line is not None:
                return _ready(line)
        return _read_line(self, limit, None if self._timeout is None else self._clock())

    def _next_line(self, limit: int, receive: bool) -> bytes | None:
        """One step of `readline()`: `recv()` first when `receive` (or when input is likely
        there), then the line, the rest at EOF, or None when it must wait for input."""
        buffer = self._buffer
        if receive or (self._try_first and self._nonblocking):
            if not buffer._data and limit < 0 and not self._eof:
                # Nothing buffered, and the client's next segment is usually exactly one
                # line, handed over without copying (measured: bench echo-c100).
                data = self._recv_direct(RECV_SIZE)
                if data is not None:
                    end = data.find(b"\n")
                    if end == len(data) - 1 and end < buffer.max_line_length:
                        return data
                    buffer.feed(data)
            else:
                self._receive(RECV_SIZE)
        if buffer._data:
            line = buffer.take_line(limit)
            if line is not None:
                return line
        if self._eof:
            return buffer.take(-1)
        return None

    async def readlines_available(self) -> list[bytes]:
        """Every complete line already received (each with its b"\\n"), waiting only when
        none is: at least one line, or [] at EOF (then a last line without b"\\n" comes
        alone before it). The batch API of pipelined protocols: one call and one split for
        all the lines a client sent in one write, where `readline()` costs a call per line.
        The handler's `timeout`, `idle_timeout`, `request_timeout`, `max_line_length` and
        `max_buffer_size` apply as to `readline()`.

        Replies written (`wfile.write()`) before the handler next waits leave in one send.
        """
        lines = self._buffer.take_lines()
        if lines:
            self._batched = True
            return lines
        line = await self.readline()
        if not line:
            return []
        if line[-1:] != b"\n":
            return [line]  # the last bytes before EOF
        lines = self._buffer.take_lines()
        if not lines:
            return [line]
        lines.insert(0, line)
        self._batched = True
        return lines

    async def read(self, size: int = -1) -> bytes:
        """`size` bytes, fewer only at EOF; with `size` < 0, everything until EOF (bounded by
        `max_buffer_size`). A `size` above `max_buffer_size` is delivered whole: the bound
        is for bytes nobody asked for."""
        buffer = self._buffer
        started = None if self._timeout is None else self._clock()
        deadline = None
        while not self._eof and (size < 0 or len(buffer) < size):
            if deadline is None and len(buffer):
                deadline = self._request_deadline()
            waiting = self._wait_for_input(deadline, started)
            if waiting is not None:
                await waiting
            if size < 0 or len(buffer) + RECV_SIZE <= buffer.max_size:
                self._receive(RECV_SIZE)
            else:  # past the bound: take exactly what was asked for, no more
                self._receive(min(RECV_SIZE, size - len(buffer)), size)
        return buffer.take(size)

    async def read1(self, size: int = -1) -> bytes:
        """Whatever is available, at least one byte (b"" at EOF), at most `size` if >= 0."""
        started = None if self._timeout is None else self._clock()
        while not len(self._buffer) and not self._eof:
            waiting = self._wait_for_input(None, started)
            if waiting is not None:
                await waiting
            self._receive(RECV_SIZE)
        return self._buffer.take(size)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    def close(self) -> None:
        """Stop reading; buffered input is discarded. The socket stays open (the server
        closes it)."""
        self.closed = True

    def _wait_for_input(self, deadline: float | None,
                        started: float | None) -> Awaitable[None] | None:
        """Prepare the next `recv()`: on a non-blocking transport, what to await first
        (nothing when input is likely there already; the idle trap between requests; a wait
        bounded by what is left of the read call and of the request otherwise); on a blocking
        transport, give recv() the same bound. A plain method, so that a connection parked in
        readline() keeps no extra frame."""
        if not self._nonblocking:
            bound = self._wait_bound(deadline, started)
            cast(BlockingTransport, self._transport).settimeout(bound)
            return None
        if self._try_first:
            return None
        if deadline is None and started is None:
            return reactor.wait(self._trap)
        return self._wait_bounded(deadline, started)

    async def _wait_bounded(self, deadline: float | None, started: float | None) -> None:
        """Wait for input within what is left of the read call and of the request. (Between
        requests with no `timeout`, the read methods await the idle trap directly, so an idle
        connection keeps no extra frame alive.)"""
        bound = self._wait_bound(deadline, started)
        try:
            await reactor.wait(reactor.WaitReadable(self._trap.fd, bound))
        except TimeoutError:
            self._wait_bound(deadline, started)  # says which deadline passed, if one did
            raise  # the idle timeout

    def _wait_bound(self, deadline: float | None, started: float | None) -> float | None:
        """Seconds the next wait may take; raises TimeoutError once the read call's or the
        request's time is up."""
        if deadline is None and started is None:
            return self._idle_timeout
        now = self._clock()
        bound = None
        if deadline is not None:
            remaining = deadline - now
            if remaining <= 0:
                raise TimeoutError(f"the client did not complete its request within "
                                   f"request_timeout={self._request_timeout} s")
            if remaining != float("inf"):
                bound = remaining
        else:
            bound = self._idle_timeout
        if started is not None and self._timeout is not None:
            left = started + self._timeout - now
            if left <= 0:
                raise TimeoutError(f"the read did not complete within timeout={self._timeout} s")
            bound = _smallest(bound, left)
        return bound

    def _request_deadline(self) -> float:
        timeout = self._request_timeout
        return float("inf") if timeout is None else self._clock() + timeout

    def _receive(self, size: int, allowed: int = 0) -> None:
        """One `recv()` of at most `size` bytes into the buffer (see `_recv_direct`); the
        buffer may then hold `allowed` bytes when that is above `max_buffer_size`."""
        data = self._recv_direct(size)
        if data is not None:
            self._buffer.feed(data, allowed)

    def _recv_direct(self, size: int) -> bytes | None:
        """One `recv()`: the bytes, or None at EOF (then `_eof` is set) or when a non-blocking
        transport had nothing to read (then the next attempt waits for readability first)."""
        if self.closed:
            raise ValueError("read from a closed rfile")
        try:
            data = self._transport.recv(size)
        except (BlockingIOError, InterruptedError):
            if not self._nonblocking:
                raise
            self._try_first = False
            return None
        got = len(data)
        self._try_first = got == size
        if not got:
            self._eof = True
            return None
        stats = self._stats
        if stats is not None:
            stats.count_in(got)
        return data


class AsyncWriter:
    """The `wfile` of an async handler.

    `write(data)` never blocks a reactor: it sends what the socket takes at once and queues
    the rest, which the reactor sends as the socket allows. `await drain()` waits until the
    queue is back under `high_water`. Everything queued is sent before the connection closes
    (within the handler's timeout).

    Raises:
        BufferLimitExceeded: from `write()`, when the queue would pass `max_write_buffer`
            (a handler that writes a lot must `await drain()`).
        ConnectionError: from `write()`/`drain()` once the peer has gone.
    """

    _fd: int
    _transport: Transport

    __slots__ = ("_transport", "_fd", "_reactor", "_nonblocking", "_queue", "_queued", "_timeout",
                 "_flusher", "_error", "_stats", "_corked", "_reader", "_stalled", "high_water",
                 "max_write_buffer", "closed")

    def __init__(self, transport: Any, *, reactor: Any = None, timeout: float | None = None,
                 high_water: int = 65536, max_write_buffer: int = 4 * 1024 * 1024,
                 stats: ByteCounter | None = None, reader: AsyncReader | None = None) -> None:
        if not isinstance(transport, Transport):
            transport = choose_transport(transport)
        if reactor is None and not transport.blocking:
            transport = BlockingTransport(transport.sock)  # no loop to queue output on
        self._transport = transport
        self._fd = transport.fd
        self._reactor = reactor
        self._nonblocking = not transport.blocking
        if transport.blocking:
            timeout = _smallest(timeout, transport.timeout)  # the socket's own timeout holds
        self._queue: collections.deque[bytes] | None = None  # created when output must wait
        self._queued = 0
        self._timeout = timeout  # a write wait's bound (its trap is made when one waits)
        self._flusher: Any = None
        self._error: BaseException | None = None
        self._stats = stats
        self._corked: list[bytes] | None = None  # replies to pipelined requests, not yet sent
        self._reader = reader
        self._stalled = False  # a write wait timed out and the peer has taken nothing since
        self.high_water = high_water
        self.max_write_buffer = max_write_buffer
        self.closed = False

    @property
    def transport(self) -> Transport:
        """The byte transport this writer writes to."""
        return self._transport

    def fileno(self) -> int:
        return self._fd

    def writable(self) -> bool:
        return True

    @property
    def buffered(self) -> int:
        """Bytes written but not yet handed to the kernel."""
        return self._queued

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Send `data` (queued if the socket is full); returns its length."""
        if self._error is not None:
            raise self._error
        if self.closed:
            raise ValueError("write to a closed wfile")
        size = len(data) if type(data) is bytes else memoryview(data).nbytes
        if not size:
            return 0
        if not self._nonblocking:
            transport = cast(BlockingTransport, self._transport)
            transport.settimeout(self._timeout)  # the write timeout, off a reactor
            transport.send(data)
            self._count(size)
            return size
        if self._corked is not None:
            self._check_bound(size)  # before keeping it: a refused write is never sent
            self._corked.append(bytes(data))
            self._queued += size
            return size
        reader = self._reader
        if reader is not None and (len(reader._buffer) or reader._batched) and not self._queue:
            # More pipelined requests are already buffered (or were taken in one batch):
            # their replies will follow in this same step, so collect them and send once
            # when the step ends (measured: bench pipe-d16).
            reader._batched = False
            self._check_bound(size)  # here, not in _uncork(), where it would escape the loop
            self._corked = [bytes(data)]
            self._queued += size
            self._reactor.at_step_end(self._uncork)
            return size
        self._send_or_queue(data, size)
        return size

    def _send_or_queue(self, data: Any, size: int) -> None:
        sent = 0
        queue = self._queue
        if not queue:
            try:
                sent = self._transport.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fail(exc)
                raise
            self._count(sent)
            if sent == size:
                return
        rest = bytes(memoryview(data).cast("B")[sent:])  # `sent` counts bytes, not items
        self._check_bound(len(rest))
        if queue is None:
            queue = self._queue = collections.deque()
        queue.append(rest)
        self._queued += len(rest)
        if self._flusher is None:
            self._flusher = self._reactor.add_writer(self._fd, self._flush_ready)

    def _check_bound(self, adding: int) -> None:
        if self._queued + adding > self.max_write_buffer:
            raise BufferLimitExceeded(
                f"more than max_write_buffer={self.max_write_buffer} bytes queued for a client "
                "that is not reading; await wfile.drain() between writes")

    def _uncork(self) -> None:
        corked, self._corked = self._corked, None
        if not corked or self._error is not None:
            return
        data = corked[0] if len(corked) == 1 else b"".join(corked)
        self._queued -= len(data)
        try:
            self._send_or_queue(data, len(data))
        except OSError:
            pass  # kept in _error: the next write() or drain() raises it

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Nothing to do: output leaves as the socket allows (await `drain()` to wait)."""

    async def drain(self) -> None:
        """Wait until queued output is under `high_water` bytes.

        Raises:
            TimeoutError: the peer read nothing for the handler's `timeout`.
            ConnectionError: the peer has gone.
        """
        if self._queued > self.high_water:
            await self._send_queue(self.high_water // 4)
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """No more writes; what is queued is still sent before the connection closes."""
        self.closed = True

    async def wait_flushed(self) -> None:
        """Wait until every queued byte has been handed to the kernel (errors are kept, not
        raised: the peer may legitimately have gone). A peer that already let a wait time out
        and has taken nothing since is not waited for again (the connection then ends at the
        write timeout, not at twice it): what the kernel takes now is sent, the rest dropped."""
        if self._stalled:
            self._uncork()
            self._send_some()  # any byte taken clears _stalled: then wait as usual
        try:
            if not self._stalled:
                await self._send_queue(0)
        except (OSError, TimeoutError):
            pass
        self._queue = None
        self._queued = 0
        self._stop_flusher()
        # The request is over: drop the kept error. Its traceback holds the handler's frames,
        # which hold this writer: a reference cycle that would keep every failed request's
        # buffers alive until the cyclic GC runs (seen in bench/soak.py as RSS growth).
        self._error = None

    async def _send_queue(self, target: int) -> None:
        self._uncork()
        self._stop_flusher()
        trap = _WaitWritable(self._fd, self._timeout)
        try:
            while self._queued > target and self._error is None:
                try:
                    await reactor.wait(trap)
                except TimeoutError:
                    self._stalled = True
                    raise
                self._send_some()
        finally:
            if self._queue and self._error is None and not self._reactor.closed:
                self._flusher = self._reactor.add_writer(self._fd, self._flush_ready)

    def _flush_ready(self) -> None:
        self._send_some()
        if not self._queue:
            self._stop_flusher()

    def _send_some(self) -> None:
        queue = self._queue
        while queue:  # None or empty: nothing to send
            head = queue[0]
            try:
                sent = self._transport.send(head)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fail(exc)
                return
            self._count(sent)
            self._queued -= sent
            if sent < len(head):
                queue[0] = head[sent:]
                return
            queue.popleft()

    def _stop_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher = None
            self._reactor.remove_writer(self._fd)

    def _fail(self, exc: OSError) -> None:
        self._error = exc
        self._queue = None
        self._queued = 0
        self._stop_flusher()

    def _count(self, sent: int) -> None:
        if sent:
            self._stalled = False
            if self._stats is not None:
                self._stats.count_out(sent)


async def _ready(value: bytes) -> bytes:
    """An awaitable that completes at once with `value`."""
    return value


@types.coroutine
def _read_line(reader: AsyncReader, limit: int,
               started: float | None) -> Generator[Any, None, bytes]:
    """`readline()` when the line is not buffered yet. A generator that yields the reactor's
    trap itself, so that a connection parked here keeps this one small frame alive (every
    state it needs is a local: no exception, no object per step)."""
    deadline = None
    receive = False
    while True:
        line = reader._next_line(limit, receive)
        if line is not None:
            return line
        receive = True
        if deadline is None and reader._buffer._data:
            deadline = reader._request_deadline()
        if not reader._nonblocking:
            cast(BlockingTransport, reader._transport).settimeout(
                reader._wait_bound(deadline, started))
        elif not reader._try_first:
            trap = reader._trap  # the idle trap: nothing allocated per wait
            if deadline is not None or started is not None:
                trap = reactor.WaitReadable(trap.fd, reader._wait_bound(deadline, started))
            try:
                yield trap
            except TimeoutError:
                reader._wait_bound(deadline, started)  # says which deadline passed, if one did
                raise  # the idle timeout


_WaitWritable = reactor.WaitWritable


def _smallest(*timeouts: float | None) -> float | None:
    """The smallest of the timeouts that are set (None when none is)."""
    chosen = [t for t in timeouts if t is not None]
    return min(chosen) if chosen else None
