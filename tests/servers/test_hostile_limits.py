"""Hostile clients against the per-connection bounds: read bounds (line length, buffered input),
write backpressure (high water, write timeout, max_write_buffer), slowloris and idle timeouts,
classic socket timeouts and read-ahead.

Reactor-mode tests drive the loop on the test thread with a `FakeClock`, so a 60-second timeout
costs microseconds and nothing waits on wall-clock time. Threading tests run `serve_forever()`
in a thread; forking tests run the loop on the main thread (3.12+ warns when forking with other
threads alive) with their clients in another process. Helpers: `test_hostile_support.py`.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import reactor
import servers
from test_hostile_support import (
    RECV_SIZE, ClientProcess, Reply, TrackingBuffer, client, in_thread, needs_fork, on_reactor,
    pipe_log, pump, send_pumping, server_records, track_input, turns)


def server_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return server_records(caplog, logging.WARNING)


# ------------------------------------------------------------------------------ handlers
class LineEcho(servers.StreamRequestHandler):
    """Echo lines until EOF; the input buffer is tracked."""

    async def handle(self) -> None:
        track_input(self)
        async for line in self.rfile:
            self.wfile.write(line)


class ReadAll(servers.StreamRequestHandler):
    """Read until EOF (bounded by max_buffer_size), then report the size."""

    async def handle(self) -> None:
        track_input(self)
        data = await self.rfile.read()
        self.wfile.write(b"%d\n" % len(data))


# ------------------------------------------------------------------------------ read bounds
@pytest.fixture(autouse=True)
def _reset_peaks() -> Iterator[None]:
    TrackingBuffer.peaks = []
    yield


@pytest.mark.parametrize("limit", [1024, 100_000])
def test_reactor_line_longer_than_max_line_length_closes_with_one_warning(
        caplog: pytest.LogCaptureFixture, limit: int) -> None:
    caplog.set_level(logging.INFO, logger="servers")

    class Handler(LineEcho):
        max_line_length = limit

    with on_reactor(Handler) as (server, r, _clock):
        good = client(server.server_address)
        bad = client(server.server_address)
        pump(r, lambda: len(r.requests) == 2)
        send_pumping(r, bad, b"x" * (limit + 3 * RECV_SIZE))  # no newline, ever
        bad_reply = Reply(bad)
        pump(r, bad_reply.ended)
        assert bytes(bad_reply.data) == b"", "nothing of the over-long line is echoed"
        assert len(r.requests) == 1
        good.sendall(b"still served\n")
        good_reply = Reply(good)
        pump(r, lambda: good_reply.has(b"\n"))
        assert bytes(good_reply.data) == b"still served\n"
        good.close()
        bad.close()
    warnings = server_warnings(caplog)
    assert len(warnings) == 1, [w.getMessage() for w in warnings]
    assert "max_line_length" in warnings[0].getMessage()
    # The buffer never held more than the line bound plus one recv(), nor max_buffer_size.
    bad_peak = max(TrackingBuffer.peaks)
    assert bad_peak <= min(limit + RECV_SIZE, Handler.max_buffer_size)


def test_reactor_input_beyond_max_buffer_size_closes_with_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="servers")

    class Handler(ReadAll):
        max_buffer_size = 8192

    with on_reactor(Handler) as (server, r, _clock):
        bad = client(server.server_address)
        send_pumping(r, bad, b"z" * 200_000)  # never closes its side: read() would wait on
        reply = Reply(bad)
        pump(r, reply.ended)
        assert bytes(reply.data) == b""
        bad.close()
        good = client(server.server_address)
        good.sendall(b"a" * 5000)
        good.shutdown(socket.SHUT_WR)
        reply = Reply(good)
        pump(r, lambda: reply.has(b"\n"))
        assert bytes(reply.data) == b"5000\n"
        good.close()
    warnings = server_warnings(caplog)
    assert len(warnings) == 1 and "max_buffer_size" in warnings[0].getMessage()
    assert max(TrackingBuffer.peaks) <= 8192


@pytest.mark.threads
@pytest.mark.parametrize("handler_base", [LineEcho, ReadAll], ids=["line", "buffer"])
def test_threading_async_handler_over_its_read_bound_closes_with_one_warning(
        caplog: pytest.LogCaptureFixture, handler_base: type) -> None:
    caplog.set_level(logging.INFO, logger="servers")
    errors: list[Any] = []

    class Handler(handler_base):  # type: ignore[misc,valid-type]
        max_line_length = 1024
        max_buffer_size = 8192

    class Server(servers.ThreadingTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append(client_address)

    with in_thread(Handler, Server) as server:
        with client(server.server_address) as bad:
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                bad.sendall(b"q" * 100_000)  # the server may close before it is all sent
                assert bad.recv(100) == b""
        with client(server.server_address) as good:
            good.sendall(b"ok\n")
            good.shutdown(socket.SHUT_WR)
            expected = b"ok\n" if handler_base is LineEcho else b"3\n"
            assert good.recv(100) == expected
    assert errors == [], "a client over a bound is not a server error"
    warnings = server_warnings(caplog)
    assert len(warnings) == 1, [w.getMessage() for w in warnings]
    assert max(TrackingBuffer.peaks) <= 8192


@needs_fork
@pytest.mark.forking
@pytest.mark.slow
def test_forking_async_handler_over_max_line_length_closes_with_one_warning() -> None:
    class Handler(LineEcho):
        max_line_length = 1024

    clients = """
        bad = connect()
        try:
            bad.sendall(b"q" * 100_000)
        except OSError:
            pass  # the child closed first
        bad_reply = recv_all(bad)
        good = connect()
        good.sendall(b"fine\\n")
        good.shutdown(socket.SHUT_WR)
        report([bad_reply.decode(), recv_all(good).decode()])
    """
    with pipe_log() as log, on_reactor(Handler, servers.ForkingTCPServer) as (server, r, _c):
        with ClientProcess(clients, server.server_address) as proc:
            assert proc.finish(r) == [["", "fine\n"]]
        pump(r, lambda: not server.active_children)
        warnings = [line for line in log.collect() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "max_line_length" in warnings[0], warnings


# ------------------------------------------------------------------------------ write bounds
class Flood(servers.StreamRequestHandler):
    """Write 32 MiB in 16 KiB chunks with drain(); record the queue after every write."""

    chunk = 16384
    seen: list[int] = []
    outcome: list[str] = []

    async def handle(self) -> None:
        try:
            for _ in range(2048):
                self.wfile.write(b"y" * self.chunk)
                type(self).seen.append(self.wfile.buffered)
                await self.wfile.drain()
            type(self).outcome.append("completed")
        except TimeoutError:
            type(self).outcome.append("timeout")
            raise


def test_reactor_never_reader_keeps_output_under_high_water_then_is_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="servers")

    class Handler(Flood):
        write_high_water = 65536
        write_timeout = 5.0
        seen: list[int] = []
        outcome: list[str] = []

    with on_reactor(Handler) as (server, r, clock):
        never_reader = client(server.server_address)
        pump(r, lambda: len(r.requests) == 1)
        entry = r.requests[0]
        # Let the kernel buffers fill; then only the clock moves: the drop must come from
        # write_timeout, fake seconds after the client stopped taking data.
        for _ in range(200):
            if not r.requests:
                break
            clock.advance(1.0)
            r.run_once(0.01)
        assert not r.requests, "the never-reading client was not dropped"
        assert Handler.outcome == ["timeout"]
        assert entry.bytes_out is not None and entry.bytes_out < 2048 * Handler.chunk
        peak = max(Handler.seen)
        assert peak <= Handler.write_high_water + Handler.chunk, peak
        # The connection is closed: what the kernel holds drains to EOF.
        never_reader.settimeout(10)
        total = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := never_reader.recv(1 << 20):
                total += len(chunk)
        assert total <= entry.bytes_out
        never_reader.close()
    infos = [rec for rec in caplog.records if rec.name == "servers"]
    assert any("ended" in rec.getMessage() for rec in infos)
    assert not server_warnings(caplog), "a timeout is not a warning"


def test_reactor_writing_past_max_write_buffer_without_drain_closes_with_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="servers")
    seen: list[int] = []

    class Handler(servers.StreamRequestHandler):
        max_write_buffer = 256 * 1024

        async def handle(self) -> None:
            for _ in range(4096):  # 256 MiB if nothing stopped it
                self.wfile.write(b"w" * 65536)
                seen.append(self.wfile.buffered)
                await reactor.checkpoint()  # yields, but never waits for the client

    with on_reactor(Handler) as (server, r, clock):
        never_reader = client(server.server_address)
        pump(r, lambda: len(r.requests) == 1)
        entry = r.requests[0]
        # The writes stop at the bound; what is queued then gets write_timeout (fake seconds)
        # to leave before the connection is closed.
        pump(r, lambda: len(seen) > 1 and entry.state == "writing")
        stopped_at = len(seen)
        turns(r, 10)
        assert len(seen) == stopped_at < 4096
        clock.advance(Handler.write_timeout + 1)
        pump(r, lambda: not r.requests)
        assert max(seen) <= Handler.max_write_buffer
        never_reader.close()
    warnings = server_warnings(caplog)
    assert len(warnings) == 1 and "max_write_buffer" in warnings[0].getMessage()


@pytest.mark.threads
@pytest.mark.slow
def test_threading_async_never_reader_is_dropped_after_write_timeout() -> None:
    ended = threading.Event()

    class Handler(servers.StreamRequestHandler):
        write_timeout = 0.3

        async def handle(self) -> None:
            try:
                for _ in range(2048):  # 128 MiB: far more than the kernel buffers
                    self.wfile.write(b"t" * 65536)
                    await self.wfile.drain()
            finally:
                ended.set()

    with in_thread(Handler, daemon_threads=True, block_on_close=False) as server:
        with client(server.server_address) as never_reader:
            try:
                assert ended.wait(3), "write_timeout was not honoured in a thread"
            finally:
                never_reader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        b"\x01\x00\x00\x00\x00\x00\x00\x00")
    assert ended.wait(10)  # the reset unblocked the thread


# ------------------------------------------------------------------------------ slowloris
class Echo(servers.StreamRequestHandler):
    request_timeout = 10.0
    idle_timeout = 300.0
    finished: list[Any] = []

    async def handle(self) -> None:
        try:
            async for line in self.rfile:
                self.wfile.write(line)
        except BaseException as exc:
            type(self).finished.append(type(exc))
            raise


def test_slowloris_dribbling_a_byte_per_second_is_cut_off_at_request_timeout(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="servers")

    class Handler(Echo):
        finished: list[Any] = []

    with on_reactor(Handler) as (server, r, clock):
        slow = client(server.server_address)
        good = client(server.server_address)
        pump(r, lambda: len(r.requests) == 2)
        entry = next(e for e in r.requests
                     if e.client_address == slow.getsockname())
        start = clock.now()
        sent = 0
        for _ in range(30):  # bounded: the cut-off must come after ~request_timeout
            if entry not in r.requests:
                break
            slow.sendall(b"G")
            sent += 1
            pump(r, lambda: (entry.bytes_in or 0) >= sent or entry not in r.requests)
            # Meanwhile the good client on the same loop is served at once.
            good.sendall(b"ping %d\n" % sent)
            reply = Reply(good)
            pump(r, lambda: reply.has(b"\n"))
            assert bytes(reply.data) == b"ping %d\n" % sent
            clock.advance(1.0)
            r.run_once(0)
        assert entry not in r.requests, "the slowloris client was never cut off"
        elapsed = clock.now() - start
        assert Handler.request_timeout <= elapsed <= Handler.request_timeout + 2, elapsed
        assert Handler.finished == [TimeoutError]
        slow_reply = Reply(slow)
        pump(r, slow_reply.ended)
        assert bytes(slow_reply.data) == b""
        good.close()
        slow.close()
    ended = [rec.getMessage() for rec in server_records(caplog, logging.INFO)]
    assert len(ended) == 1 and "request_timeout=" in ended[0], ended
    assert not server_warnings(caplog)


def test_a_slow_but_complete_request_within_request_timeout_is_served() -> None:
    class Handler(Echo):
        finished: list[Any] = []

    with on_reactor(Handler) as (server, r, clock):
        with client(server.server_address) as slow:
            pump(r, lambda: len(r.requests) == 1)
            entry = r.requests[0]
            for i, byte in enumerate(b"hello\n", 1):
                slow.sendall(bytes([byte]))
                pump(r, lambda: (entry.bytes_in or 0) >= i)
                clock.advance(1.5)  # 9 s in all: under request_timeout
                r.run_once(0)
            reply = Reply(slow)
            pump(r, lambda: reply.has(b"\n"))
            assert bytes(reply.data) == b"hello\n"


def test_silent_keep_alive_connection_is_closed_at_idle_timeout() -> None:
    class Handler(Echo):
        finished: list[Any] = []

    with on_reactor(Handler) as (server, r, clock):
        with client(server.server_address) as idle:
            idle.sendall(b"one\n")
            reply = Reply(idle)
            pump(r, lambda: reply.has(b"\n"))
            clock.advance(Handler.idle_timeout - 1)
            for _ in range(5):
                r.run_once(0)
            assert len(r.requests) == 1, "closed before idle_timeout"
            idle.sendall(b"two\n")  # activity: the idle clock starts again
            pump(r, lambda: reply.has(b"two\n"))
            clock.advance(Handler.idle_timeout - 1)
            r.run_once(0)
            assert len(r.requests) == 1
            clock.advance(2)
            pump(r, lambda: not r.requests)
            pump(r, reply.ended)
            assert bytes(reply.data) == b"one\ntwo\n"
    assert Handler.finished == [TimeoutError]


# ------------------------------------------------------------------------------ classic timeout
class ClassicTimeout(servers.StreamRequestHandler):
    timeout = 0.2

    def handle(self) -> None:
        self.wfile.write(b"echo " + self.rfile.readline())


class RecordingServerMixin:
    """handle_error records the exception type, and tells the client (works in a child)."""

    errors: list[Any]

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        self.errors.append((type(exc), client_address))
        with contextlib.suppress(OSError):
            request.sendall(b"error %s\n" % type(exc).__name__.encode())


@pytest.mark.slow
@pytest.mark.threads
@pytest.mark.parametrize("base", [servers.TCPServer, servers.ThreadingTCPServer],
                         ids=["sync", "threading"])
def test_classic_silent_client_meets_timeout_through_the_socket(base: type) -> None:
    errors: list[Any] = []
    server_class = type("S", (RecordingServerMixin, base), {"errors": errors})
    with in_thread(ClassicTimeout, server_class) as server:
        with client(server.server_address) as silent:
            assert silent.recv(100) == b"error TimeoutError\n"
            assert silent.recv(100) == b""
            assert errors == [(TimeoutError, silent.getsockname())]
        with client(server.server_address) as good:  # served as usual afterwards
            good.sendall(b"hi\n")
            assert good.recv(100) == b"echo hi\n"


@needs_fork
@pytest.mark.slow
@pytest.mark.forking
def test_forking_classic_silent_client_meets_timeout_through_the_socket() -> None:
    server_class = type("S", (RecordingServerMixin, servers.ForkingTCPServer), {"errors": []})
    clients = """
        silent = connect()
        report(recv_all(silent).decode())  # the child times out in real time (0.2 s)
        good = connect()
        good.sendall(b"hi\\n")
        report(recv_all(good).decode())
    """
    with on_reactor(ClassicTimeout, server_class) as (server, r, _clock):
        with ClientProcess(clients, server.server_address) as proc:
            assert proc.finish(r) == ["error TimeoutError\n", "echo hi\n"]


# ------------------------------------------------------------------------------ read-ahead
class ClassicLine(servers.StreamRequestHandler):
    timeout = 5  # a bug would block the test, not hang it
    lines: list[bytes] = []

    def handle(self) -> None:
        line = self.rfile.readline()
        type(self).lines.append(line)
        self.wfile.write(b"got " + line)


def test_read_ahead_keeps_the_loop_responsive_while_a_classic_client_dribbles(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="servers")

    class Handler(ClassicLine):
        lines: list[bytes] = []

    with on_reactor(Handler, read_ahead=b"\n", read_ahead_timeout=30.0) as (server, r, clock):
        dribbler = client(server.server_address)
        pump(r, lambda: len(r.requests) == 1)
        held = r.requests[0]
        assert held.stage is reactor.Stage.READING_AHEAD
        for i, piece in enumerate([b"he", b"l", b"l", b"o wor"]):
            dribbler.sendall(piece)
            other = client(server.server_address)
            other.sendall(b"quick %d\n" % i)
            reply = Reply(other)
            pump(r, reply.ended)  # served and closed while the dribbler is still held
            assert bytes(reply.data) == b"got quick %d\n" % i
            other.close()
            assert held in r.requests and held.stage is reactor.Stage.READING_AHEAD
            clock.advance(1)
        dribbler.sendall(b"ld\n")
        reply = Reply(dribbler)
        pump(r, reply.ended)
        assert bytes(reply.data) == b"got hello world\n"
        assert Handler.lines[-1] == b"hello world\n"
        dribbler.close()

        silent = client(server.server_address)
        pump(r, lambda: len(r.requests) == 1)
        clock.advance(29)
        r.run_once(0)
        assert len(r.requests) == 1, "closed before read_ahead_timeout"
        clock.advance(2)
        reply = Reply(silent)
        pump(r, reply.ended)
        assert bytes(reply.data) == b"" and not r.requests
        silent.close()
    assert len(Handler.lines) == 5, "the silent client never reached the handler"
    assert any("read_ahead_timeout" in rec.getMessage() for rec in caplog.records
               if rec.name == "servers")


def test_read_ahead_entries_count_against_max_connections() -> None:
    class Handler(ClassicLine):
        lines: list[bytes] = []

    with on_reactor(Handler, read_ahead=b"\n", max_connections=2) as (server, r, _clock):
        held = [client(server.server_address) for _ in range(2)]
        pump(r, lambda: len(r.requests) == 2)
        late = client(server.server_address)
        late.sendall(b"late\n")
        for _ in range(20):
            r.run_once(0.005)
        assert len(r.requests) == 2 and r.watched_for(server.fileno()) == ""
        held[0].sendall(b"first\n")
        reply = Reply(held[0])
        pump(r, reply.ended)
        late_reply = Reply(late)
        pump(r, late_reply.ended)  # accepted once a slot was free
        assert bytes(late_reply.data) == b"got late\n"
        held[1].sendall(b"second\n")
        for sock in (*held, late):
            sock.close()


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_a_read_ahead_client_holding_part_of_a_request_does_not_spin_the_loop(
        family: str, unix_path: str) -> None:
    class Handler(ClassicLine):
        lines: list[bytes] = []

    address = unix_path if family == "unix" else ("127.0.0.1", 0)
    server_class = servers.UnixStreamServer if family == "unix" else servers.TCPServer
    with on_reactor(Handler, server_class, address, read_ahead=b"\n") as (server, r, clock):
        # EOF after part of a request hands it over at once on TCP (the low-water mark wakes
        # us); on Unix sockets it waits for read_ahead_timeout, as a silent client does.
        for finish in (b" rest\n", None) if family == "tcp" else (b" rest\n",):
            sock = client(server.server_address)
            if family == "tcp":
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"partial")
            pump(r, lambda: len(r.requests) == 1)
            turns(r, 3, 0.01)  # the server has looked at the partial request
            idle_turns = [r.run_once(0) for _ in range(50)]
            assert idle_turns == [0] * 50, "the loop spins on a partial read-ahead request"
            assert r.requests[0].stage is reactor.Stage.READING_AHEAD
            if finish is not None:
                sock.sendall(finish)
            else:
                sock.shutdown(socket.SHUT_WR)  # EOF: the handler gets what there is
            reply = Reply(sock)
            for _ in range(200):
                if reply.ended():
                    break
                clock.advance(server.read_ahead_recheck)
                r.run_once(0.01)
            assert bytes(reply.data) == (b"got partial rest\n" if finish else b"got partial")
            sock.close()


@pytest.mark.slow
@pytest.mark.threads
def test_threading_async_slowloris_is_cut_off_at_request_timeout() -> None:
    outcome: list[Any] = []

    class Handler(servers.StreamRequestHandler):
        request_timeout = 0.5

        async def handle(self) -> None:
            try:
                async for line in self.rfile:
                    self.wfile.write(line)
            except TimeoutError as exc:
                outcome.append(exc)
                raise

    with in_thread(Handler, daemon_threads=True) as server:
        started = time.monotonic()  # before the connection exists: the server's timer starts later
        with client(server.server_address) as slow:
            cut_off = False
            for _ in range(100):  # a byte every 0.05 s, never a full line
                slow.sendall(b"G")
                if select.select([slow], [], [], 0.05)[0]:  # the server closed on us
                    cut_off = slow.recv(10) == b""
                    break
            elapsed = time.monotonic() - started
        assert cut_off, "the dribbling client was never cut off"
        assert 0.5 <= elapsed < 3, elapsed
        with client(server.server_address) as good:
            good.sendall(b"fine\n")
            assert good.recv(10) == b"fine\n"
    assert len(outcome) == 1


@pytest.mark.slow
@pytest.mark.threads
def test_threading_async_silent_keep_alive_is_closed_at_idle_timeout() -> None:
    class Handler(servers.StreamRequestHandler):
        idle_timeout = 0.3

        async def handle(self) -> None:
            async for line in self.rfile:
                self.wfile.write(line)

    with in_thread(Handler) as server:
        with client(server.server_address) as idle:
            # The server's idle wait starts after it has the line, so after this send: from
            # here the close cannot come sooner than idle_timeout (from the reply it can).
            started = time.monotonic()
            idle.sendall(b"one\n")
            assert idle.recv(10) == b"one\n"
            assert idle.recv(10) == b""  # closed by the server, not by our 10 s timeout
            assert 0.3 <= time.monotonic() - started < 3
