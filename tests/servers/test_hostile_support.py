"""Shared helpers of the hostile-client suite (`test_hostile_*.py`); this module has no tests.

Reactor-mode tests drive the loop on the test thread (`pump`), usually with a `FakeClock`, so
a 60-second timeout costs microseconds and nothing waits on the wall clock; the clients live on
the same thread and never block it (`send_pumping`, `Reply`). Threading tests run
`serve_forever()` in a thread (`in_thread`). Forking tests run the loop on the main thread
(since 3.12 `os.fork()` warns when other threads are alive) and their clients in a separate
process (`ClientProcess`): a client socket of the test process would be inherited by every
child, which would then never see the client close.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import reactor
import servers
from handlers.buffers import ReceiveBuffer
from reactor.testing import FakeClock

HOST = "127.0.0.1"
RECV_SIZE = 65536  # the most one recv() of an async reader takes
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
needs_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX")


def pump(r: reactor.Reactor, until: Callable[[], bool], turns: int = 2000,
         wait: float = 0.01) -> None:
    """Run loop turns until `until()` holds (bounded: `turns` turns of at most `wait` s)."""
    for _ in range(turns):
        if until():
            return
        r.run_once(wait)
    assert until(), "the condition was not reached within the turn budget"


def turns(r: reactor.Reactor, count: int, wait: float = 0.0) -> None:
    for _ in range(count):
        r.run_once(wait)


def client(address: Any, timeout: float = 10) -> socket.socket:
    if isinstance(address, (str, bytes)):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
        return sock
    sock = socket.create_connection(address, timeout=timeout)
    # Small writes leave at once (with Nagle, a dribbled byte waits for the delayed ACK).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


class Reply:
    """Bytes received on a client socket while the loop is pumped; `eof` once it ended."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = bytearray()
        self.eof = False
        self.error: OSError | None = None

    def poll(self) -> None:
        while not self.eof and readable(self.sock):
            try:
                chunk = self.sock.recv(RECV_SIZE)
            except OSError as exc:  # ECONNRESET: the server closed with input unread
                self.error, self.eof = exc, True
                return
            if not chunk:
                self.eof = True
            self.data += chunk

    def has(self, end: bytes) -> bool:
        self.poll()
        return self.data.endswith(end) or self.eof

    def ended(self) -> bool:
        self.poll()
        return self.eof

    def at_least(self, size: int) -> bool:
        self.poll()
        return len(self.data) >= size or self.eof


def send_pumping(r: reactor.Reactor, sock: socket.socket, data: bytes,
                 turns: int = 2000) -> bool:
    """Send all of `data` from the test thread without ever blocking the loop it shares.
    Returns False when the server closed the connection first (fine for hostile clients)."""
    view = memoryview(data)
    sock.setblocking(False)
    try:
        for _ in range(turns):
            if not view:
                return True
            try:
                view = view[sock.send(view):]
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                    return False
                raise
            r.run_once(0.01)
        raise AssertionError("could not send the data within the turn budget")
    finally:
        sock.settimeout(10)


@contextlib.contextmanager
def on_reactor(handler: type, server_class: type = servers.TCPServer,
               address: Any = (HOST, 0), clock: Any = None, **attrs: Any
               ) -> Iterator[tuple[Any, reactor.Reactor, FakeClock]]:
    """A server (subclassed with `attrs`) registered on a reactor with a fake clock, driven
    by the test thread. A normal exit requires every request to have ended (empty table and,
    for forking servers, every child reaped); children are killed whatever happens."""
    clock = clock or FakeClock()
    r = reactor.Reactor(clock=clock)
    server = type("HostileServer", (server_class,), attrs)(address, handler)
    try:
        r.register(server)
        yield server, r, clock
        pump(r, lambda: len(r.requests) == 0, turns=3000)
        assert not getattr(server, "active_children", None)
    finally:
        for pid in list(getattr(server, "active_children", None) or ()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        server.server_close()
        r.close()


@contextlib.contextmanager
def in_thread(handler: type, server_class: type = servers.ThreadingTCPServer,
              address: Any = (HOST, 0), **attrs: Any) -> Iterator[Any]:
    """`serve_forever()` in a thread; shut down and closed on exit."""
    server = type("HostileServer", (server_class,), attrs)(address, handler)
    thread = serve_in_thread(server)
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def serve_in_thread(server: Any, poll_interval: float = 0.05) -> threading.Thread:
    """Start `serve_forever()` in a thread and return once its loop has turned (so that
    `server.reactor` exists for `on_loop()`)."""
    turning = threading.Event()
    actions = server.service_actions

    def first_turns() -> None:
        turning.set()
        actions()

    server.service_actions = first_turns  # the loop picks it up when it registers the server
    thread = threading.Thread(target=server.serve_forever, args=(poll_interval,),
                              name="hostile-serve")
    thread.start()
    assert turning.wait(10), "serve_forever() did not start turning"
    return thread


def on_loop(server: Any, fn: Callable[[], Any]) -> Any:
    """Run `fn` on the serving thread between turns and return its result."""
    done = threading.Event()
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        finally:
            done.set()

    server.reactor.call_soon_threadsafe(run)
    assert done.wait(10), "the loop did not run the probe"
    return box[0]


def listening(server: Any, r: reactor.Reactor | None = None) -> bool:
    """Whether the reactor watches the server's listening descriptor (is accepting)."""
    r = r or server.reactor
    listening = "read" in r.watched_for(server.fileno())
    assert listening == server.accepting, (server, r.watched_for(server.fileno()))
    return listening


class TrackingBuffer(ReceiveBuffer):
    """A receive buffer that records the most bytes each instance ever held (`peaks`)."""

    peaks: list[int] = []

    def __init__(self, max_line_length: int, max_size: int) -> None:
        super().__init__(max_line_length, max_size)
        TrackingBuffer.peaks.append(0)
        self.index = len(TrackingBuffer.peaks) - 1

    def feed(self, data: bytes, allowed: int = 0) -> None:
        super().feed(data, allowed)
        peaks = TrackingBuffer.peaks
        peaks[self.index] = max(peaks[self.index], len(self))


def track_input(handler: Any) -> None:
    """Swap an async rfile's buffer for a TrackingBuffer with the same bounds."""
    old = handler.rfile._buffer
    handler.rfile._buffer = TrackingBuffer(old.max_line_length, old.max_size)


def server_records(caplog: pytest.LogCaptureFixture,
                   level: int = logging.WARNING) -> list[logging.LogRecord]:
    return [rec for rec in caplog.records if rec.name == "servers" and rec.levelno >= level]


class PipeLog(logging.Handler):
    """A log handler writing through a pipe, so that records emitted in a forked child reach
    the parent (caplog only sees this process)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.levelname} {record.getMessage()}".replace("\n", " ")
        os.write(self.wfd, text.encode() + b"\n")

    def collect(self) -> list[str]:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.rfd, 65536):
                self.lines.extend(chunk.decode().splitlines())
        return self.lines

    def close(self) -> None:
        if self.rfd >= 0:
            os.close(self.rfd)
            os.close(self.wfd)
            self.rfd = self.wfd = -1
        super().close()


@contextlib.contextmanager
def pipe_log() -> Iterator[PipeLog]:
    log = PipeLog()
    logger = logging.getLogger("servers")
    previous = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    try:
        yield log
    finally:
        logger.removeHandler(log)
        logger.setLevel(previous)
        log.close()


CLIENT_PRELUDE = textwrap.dedent("""
    import json, os, select, socket, sys, time
    ADDRESS = json.loads(sys.argv[1])
    ADDRESS = ADDRESS if isinstance(ADDRESS, str) else tuple(ADDRESS)

    def connect():
        if isinstance(ADDRESS, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(20)
            sock.connect(ADDRESS)
            return sock
        return socket.create_connection(ADDRESS, timeout=20)

    def recv_all(sock):
        data = bytearray()
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        return bytes(data)

    def recv_line(sock):
        data = bytearray()
        while not data.endswith(b"\\n"):
            chunk = sock.recv(1)
            if not chunk:
                break
            data += chunk
        return bytes(data)

    def report(value):
        print("R " + json.dumps(value), flush=True)
""")


class ClientProcess:
    """Clients in another process: runs `code` (after `CLIENT_PRELUDE`) with the server
    address; `finish(r)` pumps the test's reactor until the process exits and returns the
    JSON values it printed with `report()`; `lines` holds what it printed so far."""

    def __init__(self, code: str, address: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT_PRELUDE + textwrap.dedent(code),
             json.dumps(address)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._out = bytearray()

    def poll_lines(self) -> list[Any]:
        assert self.proc.stdout is not None
        with contextlib.suppress(BlockingIOError, TypeError):
            while chunk := os.read(self.proc.stdout.fileno(), 65536):
                self._out += chunk
        complete = bytes(self._out).split(b"\n")[:-1]
        return [json.loads(line[2:]) for line in complete if line.startswith(b"R ")]

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_lines(self, r: reactor.Reactor, count: int, turns: int = 3000) -> list[Any]:
        pump(r, lambda: len(self.poll_lines()) >= count or self.proc.poll() is not None,
             turns=turns)
        lines = self.poll_lines()
        assert len(lines) >= count, self.stderr()
        return lines

    def finish(self, r: reactor.Reactor, turns: int = 3000) -> list[Any]:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        pump(r, lambda: self.proc.poll() is not None, turns=turns)
        lines = self.poll_lines()
        assert self.proc.returncode == 0, self.stderr()
        return lines

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(client still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> ClientProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
