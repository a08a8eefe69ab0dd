"""Floods against the concurrency bounds (`max_connections`, `ThreadingMixIn.max_threads`,
`ForkingMixIn.max_children`) and accept faults (EMFILE and friends): at a bound the server
stops watching its listening socket (the kernel backlog holds the rest), resumes below it, and
never spins. Helpers: `test_hostile_support.py`."""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

import reactor
import servers
from test_hostile_support import (
    HOST, ClientProcess, Reply, client, in_thread, listening, needs_fork, on_loop, on_reactor,
    pump, readable, server_records, turns)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class AsyncEcho(servers.StreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.rfile:
            self.wfile.write(line)


# ------------------------------------------------------------------------------ max_connections
def test_at_max_connections_the_server_stops_accepting_and_resumes_below() -> None:
    with on_reactor(AsyncEcho, max_connections=3) as (server, r, _clock):
        assert listening(server, r)
        held = [client(server.server_address) for _ in range(3)]
        pump(r, lambda: len(r.requests) == 3)
        assert not listening(server, r), "still watching the listener at the bound"
        assert r.statistics()["requests"] == 3
        late = [client(server.server_address) for _ in range(2)]  # in the kernel backlog
        for sock in late:
            sock.sendall(b"late\n")
        turns(r, 20, 0.005)
        assert len(r.requests) == 3, "a connection over max_connections was accepted"
        assert all(not Reply(sock).has(b"\n") for sock in late)
        for sock in held:  # the held ones are still served
            sock.sendall(b"held\n")
            reply = Reply(sock)
            pump(r, lambda: reply.has(b"\n"))
            assert bytes(reply.data) == b"held\n"
        held[0].close()
        replies = [Reply(sock) for sock in late]
        pump(r, lambda: replies[0].has(b"\n") or replies[1].has(b"\n"))
        assert len(r.requests) == 3 and not listening(server, r)
        held[1].close()
        pump(r, lambda: all(reply.has(b"\n") for reply in replies))
        assert [bytes(reply.data) for reply in replies] == [b"late\n", b"late\n"]
        for sock in (held[2], *late):
            sock.close()
        pump(r, lambda: not r.requests)
        assert listening(server, r), "accepting did not resume below the bound"


def test_a_flood_of_connections_never_takes_more_than_max_connections() -> None:
    peak = 0
    with on_reactor(AsyncEcho, max_connections=5, request_queue_size=64) as (server, r, _c):
        clients = [client(server.server_address) for _ in range(40)]
        for i, sock in enumerate(clients):
            sock.sendall(b"flood %d\n" % i)
        replies = [Reply(sock) for sock in clients]
        pending = set(replies)
        for _ in range(3000):
            peak = max(peak, len(r.requests))
            for reply in [reply for reply in pending if reply.has(b"\n")]:
                reply.sock.close()  # frees a slot for the next one in the backlog
                pending.discard(reply)
            if not pending:
                break
            r.run_once(0.01)
        assert [bytes(reply.data) for reply in replies] == [b"flood %d\n" % i
                                                            for i in range(40)]
    assert peak == 5


# ------------------------------------------------------------------------------ max_threads
class Gate:
    """Counts handlers running at once; each waits for its client's line."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.running = 0
        self.peak = 0
        self.started = 0

    def enter(self) -> None:
        with self.cond:
            self.running += 1
            self.started += 1
            self.peak = max(self.peak, self.running)
            self.cond.notify_all()

    def leave(self) -> None:
        with self.cond:
            self.running -= 1
            self.cond.notify_all()


@pytest.mark.threads
@pytest.mark.parametrize("style", ["classic", "async"])
def test_threads_never_exceed_max_threads_and_accepting_resumes(style: str) -> None:
    gate = Gate()

    class Classic(servers.StreamRequestHandler):
        def handle(self) -> None:
            gate.enter()
            try:
                self.wfile.write(self.rfile.readline())
            finally:
                gate.leave()

    class Async(servers.StreamRequestHandler):
        async def handle(self) -> None:
            gate.enter()
            try:
                self.wfile.write(await self.rfile.readline())
            finally:
                gate.leave()

    handler = Classic if style == "classic" else Async
    with in_thread(handler, max_threads=3, request_queue_size=32) as server:
        clients = [client(server.server_address) for _ in range(10)]
        with gate.cond:
            assert gate.cond.wait_for(lambda: gate.running == 3, 10)
        for _ in range(3):  # several loop turns with 7 connections waiting in the backlog
            state = on_loop(server, lambda: (server.request_dispatch.running, listening(server),
                                             len(server.reactor.requests)))
            assert state == (3, False, 3)
        assert gate.started == 3
        for i, sock in enumerate(clients):
            sock.sendall(b"line %d\n" % i)
        for i, sock in enumerate(clients):
            assert sock.recv(100) == b"line %d\n" % i
            sock.close()
        for _ in range(500):  # each probe is one loop turn; threads report their end
            state = on_loop(server, lambda: (listening(server), len(server.reactor.requests)))
            if state == (True, 0):
                break
        assert state == (True, 0)
    assert gate.peak == 3 and gate.started == 10


# ------------------------------------------------------------------------------ max_children
def _child_count(*others: int) -> int | None:
    """Children of this process (live or zombie) according to the kernel, if it tells, less
    `others` (the client process)."""
    path = f"/proc/self/task/{threading.get_native_id()}/children"
    try:
        with open(path) as file:
            return len(set(map(int, file.read().split())) - set(others))
    except OSError:
        return None


class ChildHandler(servers.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"started %d\n" % os.getpid())
        self.wfile.write(b"done " + self.rfile.readline())


@needs_fork
@pytest.mark.forking
@pytest.mark.slow
def test_children_never_exceed_max_children_and_accepting_resumes() -> None:
    clients = """
        socks = [connect() for _ in range(6)]
        for sock in socks:
            sock.sendall(b"hello\\n")
        report("connected")
        assert sys.stdin.readline() == "go\\n"
        pids = []
        for i, sock in enumerate(socks):
            pids.append(int(recv_line(sock).split()[1]))
            sock.sendall(b"bye %d\\n" % i)
            assert recv_line(sock) == b"done bye %d\\n" % i
            sock.close()
        report(pids)
    """
    with on_reactor(ChildHandler, servers.ForkingTCPServer, max_children=2,
                    request_queue_size=16) as (server, r, _clock):
        with ClientProcess(clients, server.server_address) as proc:
            proc.wait_lines(r, 1)
            pump(r, lambda: len(server.active_children or ()) == 2)
            for _ in range(20):  # 4 connections wait in the backlog: none is taken
                r.run_once(0.01)
                assert len(server.active_children) == 2 and len(r.requests) == 2
                assert not listening(server, r)
                dispatch = server.request_dispatch
                assert (dispatch.kind, dispatch.running, dispatch.has_room()) == (
                    "child", 2, False)
            proc.send("go")
            peak_children = peak_kernel = 0
            for _ in range(3000):
                if proc.proc.poll() is not None:
                    break
                r.run_once(0.01)
                peak_children = max(peak_children, len(server.active_children))
                peak_kernel = max(peak_kernel, _child_count(proc.proc.pid) or 0)
            lines = proc.finish(r)
            pump(r, lambda: not server.active_children)
        assert peak_children == 2 and peak_kernel <= 2
        pids = lines[-1]
        assert len(set(pids)) == 6
        assert listening(server, r)


# ------------------------------------------------------------------------------ accept faults
@pytest.mark.parametrize("code", ["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"])
def test_resource_accept_errors_back_off_log_once_and_recover(
        caplog: pytest.LogCaptureFixture, code: str) -> None:
    """The error is raised by an overridden get_request() (a real client is pending, so the
    listener stays readable): the loop must wait accept_backoff (fake) seconds between tries,
    warn once for the whole episode, and serve the client once accept works again."""
    caplog.set_level(logging.INFO, logger="servers")
    failures = {"left": 5, "calls": 0}

    class Server(servers.TCPServer):
        accept_backoff = 0.5

        def get_request(self) -> Any:
            failures["calls"] += 1
            if failures["left"]:
                failures["left"] -= 1
                raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
            return super().get_request()

    with on_reactor(AsyncEcho, Server) as (server, r, clock):
        sock = client(server.server_address)
        sock.sendall(b"finally\n")
        pump(r, lambda: failures["calls"] == 1)
        for attempt in range(2, 6):
            turns(r, 20)  # no spinning: nothing happens until the back-off ends
            assert failures["calls"] == attempt - 1
            assert not listening(server, r)
            clock.advance(0.5)
            pump(r, lambda: failures["calls"] == attempt)
        clock.advance(0.5)
        reply = Reply(sock)
        pump(r, lambda: reply.has(b"\n"))
        assert bytes(reply.data) == b"finally\n"
        sock.close()
    warnings = server_records(caplog)
    assert len(warnings) == 1, [w.getMessage() for w in warnings]
    assert os.strerror(getattr(errno, code)) in warnings[0].getMessage()


EMFILE_SERVER = textwrap.dedent("""
    import json, logging, os, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    import reactor, servers

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.warnings = []
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                self.warnings.append(record.getMessage())

    records = Records()
    log = logging.getLogger("servers")
    log.addHandler(records)
    log.setLevel(logging.INFO)
    log.propagate = False

    class Echo(servers.StreamRequestHandler):
        async def handle(self):
            async for line in self.rfile:
                self.wfile.write(b"pong " + line)

    failed = []

    class Server(servers.TCPServer):
        request_queue_size = 64
        accept_backoff = 0.05

        def get_request(self):
            try:
                return super().get_request()
            except OSError as exc:
                failed.append(exc.errno)
                raise

    r = reactor.Reactor()
    server = Server(("127.0.0.1", 0), Echo)
    r.register(server)
    turns = [0]
    run_once = r.run_once
    def counted(timeout=None):
        turns[0] += 1
        return run_once(timeout)
    r.run_once = counted

    in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 16
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 3, hard))
    print(json.dumps(server.server_address[1]), flush=True)

    def cpu():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def stats(**extra):
        print(json.dumps(dict(turns=turns[0], failed=len(failed),
                              emfile=failed.count(__import__("errno").EMFILE),
                              warnings=len(records.warnings), requests=len(r.requests),
                              **extra)), flush=True)

    stop = []
    def command():
        line = sys.stdin.readline().split()
        if not line or line[0] == "stop":
            stop.append(True)
        elif line[0] == "stats":
            stats()
        elif line[0] == "measure":
            begin = (turns[0], cpu(), time.monotonic(), len(records.warnings), len(failed))
            def done():
                stats(window_turns=turns[0] - begin[0], window_cpu=cpu() - begin[1],
                      window_wall=time.monotonic() - begin[2],
                      window_warnings=len(records.warnings) - begin[3],
                      window_failed=len(failed) - begin[4])
            r.call_later(float(line[1]), done)
    r.add_reader(sys.stdin.fileno(), command)
    while not stop:
        r.run_once(0.5)
    r.remove_reader(sys.stdin.fileno())
    server.server_close()
    r.close()
""")


class ServerProcess:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", EMFILE_SERVER, ROOT],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def read(self) -> Any:
        assert self.proc.stdout is not None
        ready = select.select([self.proc.stdout], [], [], 15)[0]
        assert ready, "the server process did not answer"
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read() if self.proc.stderr else ""
        return json.loads(line)

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> str:
        assert self.proc.stdin is not None and self.proc.stderr is not None
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        errors = self.proc.stderr.read()
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()
        return errors


@pytest.mark.slow
def test_emfile_does_not_spin_the_loop_warns_once_per_episode_and_recovers() -> None:
    server = ServerProcess()
    clients: list[socket.socket] = []
    try:
        port = server.read()
        for i in range(12):
            sock = socket.create_connection((HOST, port), timeout=10)
            sock.sendall(b"ping %d\n" % i)
            clients.append(sock)
        for _ in range(200):  # bounded: the descriptor table fills within a few turns
            stats = server.ask("stats")
            if stats["emfile"] >= 1:
                break
        assert stats["emfile"] >= 1 and stats["requests"] < 12, stats
        held = stats["requests"]

        window = server.ask("measure 0.5")
        assert window["window_failed"] >= 2, window  # accept was retried ...
        assert window["window_turns"] <= 60, window  # ... after back-offs, not in a spin
        assert window["window_cpu"] <= 0.5 * window["window_wall"], window
        assert window["window_warnings"] == 0 and window["warnings"] == 1, window
        assert window["requests"] == held

        # Free descriptors: close every client that was answered; the pending ones get in.
        answered: dict[int, bytes] = {}
        deadline = time.monotonic() + 20
        while len(answered) < len(clients) and time.monotonic() < deadline:
            pending = [s for i, s in enumerate(clients) if i not in answered]
            for sock in select.select(pending, [], [], 0.5)[0]:
                i = clients.index(sock)
                answered[i] = sock.recv(100)
                sock.close()
        assert answered == {i: b"pong ping %d\n" % i for i in range(12)}
        for _ in range(200):
            stats = server.ask("stats")
            if stats["requests"] == 0:
                break
        assert stats["requests"] == 0
        # Each episode (full table after a successful accept) warned once, not per retry.
        assert stats["warnings"] <= 12 - held + 1 < stats["failed"], stats
    finally:
        for sock in clients:
            sock.close()
        errors = server.close()
    assert server.proc.returncode == 0, errors
    assert "Traceback" not in errors, errors


def test_handle_request_takes_one_async_request_per_call_while_others_wait() -> None:
    """A flood of pending connections does not slip into a handle_request() call while it
    runs its async request to completion: one request per call, as in the standard library
    (or a later call would wait for a request that was already served)."""

    class Handler(servers.StreamRequestHandler):
        async def handle(self) -> None:
            line = await self.rfile.readline()
            for _ in range(5):  # several loop turns, with the listener readable all along
                await reactor.checkpoint()
            self.wfile.write(line)

    server = type("S", (servers.TCPServer,), {"request_queue_size": 16, "timeout": 10})(
        ("127.0.0.1", 0), Handler)
    clients = []
    try:
        clients = [client(server.server_address) for _ in range(4)]
        for i, sock in enumerate(clients):
            sock.sendall(b"req %d\n" % i)
        for served in range(1, 5):
            server.handle_request()
            answered = [sock for sock in clients if readable(sock)]
            assert len(answered) == served
        assert [sock.recv(100) for sock in clients] == [b"req %d\n" % i for i in range(4)]
    finally:
        for sock in clients:
            sock.close()
        server.server_close()
