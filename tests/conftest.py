"""Fixtures shared by the whole suite: leak checks, a reactor per selector class, servers run in
a thread with guaranteed shutdown, and temporary Unix socket paths."""

from __future__ import annotations

import os
import selectors
import socket
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import reactor
from reactor.testing import FakeClock

SELECTOR_CLASSES = [
    getattr(selectors, name) for name in
    ("EpollSelector", "PollSelector", "SelectSelector", "KqueueSelector", "DevpollSelector")
    if hasattr(selectors, name)
]


def open_fds() -> set[int]:
    """Descriptors open in this process right now (Linux /proc, else a probe)."""
    if os.path.isdir("/proc/self/fd"):
        # the directory's own descriptor is listed too; it is closed again by the time a
        # leak is described, which filters it out
        return {int(name) for name in os.listdir("/proc/self/fd")}
    return set()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test must end with the threads and descriptors it started with."""
    threads_before = set(threading.enumerate())
    fds_before = open_fds()
    yield
    leaked_threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    for thread in leaked_threads:
        thread.join(timeout=5)
    leaked_threads = [t for t in leaked_threads if t.is_alive()]
    assert not leaked_threads, f"threads left running: {leaked_threads}"
    leaked_fds = open_fds() - fds_before
    if leaked_fds:
        details = {fd: _describe_fd(fd) for fd in leaked_fds}
        details = {fd: d for fd, d in details.items() if d is not None}
        assert not details, f"descriptors leaked: {details}"


def _describe_fd(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None  # closed meanwhile (it was the probe's)


@pytest.fixture(params=SELECTOR_CLASSES, ids=lambda cls: cls.__name__)
def loop(request: pytest.FixtureRequest) -> Iterator[reactor.Reactor]:
    """A reactor over each selector class the platform has; closed after the test."""
    r = reactor.Reactor(request.param())
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test says so."""
    return FakeClock()


@pytest.fixture(params=SELECTOR_CLASSES, ids=lambda cls: cls.__name__)
def fake_loop(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[reactor.Reactor]:
    """A reactor over each selector class whose time moves only by `clock.advance()`."""
    r = reactor.Reactor(request.param(), clock=clock)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of non-blocking sockets, closed after the test."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def unix_path() -> Iterator[str]:
    """A path for a Unix socket in a private temporary directory."""
    with tempfile.TemporaryDirectory(prefix="srv-") as directory:
        yield os.path.join(directory, "sock")


class ServerThread:
    """Run `server.serve_forever()` in a thread; always shut down and closed on exit."""

    def __init__(self, server: Any, poll_interval: float = 0.5) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, args=(poll_interval,),
                                       name=f"serve-{type(server).__name__}")

    def __enter__(self) -> Any:
        self.thread.start()
        return self.server

    def __exit__(self, *exc: object) -> None:
        try:
            self.server.shutdown()
            self.thread.join()
        finally:
            self.server.server_close()


@pytest.fixture
def serving() -> type[ServerThread]:
    return ServerThread


def connect(address: Any, family: int = socket.AF_INET, timeout: float = 10.0) -> socket.socket:
    """A blocking client socket connected to `address`, with a safety timeout."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def recv_line(sock: socket.socket) -> bytes:
    """Read up to and including b"\\n" (or EOF)."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def recv_all(sock: socket.socket) -> bytes:
    """Read until the peer closes its side."""
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)
