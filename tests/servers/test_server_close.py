"""`server_close()` from any thread, at any time, as the standard library allows it.

A development server's auto-reloader serves in a daemon thread and calls `server_close()` from
the main thread in a `finally` while `serve_forever()` still runs: that must neither raise nor
leave the loop spinning on a closed socket. The reactor's part of the close is handed to the
loop's thread; a loop busy in a classic handler gets `handover_timeout` seconds, after which
the listening socket is closed anyway and the loop finishes its turn first.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import connect, recv_line

import reactor
import servers
from test_hostile_support import needs_fork, needs_unix

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


class ClassicEcho(servers.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class AsyncEcho(servers.StreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.rfile:
            self.wfile.write(line)
            await self.wfile.drain()


def refuses(address: Any) -> bool:
    """Nothing listens at `address` any more."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family) as probe:
        probe.settimeout(5)
        try:
            probe.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            return True
    return False


class Serving:
    """`serve_forever()` in a thread, keeping whatever it raised."""

    def __init__(self, target: Callable[[], None]) -> None:
        self.errors: list[BaseException] = []

        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                self.errors.append(exc)

        self.thread = threading.Thread(target=run, name="serving")
        self.thread.start()

    def join(self) -> None:
        self.thread.join(20)
        assert not self.thread.is_alive(), "serve_forever() did not return"
        assert self.errors == []


def in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, name="closer")
    thread.start()
    return thread


def address_for(kind: str, tmp_path: Path) -> Any:
    return (HOST, 0) if kind == "tcp" else str(tmp_path / "s.sock")


SERVER_CLASSES = {
    ("sync", "tcp"): servers.TCPServer, ("sync", "unix"): servers.UnixStreamServer,
    ("reactor", "tcp"): servers.TCPServer, ("reactor", "unix"): servers.UnixStreamServer,
    ("threading", "tcp"): servers.ThreadingTCPServer,
    ("threading", "unix"): servers.ThreadingUnixStreamServer,
}


@pytest.mark.slow
@pytest.mark.threads
@pytest.mark.parametrize("kind", ["tcp", pytest.param("unix", marks=needs_unix)])
@pytest.mark.parametrize("mode", ["sync", "reactor", "threading"])
def test_server_close_from_another_thread_while_a_request_is_in_flight(
        mode: str, kind: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    handler = AsyncEcho if mode == "reactor" else ClassicEcho
    server = SERVER_CLASSES[mode, kind](address_for(kind, tmp_path), handler)
    address = server.server_address
    serving = Serving(server.serve_forever)
    held = connect(address)
    held.sendall(b"first\n")
    assert recv_line(held) == b"first\n"  # its request is in flight, waiting for more
    closer = in_thread(server.server_close)
    if mode == "sync":
        # The loop is inside the classic handler: server_close() waits handover_timeout,
        # closes the listening socket anyway and returns; the handler finishes its request.
        closer.join(10)
        assert not closer.is_alive() and refuses(address)
        assert serving.thread.is_alive()
        held.sendall(b"second\n")
        assert recv_line(held) == b"second\n"
        held.close()
        serving.join()
    elif mode == "reactor":
        closer.join(10)
        serving.join()  # the loop returned and closed its reactor, and the task with it
        assert held.recv(100) == b""
        held.close()
        assert refuses(address)
    else:
        serving.join()  # the loop is gone; the request's thread goes on serving
        held.sendall(b"second\n")
        assert recv_line(held) == b"second\n"
        held.close()
        closer.join(10)  # block_on_close: server_close() joined the request thread
        assert not closer.is_alive() and refuses(address)
    assert server.reactor is None
    if kind == "unix":
        assert not os.path.exists(address)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err


@pytest.mark.slow
@pytest.mark.forking
@needs_fork
@pytest.mark.parametrize("kind", ["tcp", pytest.param("unix", marks=needs_unix)])
def test_forking_server_close_from_another_thread_while_a_child_serves(
        kind: str, tmp_path: Path) -> None:
    closers: list[threading.Thread] = []

    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:  # two lines: the test keeps a copy of the client socket,
            for _ in range(2):    # so the child would never see end-of-file
                self.wfile.write(self.rfile.readline())

    base = servers.ForkingTCPServer if kind == "tcp" else servers.ForkingUnixStreamServer

    class Server(base):  # type: ignore[valid-type,misc]
        def process_request(self, request: Any, client_address: Any) -> None:
            super().process_request(request, client_address)
            # Only now a second thread: the fork above happened with no other thread alive.
            closers.append(in_thread(self.server_close))

    server = Server(address_for(kind, tmp_path), Handler)
    address = server.server_address
    held = connect(address)  # queued in the backlog until the loop below accepts it
    held.sendall(b"first\n")
    try:
        server.serve_forever()  # returns once the closer has handed the close to the loop
        assert len(closers) == 1
        assert recv_line(held) == b"first\n"  # the child still serves its request
        held.sendall(b"second\n")
        assert recv_line(held) == b"second\n"
        closers[0].join(10)  # block_on_close: server_close() reaped the child
        assert not closers[0].is_alive()
        assert not server.active_children
        assert refuses(address)
    finally:
        held.close()
        for pid in list(server.active_children or ()):
            os.kill(pid, 9)
            os.waitpid(pid, 0)


@pytest.mark.threads
def test_server_close_from_another_thread_leaves_the_other_servers_of_a_shared_reactor(
        ) -> None:
    with reactor.Reactor() as loop:
        stays = servers.TCPServer((HOST, 0), AsyncEcho)
        leaves = servers.TCPServer((HOST, 0), AsyncEcho)
        loop.register(stays)
        loop.register(leaves)
        leaving_fd = leaves.fileno()
        serving = Serving(loop.serve_forever)
        with connect(leaves.server_address) as held:
            held.sendall(b"in flight\n")
            assert recv_line(held) == b"in flight\n"
            leaves.server_close()  # from this thread, while the loop runs in another
            assert refuses(leaves.server_address)
            assert loop.servers == (stays,) and leaves.reactor is None
            held.sendall(b"still served\n")  # a request in flight is not cut off
            assert recv_line(held) == b"still served\n"
        with connect(stays.server_address) as other:
            other.sendall(b"other\n")
            assert recv_line(other) == b"other\n"
        # no registration is left on the closed listener's descriptor: nothing to spin on
        assert loop.call_and_wait(lambda: None)
        assert loop.watched_for(leaving_fd) == ""
        loop.shutdown()
        serving.join()
        stays.server_close()


@pytest.mark.slow
@pytest.mark.threads
def test_a_busy_shared_loop_cannot_reuse_the_closed_listeners_descriptor_number() -> None:
    release = threading.Event()
    entered = threading.Event()

    class Stuck(servers.StreamRequestHandler):
        def handle(self) -> None:  # classic, inline on the shared loop: the loop is busy
            entered.set()
            release.wait(10)

    with reactor.Reactor() as loop:
        loop.handover_timeout = 0.05
        busy = servers.TCPServer((HOST, 0), Stuck)
        leaves = servers.TCPServer((HOST, 0), AsyncEcho)
        loop.register(busy)
        loop.register(leaves)
        number = leaves.fileno()
        serving = Serving(loop.serve_forever)
        stuck_client = connect(busy.server_address)
        assert entered.wait(10)
        leaves.server_close()  # the loop is busy: gives up after handover_timeout
        assert refuses(leaves.server_address)  # closed at once all the same
        os.fstat(number)  # but its number stays taken while the loop may still watch it
        release.set()
        assert loop.call_and_wait(lambda: None)  # after the loop's queued release
        assert loop.servers == (busy,) and leaves.reactor is None
        assert loop.watched_for(number) == ""
        loop.shutdown()
        serving.join()
        stuck_client.close()
        busy.server_close()


# ------------------------------------------------------------------ as a reloader does it
RELOADER_CHILD = textwrap.dedent("""
    import json, os, socket, sys, threading

    import servers
    sys.modules["socketserver"] = servers  # as a user does, before the server code imports it
    import http.server
    import socketserver

    MODE, KIND, PATH = sys.argv[1], sys.argv[2], sys.argv[3]


    class Echo(socketserver.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                self.wfile.write(line)


    class AsyncEcho(socketserver.StreamRequestHandler):
        async def handle(self):
            async for line in self.rfile:
                self.wfile.write(line)


    class OneLine(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.readline())


    class Page(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as browsers hold it

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\\n")

        def log_message(self, *args):
            pass


    class ForkingHTTPServer(socketserver.ForkingMixIn, http.server.HTTPServer):
        pass


    tcp = KIND == "tcp"
    server_class, handler = {
        "sync": (http.server.HTTPServer, Page) if tcp else (socketserver.UnixStreamServer, Echo),
        "reactor": (socketserver.TCPServer if tcp else socketserver.UnixStreamServer, AsyncEcho),
        "threading": (http.server.ThreadingHTTPServer, Page) if tcp else
                     (socketserver.ThreadingUnixStreamServer, Echo),
        "forking": (ForkingHTTPServer, Page) if tcp else
                   (socketserver.ForkingUnixStreamServer, OneLine),
    }[MODE]
    if server_class is socketserver.ThreadingUnixStreamServer:
        server_class.daemon_threads = True  # as ThreadingHTTPServer (and the reloader) do
    fds_before = set(os.listdir("/proc/self/fd"))
    server = server_class(("127.0.0.1", 0) if tcp else PATH, handler)
    address = server.server_address
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()


    def client():
        if tcp:
            return socket.create_connection(address, timeout=10)
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(address)
        return sock


    held = client()
    # The connection stays open with its request in flight, except in forking mode, where
    # server_close() would wait for the child (block_on_close), as the standard library does.
    if handler is Page:
        close = b"Connection: close\\r\\n" if MODE == "forking" else b""
        held.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n" + close + b"\\r\\n")
    else:
        held.sendall(b"ping\\n")
    reply = b""
    while not reply.endswith((b"ok\\n", b"ping\\n")):
        chunk = held.recv(1000)
        assert chunk, reply
        reply += chunk
    report = {}
    try:
        sys.exit(3)  # the reloader saw a changed file
    finally:
        server.server_close()
        try:
            client().close()
            report["refused"] = False
        except (ConnectionRefusedError, FileNotFoundError):
            report["refused"] = True
        held.close()
        serving.join(10)
        for thread in threading.enumerate():  # request threads (daemons) end at EOF
            if thread is not threading.current_thread():
                thread.join(10)
        report["serve_forever_returned"] = not serving.is_alive()
        fds_after = set(os.listdir("/proc/self/fd"))
        report["leaked_fds"] = sorted(fds_after - fds_before, key=int)
        print(json.dumps(report), flush=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tcp", pytest.param("unix", marks=needs_unix)])
@pytest.mark.parametrize("mode", [
    "sync", "reactor", "threading",
    pytest.param("forking", marks=[needs_fork, pytest.mark.forking]),
])
def test_a_reloader_child_exits_with_the_status_it_chose(mode: str, kind: str,
                                                        tmp_path: Path) -> None:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    result = subprocess.run(
        [sys.executable, "-c", RELOADER_CHILD, mode, kind, str(tmp_path / "dev.sock")],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report == {"refused": True, "serve_forever_returned": True, "leaked_fds": []}
    assert not (tmp_path / "dev.sock").exists()
