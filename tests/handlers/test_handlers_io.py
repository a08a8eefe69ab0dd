"""AsyncReader / AsyncWriter over real socket pairs: non-blocking on a reactor (with a fake
clock) and blocking under `reactor.run_blocking`."""

from __future__ import annotations

import inspect
import logging
import selectors
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from conftest import SELECTOR_CLASSES

import reactor
from handlers import AsyncReader, AsyncWriter, BufferLimitExceeded, LineTooLong
from reactor import Reactor, run_blocking
from reactor.testing import FakeClock, run_until_idle



def Stats() -> reactor.RequestEntry:
    """A real request-table entry: what the streams report their byte counts to."""
    return reactor.RequestTable(time.monotonic).open(None, None, None)




@pytest.fixture
def pair(fake_loop: Reactor) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(ours, peer): ours is non-blocking with a small send buffer, so that output backs up
    after a few KiB; the peer is non-blocking too and reads only when a test says so."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        yield ours, peer
    finally:
        if not fake_loop.closed:
            fake_loop.forget(ours.fileno())
        ours.close()
        peer.close()


@pytest.fixture
def blocking_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair()
    ours.settimeout(10)
    peer.settimeout(10)
    try:
        yield ours, peer
    finally:
        ours.close()
        peer.close()


def make_reader(sock: socket.socket, loop: Reactor | None = None, **options: Any) -> AsyncReader:
    """An AsyncReader as a handler on `loop` gets one (with the reactor's clock when the
    reader takes one)."""
    if loop is not None and "clock" in inspect.signature(AsyncReader).parameters:
        options.setdefault("clock", loop.time)
    return AsyncReader(sock, **options)


def spawn(loop: Reactor, coro: Coroutine[Any, Any, Any]) -> reactor.Task:
    return loop.spawn(coro)


def drain_peer(peer: socket.socket) -> bytes:
    data = bytearray()
    while True:
        try:
            chunk = peer.recv(65536)
        except BlockingIOError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def pump(loop: Reactor, peer: socket.socket, until: Any, rounds: int = 10_000) -> bytes:
    """Alternate peer reads and loop turns until `until()`; return what the peer read."""
    got = bytearray()
    for _ in range(rounds):
        got += drain_peer(peer)
        run_until_idle(loop)
        if until():
            got += drain_peer(peer)
            return bytes(got)
    raise AssertionError("no progress")  # pragma: no cover


# ------------------------------------------------------------------------ AsyncReader, reactor
def test_readline_waits_for_a_whole_line(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)

    async def read_two() -> list[bytes]:
        return [await rfile.readline(), await rfile.readline()]

    task = spawn(fake_loop, read_two())
    run_until_idle(fake_loop)
    peer.send(b"first li")
    run_until_idle(fake_loop)
    assert not task.done
    peer.send(b"ne\nsecond\nthird")
    run_until_idle(fake_loop)
    assert task.result == [b"first line\n", b"second\n"]


def test_readline_at_eof_returns_the_rest_then_empty_bytes(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)

    async def read_all() -> list[bytes]:
        return [await rfile.readline(), await rfile.readline(), await rfile.readline()]

    peer.send(b"line\nunterminated")
    peer.shutdown(socket.SHUT_WR)
    task = spawn(fake_loop, read_all())
    run_until_idle(fake_loop)
    assert task.result == [b"line\n", b"unterminated", b""]
    assert rfile.at_eof()


def test_readline_limit(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)

    async def read() -> list[bytes]:
        return [await rfile.readline(3), await rfile.readline()]

    peer.send(b"abcdef\n")
    task = spawn(fake_loop, read())
    run_until_idle(fake_loop)
    assert task.result == [b"abc", b"def\n"]


def test_read_n_returns_exactly_n_bytes_waiting_as_needed(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)

    async def read() -> list[bytes]:
        return [await rfile.read(5), await rfile.read(5)]

    task = spawn(fake_loop, read())
    peer.send(b"ab")
    run_until_idle(fake_loop)
    peer.send(b"cdefg")
    run_until_idle(fake_loop)
    assert not task.done
    peer.send(b"hij")
    run_until_idle(fake_loop)
    assert task.result == [b"abcde", b"fghij"]


def test_read_n_returns_fewer_bytes_only_at_eof(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)

    async def read() -> list[bytes]:
        return [await rfile.read(10), await rfile.read(10)]

    peer.send(b"short")
    peer.shutdown(socket.SHUT_WR)
    task = spawn(fake_loop, read())
    run_until_idle(fake_loop)
    assert task.result == [b"short", b""]


def test_read_all_reads_until_eof(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)
    task = spawn(fake_loop, rfile.read())
    peer.send(b"part one, ")
    run_until_idle(fake_loop)
    peer.send(b"part two")
    run_until_idle(fake_loop)
    assert not task.done
    peer.shutdown(socket.SHUT_WR)
    run_until_idle(fake_loop)
    assert task.result == b"part one, part two"


def test_read1_returns_what_is_available(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)

    async def read() -> list[bytes]:
        first = await rfile.read1()
        peer.send(b"0123456789")
        return [first, await rfile.read1(4), await rfile.read1(100)]

    task = spawn(fake_loop, read())
    run_until_idle(fake_loop)
    assert not task.done  # read1 waits for at least one byte
    peer.send(b"xy")
    run_until_idle(fake_loop)
    assert task.result == [b"xy", b"0123", b"456789"]


def test_read1_at_eof_returns_empty_bytes(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)
    peer.shutdown(socket.SHUT_WR)
    task = spawn(fake_loop, rfile.read1())
    run_until_idle(fake_loop)
    assert task.result == b""


def test_async_for_yields_lines_until_eof(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)

    async def collect() -> list[bytes]:
        return [line async for line in rfile]

    task = spawn(fake_loop, collect())
    for piece in (b"a\nb", b"\n", b"c\nd"):
        peer.send(piece)
        run_until_idle(fake_loop)
    peer.shutdown(socket.SHUT_WR)
    run_until_idle(fake_loop)
    assert task.result == [b"a\n", b"b\n", b"c\n", b"d"]


def test_a_large_burst_is_read_completely(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    payload = bytes(range(256)) * 1024  # many recv() buffers' worth
    rfile = make_reader(ours, fake_loop, max_buffer_size=1 << 20)
    task = spawn(fake_loop, rfile.read())
    sent = 0
    for _ in range(10_000):
        if sent < len(payload):
            try:
                sent += peer.send(payload[sent:sent + 65536])
            except BlockingIOError:
                pass
            if sent == len(payload):
                peer.shutdown(socket.SHUT_WR)
        run_until_idle(fake_loop)
        if task.done:
            break
    assert task.result == payload


def test_reader_counts_bytes_in(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    stats = Stats()
    rfile = make_reader(ours, fake_loop, stats=stats)
    peer.send(b"12345\n")
    task = spawn(fake_loop, rfile.readline())
    run_until_idle(fake_loop)
    assert task.result == b"12345\n"
    assert stats.bytes_in == 6
    assert stats.bytes_out is None


def test_reader_timeout_raises_timeout_error_at_the_read(fake_loop: Reactor, clock: FakeClock,
                                                         pair) -> None:
    ours, _ = pair
    rfile = make_reader(ours, fake_loop, timeout=10)

    async def read() -> str:
        try:
            await rfile.readline()
        except TimeoutError:
            return "timed out"
        return "read"  # pragma: no cover

    task = spawn(fake_loop, read())
    run_until_idle(fake_loop)
    clock.advance(9.5)
    run_until_idle(fake_loop)
    assert not task.done
    clock.advance(0.5)
    run_until_idle(fake_loop)
    assert task.result == "timed out"


@pytest.mark.parametrize("call", ["read", "readline"])
def test_reader_timeout_bounds_the_whole_call_however_bytes_trickle(
        fake_loop: Reactor, clock: FakeClock, pair, call: str) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop, timeout=10, request_timeout=None)
    task = spawn(fake_loop, rfile.read(4) if call == "read" else rfile.readline())
    run_until_idle(fake_loop)
    for byte in (b"a", b"b"):  # a byte every 4 s: each wait is short, the call is not
        clock.advance(4)
        peer.send(byte)
        run_until_idle(fake_loop)
    assert not task.done
    clock.advance(2.5)  # 10.5 s since the call began
    run_until_idle(fake_loop)
    assert isinstance(task.error, TimeoutError)
    assert "timeout=10" in str(task.error)


def test_reader_timeout_restarts_with_each_call(fake_loop: Reactor, clock: FakeClock,
                                                pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop, timeout=10)

    async def two_lines() -> list[bytes]:
        return [await rfile.readline(), await rfile.readline()]

    task = spawn(fake_loop, two_lines())
    run_until_idle(fake_loop)
    clock.advance(8)
    peer.send(b"one\n")
    run_until_idle(fake_loop)
    clock.advance(8)  # 16 s in all, 8 s into the second call
    peer.send(b"two\n")
    run_until_idle(fake_loop)
    assert task.result == [b"one\n", b"two\n"]


def test_blocking_reader_timeout_bounds_the_whole_call(blocking_pair) -> None:
    ours, peer = blocking_pair
    rfile = AsyncReader(ours, timeout=0.5, request_timeout=None)
    stop = threading.Event()

    def trickle() -> None:  # a byte every 0.1 s, until the reader gives up
        while not stop.wait(0.1):
            try:
                peer.send(b"x")
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        with pytest.raises(TimeoutError):
            run_blocking(rfile.readline())
    finally:
        stop.set()
        sender.join()


def test_read_larger_than_max_buffer_size_is_delivered_whole(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop, max_buffer_size=1000)
    body = bytes(range(256)) * 12  # 3,072 bytes: three times the bound
    task = spawn(fake_loop, rfile.read(len(body)))
    for start in range(0, len(body), 700):
        peer.send(body[start:start + 700])
        run_until_idle(fake_loop)
    assert task.result == body
    peer.send(b"tail")
    peer.shutdown(socket.SHUT_WR)
    task = spawn(fake_loop, rfile.read(10_000))
    run_until_idle(fake_loop)
    assert task.result == b"tail"  # never more than was sent, b"" after
    task = spawn(fake_loop, rfile.read(10_000))
    run_until_idle(fake_loop)
    assert task.result == b""


def test_read_all_stays_bounded_by_max_buffer_size(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop, max_buffer_size=1000)
    task = spawn(fake_loop, rfile.read())
    peer.send(b"x" * 1500)
    run_until_idle(fake_loop)
    assert isinstance(task.error, BufferLimitExceeded)


def test_reader_line_too_long(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop, max_line_length=16)
    peer.send(b"x" * 17)
    task = spawn(fake_loop, rfile.readline())
    run_until_idle(fake_loop)
    assert isinstance(task.error, LineTooLong)


def test_reader_buffer_limit(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop, max_buffer_size=8)
    peer.send(b"0123456789")
    task = spawn(fake_loop, rfile.read())
    run_until_idle(fake_loop)
    assert isinstance(task.error, BufferLimitExceeded)


def test_reading_a_closed_reader_raises_value_error(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)
    rfile.close()
    assert rfile.closed
    peer.send(b"data\n")
    task = spawn(fake_loop, rfile.readline())
    run_until_idle(fake_loop)
    assert isinstance(task.error, ValueError)
    assert ours.fileno() != -1  # closing the reader leaves the socket alone


def test_reader_fileno_is_the_sockets(fake_loop: Reactor, pair) -> None:
    ours, _ = pair
    assert make_reader(ours, fake_loop).fileno() == ours.fileno()


def test_a_reset_peer_raises_connection_error_from_a_read(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    ours.send(b"unread by the peer")
    peer.close()  # closing with unread data: a reset for the reader
    rfile = make_reader(ours, fake_loop)

    async def read() -> Any:
        try:
            return await rfile.read()
        except ConnectionError as exc:
            return type(exc)

    task = spawn(fake_loop, read())
    run_until_idle(fake_loop)
    assert task.result is ConnectionResetError


# ------------------------------------------------------------------------ AsyncWriter, reactor
def test_write_sends_at_once_when_the_socket_has_room(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    stats = Stats()
    wfile = AsyncWriter(ours, reactor=fake_loop, stats=stats)
    assert wfile.write(b"hello") == 5
    assert wfile.buffered == 0
    assert peer.recv(100) == b"hello"
    assert stats.bytes_out == 5
    assert fake_loop.statistics()["descriptors"] == 0  # nothing to flush: no writer


def test_write_queues_what_the_socket_refuses(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    wfile = AsyncWriter(ours, reactor=fake_loop)
    payload = b"p" * 200_000
    assert wfile.write(payload) == len(payload)  # accepted whole, never blocks
    assert 0 < wfile.buffered < len(payload)
    assert wfile.write(b"tail") == 4  # queued behind, not sent ahead of the queue
    assert fake_loop.statistics()["descriptors"] == 1  # the flusher waits for room
    got = pump(fake_loop, peer, lambda: wfile.buffered == 0)
    assert got == payload + b"tail"
    assert fake_loop.statistics()["descriptors"] == 0


def test_a_partly_sent_typed_buffer_is_queued_byte_exactly(fake_loop: Reactor, pair) -> None:
    import array
    ours, peer = pair
    wfile = AsyncWriter(ours, reactor=fake_loop)
    numbers = array.array("i", range(50_000))  # items of 4 bytes: send() counts bytes
    assert wfile.write(numbers) == numbers.itemsize * len(numbers)
    assert wfile.buffered > 0
    more = array.array("d", [0.5] * 1000)  # queued whole behind the first
    wfile.write(memoryview(more))
    got = pump(fake_loop, peer, lambda: wfile.buffered == 0)
    assert got == numbers.tobytes() + more.tobytes()


def test_the_queue_is_flushed_by_the_reactor_without_any_await(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    stats = Stats()
    wfile = AsyncWriter(ours, reactor=fake_loop, stats=stats)
    wfile.writelines([b"a" * 50_000, b"b" * 50_000])
    before = wfile.buffered
    assert before > 0
    drain_peer(peer)
    fake_loop.run_once(0)
    assert wfile.buffered < before
    pump(fake_loop, peer, lambda: wfile.buffered == 0)
    assert stats.bytes_out == 100_000


def test_drain_returns_at_once_under_the_high_water_mark(fake_loop: Reactor, pair) -> None:
    ours, _ = pair
    wfile = AsyncWriter(ours, reactor=fake_loop, high_water=1 << 20)
    wfile.write(b"x" * 100_000)
    assert 0 < wfile.buffered <= 1 << 20
    coro = wfile.drain()
    with pytest.raises(StopIteration):
        coro.send(None)  # completed without suspending


def test_drain_waits_until_the_queue_is_well_under_the_high_water_mark(fake_loop: Reactor,
                                                                       pair) -> None:
    ours, peer = pair
    wfile = AsyncWriter(ours, reactor=fake_loop, high_water=40_000)

    async def writer() -> int:
        wfile.write(b"y" * 200_000)
        await wfile.drain()
        return wfile.buffered

    task = spawn(fake_loop, writer())
    run_until_idle(fake_loop)
    assert not task.done  # parked: the queue is over the mark and nobody reads
    pump(fake_loop, peer, lambda: task.done)
    assert task.result <= 40_000 // 4


def test_drain_times_out_when_the_peer_reads_nothing(fake_loop: Reactor, clock: FakeClock,
                                                     pair) -> None:
    ours, _ = pair
    wfile = AsyncWriter(ours, reactor=fake_loop, timeout=20, high_water=1000)

    async def writer() -> None:
        wfile.write(b"z" * 100_000)
        await wfile.drain()

    task = spawn(fake_loop, writer())
    run_until_idle(fake_loop)
    clock.advance(20)
    run_until_idle(fake_loop)
    assert isinstance(task.error, TimeoutError)


def test_max_write_buffer_refuses_a_write_that_would_pass_it(fake_loop: Reactor, pair) -> None:
    ours, _ = pair
    wfile = AsyncWriter(ours, reactor=fake_loop, max_write_buffer=50_000)
    wfile.write(b"a" * 40_000)
    queued = wfile.buffered
    with pytest.raises(BufferLimitExceeded, match="max_write_buffer=50000"):
        wfile.write(b"b" * 60_000)
    assert wfile.buffered == queued


def test_wait_flushed_delivers_everything_queued(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    wfile = AsyncWriter(ours, reactor=fake_loop, timeout=5)
    payload = bytes(range(256)) * 1000

    async def writer() -> None:
        wfile.write(payload)
        wfile.close()
        await wfile.wait_flushed()

    task = spawn(fake_loop, writer())
    run_until_idle(fake_loop)
    assert not task.done
    got = pump(fake_loop, peer, lambda: task.done)
    assert got == payload and task.error is None
    assert wfile.buffered == 0


def test_wait_flushed_gives_up_quietly_on_a_peer_that_reads_nothing(fake_loop: Reactor,
                                                                    clock: FakeClock,
                                                                    pair) -> None:
    ours, _ = pair
    wfile = AsyncWriter(ours, reactor=fake_loop, timeout=5)

    async def writer() -> None:
        wfile.write(b"q" * 100_000)
        await wfile.wait_flushed()

    task = spawn(fake_loop, writer())
    run_until_idle(fake_loop)
    clock.advance(5)
    run_until_idle(fake_loop)
    assert task.done and task.error is None  # the timeout is kept, not raised
    assert wfile.buffered == 0


def test_wait_flushed_after_a_timed_out_drain_does_not_wait_again(fake_loop: Reactor,
                                                                   clock: FakeClock,
                                                                   pair) -> None:
    """The peer already read nothing for the write timeout: the final flush gives up at
    once, so that the connection ends at its bound, not at twice it."""
    ours, _ = pair
    wfile = AsyncWriter(ours, reactor=fake_loop, timeout=5, high_water=1000)
    events: list[str] = []

    async def writer() -> None:
        wfile.write(b"s" * 100_000)
        try:
            await wfile.drain()
        except TimeoutError:
            events.append("timeout")
        await wfile.wait_flushed()

    task = spawn(fake_loop, writer())
    run_until_idle(fake_loop)
    clock.advance(5)
    run_until_idle(fake_loop)
    assert events == ["timeout"]
    assert task.done and task.error is None
    assert wfile.buffered == 0


def test_wait_flushed_waits_again_for_a_peer_that_resumed_reading(fake_loop: Reactor,
                                                                  clock: FakeClock,
                                                                  pair) -> None:
    ours, peer = pair
    wfile = AsyncWriter(ours, reactor=fake_loop, timeout=5, high_water=1000)
    payload = bytes(range(256)) * 400

    async def writer() -> None:
        wfile.write(payload)
        with pytest.raises(TimeoutError):
            await wfile.drain()
        await reactor.sleep(1)  # meanwhile the peer reads again
        await wfile.wait_flushed()

    task = spawn(fake_loop, writer())
    run_until_idle(fake_loop)
    clock.advance(5)
    run_until_idle(fake_loop)
    got = drain_peer(peer)
    run_until_idle(fake_loop)  # the queue moves again: the writer is no longer stalled
    clock.advance(1)
    got += pump(fake_loop, peer, lambda: task.done)
    assert got == payload and task.error is None


def test_writing_to_a_closed_peer_raises_connection_error(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    wfile = AsyncWriter(ours, reactor=fake_loop)
    peer.close()
    with pytest.raises(ConnectionError):
        wfile.write(b"into the void")
    with pytest.raises(ConnectionError):  # the error sticks
        wfile.write(b"again")


def test_drain_raises_connection_error_when_the_peer_goes_with_output_queued(
        fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    wfile = AsyncWriter(ours, reactor=fake_loop, high_water=1000)

    async def writer() -> None:
        wfile.write(b"w" * 100_000)
        await wfile.drain()

    task = spawn(fake_loop, writer())
    run_until_idle(fake_loop)
    assert not task.done
    peer.close()
    run_until_idle(fake_loop)
    assert isinstance(task.error, ConnectionError)
    assert wfile.buffered == 0
    with pytest.raises(ConnectionError):
        wfile.write(b"more")


def test_the_flusher_records_a_reset_for_the_next_write(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    wfile = AsyncWriter(ours, reactor=fake_loop)
    wfile.write(b"v" * 100_000)
    peer.close()
    run_until_idle(fake_loop)  # the flusher meets the error in the background
    assert wfile.buffered == 0
    assert fake_loop.statistics()["descriptors"] == 0
    with pytest.raises(ConnectionError):
        wfile.write(b"x")

    async def drain() -> None:
        await wfile.drain()

    task = spawn(fake_loop, drain())
    run_until_idle(fake_loop)
    assert isinstance(task.error, ConnectionError)


def test_wait_flushed_swallows_a_reset(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    wfile = AsyncWriter(ours, reactor=fake_loop)

    async def writer() -> None:
        wfile.write(b"v" * 100_000)
        await wfile.wait_flushed()

    task = spawn(fake_loop, writer())
    run_until_idle(fake_loop)
    peer.close()
    run_until_idle(fake_loop)
    assert task.done and task.error is None


def test_writer_basics(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    wfile = AsyncWriter(ours, reactor=fake_loop)
    assert wfile.fileno() == ours.fileno()
    assert wfile.writable()
    assert wfile.write(b"") == 0
    assert wfile.write(memoryview(b"mv")) == 2
    wfile.flush()  # a no-op: output leaves as the socket allows
    wfile.close()
    assert wfile.closed
    with pytest.raises(ValueError, match="closed"):
        wfile.write(b"late")
    assert peer.recv(10) == b"mv"
    assert ours.fileno() != -1


def test_a_task_reading_and_a_queue_flushing_share_one_descriptor(fake_loop: Reactor,
                                                                   pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)
    wfile = AsyncWriter(ours, reactor=fake_loop)

    async def session() -> bytes:
        wfile.write(b"r" * 100_000)  # queued: the flusher is the descriptor's writer
        line = await rfile.readline()  # the task is its reader meanwhile
        await wfile.wait_flushed()
        return line

    task = spawn(fake_loop, session())
    run_until_idle(fake_loop)
    peer.send(b"request\n")
    got = pump(fake_loop, peer, lambda: task.done)
    assert task.result == b"request\n"
    assert len(got) == 100_000


# ------------------------------------------------------------------------ blocking, run_blocking
def test_blocking_reader_and_writer_under_run_blocking(blocking_pair) -> None:
    ours, peer = blocking_pair
    stats = Stats()
    rfile = AsyncReader(ours, stats=stats)
    wfile = AsyncWriter(ours, stats=stats)

    async def echo() -> list[bytes]:
        got = []
        async for line in rfile:
            got.append(line)
            wfile.write(line.upper())
            await wfile.drain()
        await wfile.wait_flushed()
        return got

    peer.sendall(b"one\ntwo\nthree")
    peer.shutdown(socket.SHUT_WR)
    assert run_blocking(echo()) == [b"one\n", b"two\n", b"three"]
    assert peer.recv(100) == b"ONE\nTWO\nTHREE"
    assert (stats.bytes_in, stats.bytes_out) == (13, 13)


def test_blocking_read_n_read1_and_eof(blocking_pair) -> None:
    ours, peer = blocking_pair
    rfile = AsyncReader(ours)

    async def reads() -> list[bytes]:
        return [await rfile.read(3), await rfile.read1(100), await rfile.read(10),
                await rfile.readline(), await rfile.read1()]

    peer.sendall(b"abcdef")
    peer.shutdown(socket.SHUT_WR)
    assert run_blocking(reads()) == [b"abc", b"def", b"", b"", b""]


def test_blocking_reader_times_out_through_the_socket_timeout(blocking_pair) -> None:
    ours, _ = blocking_pair
    ours.settimeout(0.001)  # a real 1 ms wait: nothing is ever sent
    rfile = AsyncReader(ours)
    with pytest.raises(TimeoutError):
        run_blocking(rfile.readline())


def test_blocking_writer_sends_everything_and_never_queues(blocking_pair) -> None:
    ours, peer = blocking_pair
    wfile = AsyncWriter(ours)
    payload = b"b" * 10_000
    assert wfile.write(payload) == len(payload)
    assert wfile.buffered == 0
    run_blocking(wfile.drain())
    run_blocking(wfile.wait_flushed())
    got = bytearray()
    while len(got) < len(payload):
        got += peer.recv(65536)
    assert bytes(got) == payload


def test_blocking_writer_to_a_closed_peer_raises_connection_error(blocking_pair) -> None:
    ours, peer = blocking_pair
    peer.close()
    wfile = AsyncWriter(ours)
    with pytest.raises(ConnectionError):
        wfile.write(b"x")


def test_a_writer_on_a_non_blocking_socket_without_reactor_writes_blockingly(blocking_pair) -> None:
    ours, peer = blocking_pair
    wfile = AsyncWriter(ours, reactor=None)
    ours.setblocking(False)
    assert wfile.write(b"small") == 5
    assert peer.recv(10) == b"small"


def reactor_style_reader(sock: socket.socket, **options: Any) -> AsyncReader:
    """A reader over a non-blocking socket, as on a reactor (it yields traps to wait)."""
    sock.setblocking(False)
    if "clock" in inspect.signature(AsyncReader).parameters:
        options["clock"] = time.monotonic
    return AsyncReader(sock, **options)


def test_a_reactor_style_reader_yields_a_read_trap_with_its_timeout(blocking_pair) -> None:
    ours, _ = blocking_pair
    rfile = reactor_style_reader(ours, timeout=10)
    coro = rfile.readline()
    trap = coro.send(None)  # nothing to read: it suspends on a reactor trap
    coro.close()
    assert type(trap) is reactor.WaitReadable and trap.fd == ours.fileno()
    assert 9 < trap.timeout <= 10  # what is left of the call's 10 s


def test_run_blocking_turns_a_readers_traps_into_blocking_waits(blocking_pair) -> None:
    ours, peer = blocking_pair
    rfile = reactor_style_reader(ours, timeout=10)

    async def read() -> list[bytes]:
        first = await rfile.read1()  # a short read: the next read waits before trying
        peer.sendall(b"cd\n")
        return [first, await rfile.readline()]

    peer.sendall(b"ab")
    assert run_blocking(read()) == [b"ab", b"cd\n"]


def test_run_blocking_turns_a_readers_timeout_into_timeout_error(blocking_pair) -> None:
    ours, peer = blocking_pair
    rfile = reactor_style_reader(ours, timeout=0)

    async def read() -> bytes:
        await rfile.read1()
        return await rfile.readline()

    peer.sendall(b"no newline, and nothing follows")
    with pytest.raises(TimeoutError):
        run_blocking(read())


def test_a_write_to_an_already_full_socket_is_queued_whole(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    filled = bytearray()
    while True:  # fill the socket behind the writer's back
        try:
            filled += b"f" * ours.send(b"f" * 65536)
        except BlockingIOError:
            break
    wfile = AsyncWriter(ours, reactor=fake_loop)
    assert wfile.write(b"queued") == 6
    assert wfile.buffered == 6
    got = pump(fake_loop, peer, lambda: wfile.buffered == 0)
    assert got == bytes(filled) + b"queued"


# ------------------------------------------------------------------------ pipelined requests
def test_replies_to_pipelined_requests_leave_together_when_the_step_ends(fake_loop: Reactor,
                                                                         pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)
    options = {"reader": rfile} if "reader" in inspect.signature(AsyncWriter).parameters else {}
    wfile = AsyncWriter(ours, reactor=fake_loop, **options)
    seen_by_peer_during_step: list[bytes] = []

    async def serve() -> None:
        for _ in range(3):
            line = await rfile.readline()
            wfile.write(line.upper())
        seen_by_peer_during_step.append(drain_peer(peer))
        await reactor.checkpoint()

    peer.send(b"a\nb\nc\n")  # three requests in one segment
    task = spawn(fake_loop, serve())
    run_until_idle(fake_loop)
    assert task.done and task.error is None
    rest = drain_peer(peer)
    assert seen_by_peer_during_step[0] + rest == b"A\nB\nC\n"
    if options:  # corked: nothing left before the step ended
        assert seen_by_peer_during_step == [b""]


def test_a_corked_reply_to_a_vanished_peer_surfaces_at_the_next_write(fake_loop: Reactor,
                                                                      pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)
    if "reader" not in inspect.signature(AsyncWriter).parameters:  # pragma: no cover
        pytest.skip("AsyncWriter does not cork")
    wfile = AsyncWriter(ours, reactor=fake_loop, reader=rfile)

    async def serve() -> str:
        await rfile.readline()
        wfile.write(b"reply")  # corked: another request is buffered
        peer.close()
        await reactor.checkpoint()  # the step ends: the send fails, the error is kept
        try:
            wfile.write(b"more")
        except ConnectionError as exc:
            return type(exc).__name__
        return "no error"  # pragma: no cover

    peer.send(b"one\ntwo\n")
    task = spawn(fake_loop, serve())
    run_until_idle(fake_loop)
    assert task.result in ("BrokenPipeError", "ConnectionResetError")


def corking_writer(ours: socket.socket, loop: Reactor, **options: Any) -> tuple[AsyncReader,
                                                                                  AsyncWriter]:
    rfile = make_reader(ours, loop)
    if "reader" not in inspect.signature(AsyncWriter).parameters:  # pragma: no cover
        pytest.skip("AsyncWriter does not cork")
    return rfile, AsyncWriter(ours, reactor=loop, reader=rfile, **options)


def test_a_write_refused_for_max_write_buffer_is_never_sent_even_when_corked(
        fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile, wfile = corking_writer(ours, fake_loop, max_write_buffer=10)
    refused: list[str] = []

    async def serve() -> None:
        await rfile.readline()  # a second request stays buffered: replies are corked
        wfile.write(b"12345")
        try:
            wfile.write(b"over the limit")
        except BufferLimitExceeded:
            refused.append("refused")
        await wfile.wait_flushed()

    peer.send(b"a\nb\n")
    task = spawn(fake_loop, serve())
    run_until_idle(fake_loop)
    assert task.done and task.error is None
    assert refused == ["refused"]
    assert drain_peer(peer) == b"12345"


def test_an_oversized_corked_write_fails_in_the_handler_not_in_the_loop(fake_loop: Reactor,
                                                                        pair) -> None:
    ours, peer = pair
    while True:  # a full socket: nothing of the reply could leave at once
        try:
            ours.send(b"f" * 65536)
        except BlockingIOError:
            break
    rfile, wfile = corking_writer(ours, fake_loop, max_write_buffer=10)

    async def serve() -> None:
        await rfile.readline()
        wfile.write(b"x" * 100)
        await reactor.checkpoint()

    peer.send(b"a\nb\n")
    task = spawn(fake_loop, serve())
    logging.getLogger("reactor").disabled = True
    try:
        run_until_idle(fake_loop)  # must not raise out of the loop
    finally:
        logging.getLogger("reactor").disabled = False
    assert isinstance(task.error, BufferLimitExceeded)


class ScriptedClock:
    """Returns the given times in turn (then the last one again); `on_call` runs each time,
    standing for what the peer does while that much time passes."""

    def __init__(self, times: list[float], on_call: Any = None) -> None:
        self.times, self.on_call, self.calls = list(times), on_call, 0

    def __call__(self) -> float:
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self.calls)
        return self.times.pop(0) if len(self.times) > 1 else self.times[0]


def test_blocking_reader_bounds_the_rest_of_a_request_by_request_timeout(blocking_pair) -> None:
    ours, peer = blocking_pair

    def peer_acts(call: int) -> None:
        if call == 1:  # the request has begun; the rest arrives within it
            peer.sendall(b"tial\n")

    # the request begins at 0 s; by the next wait 10 s have passed
    ours.settimeout(None)  # no per-call timeout: only the request's deadline bounds the wait
    rfile = AsyncReader(ours, request_timeout=15,
                        clock=ScriptedClock([0.0, 10.0], peer_acts))  # type: ignore[arg-type]
    peer.sendall(b"par")
    assert run_blocking(rfile.readline()) == b"partial\n"
    assert ours.gettimeout() == 5  # the wait was bounded by the 5 s the request had left


def test_blocking_reader_refuses_to_wait_past_the_request_deadline(blocking_pair) -> None:
    ours, peer = blocking_pair
    ours.settimeout(None)  # no per-call timeout: only the request's deadline bounds the wait
    rfile = AsyncReader(ours, request_timeout=15,
                        clock=ScriptedClock([0.0, 100.0]))  # type: ignore[arg-type]
    peer.sendall(b"never finished")
    with pytest.raises(TimeoutError, match="request_timeout=15"):
        run_blocking(rfile.readline())


# ------------------------------------------------------------------------ readlines_available
def test_readlines_available_returns_every_complete_line_and_keeps_the_partial_one(
        fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)

    async def read() -> list[list[bytes]]:
        return [await rfile.readlines_available(), await rfile.readlines_available()]

    task = spawn(fake_loop, read())
    run_until_idle(fake_loop)
    assert not task.done  # nothing yet: it waits
    peer.send(b"one\ntwo\r\nth")  # a line end is b"\n" only: b"\r" stays in the line
    run_until_idle(fake_loop)
    assert not task.done  # a second call waits for the rest of the third line
    peer.send(b"ree\nfour")
    run_until_idle(fake_loop)
    assert task.result == [[b"one\n", b"two\r\n"], [b"three\n"]]
    peer.send(b"\n")  # the kept partial line is completed by the next segment

    async def read_one() -> list[bytes]:
        return await rfile.readlines_available()

    task = spawn(fake_loop, read_one())
    run_until_idle(fake_loop)
    assert task.result == [b"four\n"]


def test_readlines_available_after_readline_and_at_eof(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)

    async def read() -> list[Any]:
        return [await rfile.readline(), await rfile.readlines_available(),
                await rfile.readlines_available(), await rfile.readlines_available()]

    peer.send(b"a\nb\nc\nunterminated")
    peer.shutdown(socket.SHUT_WR)
    task = spawn(fake_loop, read())
    run_until_idle(fake_loop)
    assert task.result == [b"a\n", [b"b\n", b"c\n"], [b"unterminated"], []]


def test_readlines_available_raises_line_too_long_on_an_endless_line(fake_loop: Reactor,
                                                                      pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop, max_line_length=100)
    task = spawn(fake_loop, rfile.readlines_available())
    peer.send(b"ok\n" + b"x" * 200)
    run_until_idle(fake_loop)
    assert task.result == [b"ok\n"]
    task = spawn(fake_loop, rfile.readlines_available())
    run_until_idle(fake_loop)
    assert isinstance(task.error, LineTooLong)


def test_readlines_available_times_out_like_readline(fake_loop: Reactor, clock: FakeClock,
                                                     pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop, timeout=10, request_timeout=None)
    task = spawn(fake_loop, rfile.readlines_available())
    run_until_idle(fake_loop)
    clock.advance(6)
    peer.send(b"partial")  # not a line: the call goes on waiting, within its 10 s
    run_until_idle(fake_loop)
    assert not task.done
    clock.advance(4.5)
    run_until_idle(fake_loop)
    assert isinstance(task.error, TimeoutError) and "timeout=10" in str(task.error)


def test_replies_to_a_batch_of_lines_leave_in_one_send(fake_loop: Reactor, pair) -> None:
    ours, peer = pair
    rfile = make_reader(ours, fake_loop)
    wfile = AsyncWriter(ours, reactor=fake_loop, reader=rfile)
    seen_during_step: list[bytes] = []

    async def serve() -> None:
        for line in await rfile.readlines_available():
            wfile.write(line.upper())  # one write per line, as a readline() handler does
            seen_during_step.append(drain_peer(peer))
        await reactor.checkpoint()

    peer.send(b"a\nb\nc\n")
    task = spawn(fake_loop, serve())
    run_until_idle(fake_loop)
    assert task.done and task.error is None
    assert seen_during_step == [b"", b"", b""]  # corked until the handler waited
    assert drain_peer(peer) == b"A\nB\nC\n"


def test_readlines_available_in_a_blocking_handler(blocking_pair) -> None:
    ours, peer = blocking_pair
    rfile = AsyncReader(ours)
    peer.sendall(b"x\ny\n")

    async def read() -> list[bytes]:
        return await rfile.readlines_available()

    assert run_blocking(read()) == [b"x\n", b"y\n"]


def test_a_parked_readline_keeps_one_frame_and_yields_the_idle_trap_itself(
        fake_loop: Reactor, pair) -> None:
    """What an idle connection keeps alive: the handler's frame awaits one generator of the
    reader, which yields the reader's own trap (no per-wait trap or wait generator)."""
    ours, _ = pair
    rfile = make_reader(ours, fake_loop, idle_timeout=300)

    async def handle() -> bytes:
        return await rfile.readline()

    coro = handle()
    task = spawn(fake_loop, coro)
    run_until_idle(fake_loop)
    assert task.trap is rfile._trap
    awaited = coro.cr_await
    assert inspect.isgenerator(awaited) and awaited.gi_yieldfrom is None
    task.coro.close()
