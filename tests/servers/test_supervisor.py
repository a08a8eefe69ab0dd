"""servers.Supervisor: worker processes, with real processes, sockets and signals.

Tests that need client threads run the supervisor in a subprocess (`supervised.py`, or
`python -m servers`), so that no process forks while threads are alive; the rest run it in
this process with no thread. Everything synchronises on log lines read with a bound, on
connection results and on pidfds; nothing sleeps.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from lineprocess import LineProcess, repo_environ
from test_cli import connect
from conftest import recv_line

import reactor
import servers

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("supervised.py")

pytestmark = [pytest.mark.forking,
              pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")]


# --------------------------------------------------------------------------- helpers
class Program(LineProcess):
    """A subprocess whose stderr is read line by line, each read bounded."""

    def __init__(self, argv: list[str], cwd: Path | None = None,
                 env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()) -> None:
        super().__init__(argv, cwd=cwd, pass_fds=pass_fds,
                         env=repo_environ(PYTHONDONTWRITEBYTECODE="1", **(env or {})))

    def ready_pids(self, count: int) -> list[int]:
        return [int(self.wait_for(r"worker (\d+) ready")[1]) for _ in range(count)]


@pytest.fixture
def program() -> Iterator[Callable[..., Program]]:
    started: list[Program] = []

    def start(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Program:
        started.append(Program([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env))
        return started[-1]

    yield start
    for each in started:
        each.close()


def ask(url: str, data: bytes) -> bytes:
    """One request: a datagram's answer, or a stream's bytes until EOF."""
    with connect(url) as sock:
        if data:  # a Unix socket whose peer has already closed refuses even b"" (EPIPE)
            sock.sendall(data)
        if sock.type == socket.SOCK_DGRAM:
            return sock.recv(65536)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply


def answering_pid(url: str, data: bytes = b"hello\n") -> int:
    reply = ask(url, data)
    match = re.fullmatch(rb"pid (\d+) " + re.escape(data), reply)
    assert match, f"unexpected reply {reply!r}"
    return int(match[1])


def wait_exited(pid: int, timeout: float = 10.0) -> None:
    """Wait for a process that is not our child to end (a pidfd becomes readable)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([pidfd], [], [], timeout)[0], f"process {pid} still runs"
    finally:
        os.close(pidfd)


class Who(servers.StreamRequestHandler):
    async def handle(self) -> None:
        self.wfile.write(b"pid %d\n" % os.getpid())


class ReusePortTCP(servers.TCPServer):
    allow_reuse_port = True


class ReusePortUDP(servers.UDPServer):
    allow_reuse_port = True


# --------------------------------------------------------------------------- in this process
# (the supervisor forks from the test process: these tests start no thread)
def test_arguments_are_checked_with_a_message_saying_what_to_give() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"workers": 0}, "workers must be a whole number >= 1"),
        ({"worker_timeout": 0}, "worker_timeout must be > 0"),
        ({"max_requests": 0}, "max_requests must be >= 1 or None"),
        ({"max_requests_jitter": -1}, "max_requests_jitter must be >= 0"),
        ({"max_start_failures": 0}, "max_start_failures must be >= 1"),
        ({"reuse_port": True}, "set allow_reuse_port = True on TCPServer"),
    ]
    with servers.TCPServer(("127.0.0.1", 0), Who) as server:
        for kwargs, message in cases:
            with pytest.raises(ValueError, match=re.escape(message)):
                servers.Supervisor([server], **kwargs)
        with pytest.raises(ValueError, match="at least one server"):
            servers.Supervisor([])


def test_a_server_registered_on_a_reactor_is_refused(loop: Any) -> None:
    with servers.TCPServer(("127.0.0.1", 0), Who) as server:
        loop.register(server)
        with pytest.raises(ValueError, match="each worker registers them itself"):
            servers.Supervisor([server], workers=1)
        loop.unregister(server)


def test_worker_count_changes_when_idle_never_below_one() -> None:
    with servers.TCPServer(("127.0.0.1", 0), Who) as server:
        supervisor = servers.Supervisor([server], workers=2)
        supervisor.add_worker()
        assert supervisor.workers == 3
        for _ in range(4):
            supervisor.remove_worker()
        assert supervisor.workers == 1
        assert supervisor.pids == ()
        assert repr(supervisor) == "<Supervisor idle workers=1 pids=[]>"


def test_reuse_port_keeps_the_address_with_a_placeholder_that_takes_nothing() -> None:
    with ReusePortTCP(("127.0.0.1", 0), Who) as tcp, \
            ReusePortUDP(("127.0.0.1", 0), servers.DatagramRequestHandler) as udp:
        servers.Supervisor([tcp, udp], workers=2, reuse_port=True)
        # TCP: bound, not listening: a listening one would get its share of connections
        assert tcp.socket.getsockname() == tcp.server_address
        assert tcp.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(tcp.server_address, timeout=5).close()
        # UDP: connected to itself, which keeps it out of the reuse-port group's choice
        assert udp.socket.getsockname() == udp.server_address
        assert udp.socket.getpeername() == udp.server_address
        # the address stays reserved: a socket without SO_REUSEPORT cannot take it
        for kind, address in ((socket.SOCK_STREAM, tcp.server_address),
                              (socket.SOCK_DGRAM, udp.server_address)):
            with socket.socket(socket.AF_INET, kind) as other:
                with pytest.raises(OSError) as info:
                    other.bind(address)
                assert info.value.errno == errno.EADDRINUSE


@pytest.mark.slow
def test_workers_that_keep_failing_to_start_stop_serve_forever_with_the_cause() -> None:
    def fail(servers: Any) -> None:
        raise RuntimeError("cannot open the database (on purpose)")

    with servers.TCPServer(("127.0.0.1", 0), Who) as server:
        supervisor = servers.Supervisor([server], workers=2, worker_setup=fail,
                                        max_start_failures=3)
        with pytest.raises(servers.WorkerStartError) as info:
            supervisor.serve_forever()
    assert str(info.value) == ("3 worker processes in a row died before they were ready; "
                               "the last one: RuntimeError: cannot open the database "
                               "(on purpose)")
    assert (info.value.failures, supervisor.pids) == (3, ())


def test_shutdown_from_a_signal_handler_stops_the_workers_and_restores_signals() -> None:
    def tell_the_supervisor(servers: Any) -> None:  # runs in the worker
        os.kill(os.getppid(), signal.SIGUSR1)

    before = {signum: signal.getsignal(signum) for signum in (
        signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)}
    with servers.TCPServer(("127.0.0.1", 0), Who) as server:
        supervisor = servers.Supervisor([server], workers=1, worker_setup=tell_the_supervisor)
        previous = signal.signal(signal.SIGUSR1, lambda *_: supervisor.shutdown())
        try:
            supervisor.serve_forever()
        finally:
            signal.signal(signal.SIGUSR1, previous)
    assert (supervisor.pids, supervisor.forced_by) == ((), None)
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_shutdown_before_serve_forever_makes_it_return_at_once() -> None:
    with servers.TCPServer(("127.0.0.1", 0), Who) as server:
        supervisor = servers.Supervisor([server], workers=1)
        supervisor.shutdown()
        supervisor.serve_forever()
        assert supervisor.pids == ()


@pytest.mark.slow
@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "polled-exits"])
def test_reload_then_shutdown_from_signal_handlers(pidfds: bool, monkeypatch: Any,
                                                   caplog: Any) -> None:
    if not pidfds:
        monkeypatch.setattr("servers.processes._open_pidfd", lambda pid: -1)
    calls: list[int] = []

    def tell_the_supervisor(servers: Any) -> None:  # runs in each new worker
        os.kill(os.getppid(), signal.SIGUSR1)

    with servers.TCPServer(("127.0.0.1", 0), Who) as server:
        supervisor = servers.Supervisor([server], workers=1, worker_setup=tell_the_supervisor)

        def on_usr1(*_: Any) -> None:  # the first worker asks for a reload, the second stops
            calls.append(signal.SIGUSR1)
            (supervisor.reload if len(calls) == 1 else supervisor.shutdown)()

        previous = signal.signal(signal.SIGUSR1, on_usr1)
        try:
            with caplog.at_level("INFO", logger="servers"):
                supervisor.serve_forever()
        finally:
            signal.signal(signal.SIGUSR1, previous)
    assert len(calls) == 2
    assert "reloading: starting 1 new workers" in caplog.text
    started = re.findall(r"worker (\d+) started", caplog.text)
    assert len(set(started)) == 2  # the first and its replacement, both stopped gracefully
    for pid in started:
        assert re.search(rf"worker {pid} stopped \(exit status 0\)", caplog.text)
    assert supervisor.pids == ()


def test_an_error_in_the_supervisors_loop_kills_and_reaps_every_worker(caplog: Any) -> None:
    with servers.TCPServer(("127.0.0.1", 0), Who) as server:
        supervisor = servers.Supervisor([server], workers=2)

        class RunAgain(logging.Filter):  # a bug in a callback of the supervisor's loop
            def filter(self, record: logging.LogRecord) -> bool:
                if record.msg == "worker %d ready":
                    supervisor.serve_forever()  # raises: it is already running
                return True

        log = logging.getLogger("servers")
        log.addFilter(bug := RunAgain())
        try:
            with caplog.at_level("INFO", logger="servers"), \
                    pytest.raises(reactor.ReactorError, match="already running"):
                supervisor.serve_forever()
        finally:
            log.removeFilter(bug)
    assert supervisor.pids == ()
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # every worker was reaped


def test_fork_failures_count_as_start_failures(monkeypatch: Any) -> None:
    def no_fork() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)  # a real EAGAIN needs a process limit
    with servers.TCPServer(("127.0.0.1", 0), Who) as server:
        supervisor = servers.Supervisor([server], workers=1, max_start_failures=2)
        with pytest.raises(servers.WorkerStartError, match=r"the last one: fork\(\) failed: "
                           r"\[Errno 11\] Resource temporarily unavailable"):
            supervisor.serve_forever()


# --------------------------------------------------------------------------- in a subprocess
@pytest.mark.slow
def test_workers_serve_tcp_udp_unix_and_unixgram(program: Any, tmp_path: Path) -> None:
    run = program("--bind", "tcp", "--bind", "udp", "--bind", f"unix:{tmp_path / 's'}",
                  "--bind", f"unixgram:{tmp_path / 'd'}", "--workers", "2")
    urls = [run.wait_for(r"^listening (\S+)")[1] for _ in range(4)]
    pids = run.ready_pids(2)
    assert run.proc.pid not in pids
    for url in urls:
        assert answering_pid(url) in pids  # a worker answered, not the supervisor
    run.proc.send_signal(signal.SIGUSR1)
    assert run.wait_for(r"^pids (.*)")[1] == str(sorted(pids))
    assert run.stop() == 0
    run.wait_for(r"^returned forced_by=None")
    assert not (tmp_path / "s").exists() and not (tmp_path / "d").exists()


@pytest.mark.slow
def test_a_worker_at_its_bound_leaves_new_connections_to_the_others(program: Any) -> None:
    run = program("--bind", "tcp", "--workers", "2", "--max-connections", "1")
    url = run.wait_for(r"^listening (\S+)")[1]
    pids = run.ready_pids(2)
    with connect(url) as busy:
        busy.sendall(b"slow\n")
        assert recv_line(busy) == b"waiting\n"  # its worker is at max_connections=1
        other = answering_pid(url)  # so only the other worker can accept this one
        busy.sendall(b"go on\n")
        first = int(re.fullmatch(rb"pid (\d+) slow\n", recv_line(busy))[1])
    assert {first, other} == set(pids)
    assert run.stop() == 0


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_log_says_how_it_ended(program: Any) -> None:
    run = program("--bind", "tcp", "--workers", "1")
    url = run.wait_for(r"^listening (\S+)")[1]
    [pid] = run.ready_pids(1)
    os.kill(pid, signal.SIGKILL)
    run.wait_for(rf"worker {pid} exited unexpectedly \(killed by SIGKILL\); starting a "
                 "replacement")
    [replacement] = run.ready_pids(1)
    assert answering_pid(url) == replacement != pid
    assert run.stop() == 0


@pytest.mark.slow
def test_a_worker_whose_loop_is_blocked_is_killed_and_replaced(program: Any) -> None:
    run = program("--bind", "tcp", "--workers", "1", "--classic", "--worker-timeout", "1")
    url = run.wait_for(r"^listening (\S+)")[1]
    [pid] = run.ready_pids(1)
    with connect(url) as stuck:  # a classic handler inline: it blocks the worker's loop
        stuck.sendall(b"no end of line")
        run.wait_for(rf"worker {pid} sent no heartbeat for 1 s \(worker_timeout\): its loop "
                     "is blocked; killing it")
        run.wait_for(rf"worker {pid} killed: no heartbeat for 1 s \(killed by SIGKILL\); "
                     "starting a replacement")
        [replacement] = run.ready_pids(1)
        assert stuck.recv(100) == b""  # its connection went with it
    assert answering_pid(url) == replacement
    assert run.stop() == 0


@pytest.mark.slow
def test_workers_that_cannot_start_end_the_program_with_the_cause(program: Any,
                                                                  tmp_path: Path) -> None:
    (tmp_path / "broken").touch()
    run = program("--bind", "tcp", "--workers", "1", "--fail-if", str(tmp_path / "broken"))
    run.wait_for(r"worker \d+ failed to start \(exit status 3\): RuntimeError: cannot open "
                 r"the database \(on purpose\)")
    run.wait_for(r"^error: 5 worker processes in a row died before they were ready; the last "
                 r"one: RuntimeError: cannot open the database \(on purpose\)")
    assert run.proc.wait(timeout=10) == 1


@pytest.mark.slow
def test_a_worker_that_does_not_become_ready_in_time_is_a_failed_start(program: Any) -> None:
    run = program("--bind", "tcp", "--workers", "1", "--hang-start", "--worker-timeout", "0.5",
                  "--max-start-failures", "1")
    pid = int(run.wait_for(r"worker (\d+) was not ready within 0.5 s \(worker_timeout\); "
                           "killing it")[1])
    run.wait_for(rf"worker {pid} failed to start \(killed by SIGKILL\): not ready within 0.5 s")
    run.wait_for(r"^error: 1 worker processes in a row died before they were ready; the last "
                 "one: not ready within 0.5 s")
    assert run.proc.wait(timeout=10) == 1


@pytest.mark.slow
def test_a_reload_whose_workers_cannot_start_is_abandoned(program: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    run = program("--bind", "tcp", "--workers", "1", "--fail-if", str(broken),
                  "--max-start-failures", "2")
    url = run.wait_for(r"^listening (\S+)")[1]
    [old] = run.ready_pids(1)
    broken.touch()  # as if a deployment broke the code: new workers cannot start
    run.proc.send_signal(signal.SIGHUP)
    run.wait_for(r"reload abandoned: 2 new workers in a row failed to start \(the last: "
                 r"RuntimeError: cannot open the database \(on purpose\)\); the old workers "
                 "keep serving")
    assert answering_pid(url) == old
    broken.unlink()  # fixed: the next reload goes through
    run.proc.send_signal(signal.SIGHUP)
    [new] = run.ready_pids(1)
    run.wait_for(rf"worker {old} stopped \(exit status 0\)")
    assert answering_pid(url) == new
    assert run.stop() == 0


@pytest.mark.slow
def test_max_requests_recycles_a_worker_once_its_replacement_is_ready(program: Any) -> None:
    run = program("--bind", "tcp", "--workers", "1", "--max-requests", "3")
    url = run.wait_for(r"^listening (\S+)")[1]
    [first] = run.ready_pids(1)
    assert [answering_pid(url) for _ in range(3)] == [first] * 3
    run.wait_for(rf"worker {first} reached max_requests; starting its replacement")
    [second] = run.ready_pids(1)
    # the replacement was ready before the old worker stopped accepting
    run.wait_for(rf"worker {first}: stopping")
    run.wait_for(rf"worker {first} stopped \(exit status 0\)")
    assert answering_pid(url) == second != first
    assert run.stop() == 0


@pytest.mark.slow
def test_sigterm_lets_a_request_in_flight_finish_then_exits_0(program: Any) -> None:
    run = program("--bind", "tcp", "--workers", "1")
    url = run.wait_for(r"^listening (\S+)")[1]
    [pid] = run.ready_pids(1)
    with connect(url) as slow:
        slow.sendall(b"slow\n")
        assert recv_line(slow) == b"waiting\n"  # the request is in flight in the worker
        run.proc.send_signal(signal.SIGTERM)
        run.wait_for(rf"worker {pid}: stopping; draining 1 request in flight")
        slow.sendall(b"go on\n")
        reply = b""
        while chunk := slow.recv(100):
            reply += chunk
    assert reply == b"pid %d slow\n" % pid
    run.wait_for(rf"worker {pid} stopped \(exit status 0\)")
    assert run.proc.wait(timeout=10) == 0


@pytest.mark.slow
def test_a_second_sigterm_stops_the_workers_at_once(program: Any) -> None:
    run = program("--bind", "tcp", "--workers", "1")
    url = run.wait_for(r"^listening (\S+)")[1]
    [pid] = run.ready_pids(1)
    with connect(url) as slow:
        slow.sendall(b"slow\n")
        assert recv_line(slow) == b"waiting\n"
        run.proc.send_signal(signal.SIGTERM)
        run.wait_for(rf"worker {pid}: stopping")
        run.proc.send_signal(signal.SIGTERM)
        run.wait_for(r"SIGTERM again: stopping the workers at once")
        run.wait_for(rf"worker {pid} stopped \(exit status 131\)")  # 128 + SIGQUIT
        assert slow.recv(100) == b""
    run.wait_for(rf"^returned forced_by={int(signal.SIGTERM)}")
    assert run.proc.wait(timeout=10) == 0


@pytest.mark.slow
def test_sigttin_adds_a_worker_and_sigttou_stops_the_oldest(program: Any) -> None:
    run = program("--bind", "tcp", "--workers", "1")
    url = run.wait_for(r"^listening (\S+)")[1]
    [first] = run.ready_pids(1)
    run.proc.send_signal(signal.SIGTTIN)
    run.wait_for(r"workers: 2 wanted")
    [second] = run.ready_pids(1)
    run.proc.send_signal(signal.SIGTTOU)
    run.wait_for(r"workers: 1 wanted")
    run.wait_for(rf"worker {first} stopped \(exit status 0\)")
    assert answering_pid(url) == second
    run.proc.send_signal(signal.SIGTTOU)
    run.wait_for(r"keeping the last worker")
    assert run.stop() == 0


@pytest.mark.slow
def test_workers_stop_when_the_supervisor_is_killed(program: Any) -> None:
    run = program("--bind", "tcp", "--workers", "2", "--worker-timeout", "2")
    pids = run.ready_pids(2)
    run.proc.kill()
    run.proc.wait()
    for pid in pids:  # their next heartbeat finds the pipe broken: they stop
        wait_exited(pid)


@pytest.mark.slow
@pytest.mark.threads
@pytest.mark.timeout(60)
def test_sighup_reload_under_load_refuses_and_cuts_nothing(program: Any) -> None:
    run = program("--bind", "tcp", "--workers", "2")
    url = run.wait_for(r"^listening (\S+)")[1]
    generations = [set(run.ready_pids(2))]
    answered: list[int] = []
    failures: list[str] = []
    progress = threading.Condition()
    stop = threading.Event()

    def hammer() -> None:
        number = 0
        while not stop.is_set() and number < 20_000:
            data = b"request %d\n" % number
            number += 1
            try:
                pid = answering_pid(url, data)
            except (OSError, AssertionError) as exc:
                pid = None
                failures.append(f"{data!r}: {exc!r}")
            with progress:
                if pid is not None:
                    answered.append(pid)
                progress.notify_all()

    def wait_for_answers(count: int) -> None:
        with progress:
            assert progress.wait_for(lambda: len(answered) >= count or failures, timeout=20)

    clients = [threading.Thread(target=hammer) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        # a slow request in flight on an old worker: it must finish after the reloads
        slow = connect(url)
        slow.sendall(b"slow\n")
        assert recv_line(slow) == b"waiting\n"
        for _ in range(2):
            wait_for_answers(700 * len(generations))
            run.proc.send_signal(signal.SIGHUP)
            match = run.wait_for(r"reload: new workers \[(\d+), (\d+)\] ready; stopping the "
                                 r"old ones \[(\d+), (\d+)\]")
            assert {int(match[3]), int(match[4])} == generations[-1]
            generations.append({int(match[1]), int(match[2])})
        slow.sendall(b"go on\n")
        with slow:
            assert recv_line(slow).startswith(b"pid ")
        wait_for_answers(700 * len(generations))
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert failures == []
    for generation in generations:
        assert generation & set(answered), f"no request served by {generation}"
    assert run.stop() == 0


@pytest.mark.slow
def test_reuse_port_gives_each_worker_its_own_socket(program: Any) -> None:
    run = program("--bind", "tcp", "--bind", "udp", "--workers", "2", "--reuse-port")
    tcp_url = run.wait_for(r"^listening (\S+)")[1]
    udp_url = run.wait_for(r"^listening (\S+)")[1]
    pids = run.ready_pids(2)
    port = int(tcp_url.rpartition(":")[2])
    if os.path.exists("/proc/net/tcp"):  # two listening sockets: the workers', not ours
        listening = [line for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                     if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"]
        assert len(listening) == 2
    # fresh connections and source ports spread by hash over the workers' sockets; one
    # queued to a socket nobody accepts on would time out
    tcp_pids = [answering_pid(tcp_url) for _ in range(100)]
    udp_pids = [answering_pid(udp_url, b"datagram") for _ in range(100)]
    assert set(tcp_pids) == set(udp_pids) == set(pids)
    assert run.stop() == 0


@pytest.mark.slow
def test_under_systemd_the_supervisor_sends_every_notification_itself(program: Any,
                                                                      tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(path)
        manager.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # the sender's pid
        manager.settimeout(10)
        run = program("--bind", "tcp", "--workers", "2",
                      env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
        senders: set[int] = set()

        def receive() -> str:
            data, ancillary, _, _ = manager.recvmsg(4096, socket.CMSG_SPACE(12))
            senders.update(int.from_bytes(payload[:4], sys.byteorder)
                           for _, _, payload in ancillary)
            return data.decode()

        def next_state() -> str:  # the next notification other than a watchdog ping
            while (state := receive()) == "WATCHDOG=1":
                pass
            return state

        assert next_state() == "READY=1"
        while receive() != "WATCHDOG=1":  # pings every half WATCHDOG_USEC, from its loop
            pass
        run.ready_pids(2)  # both were logged before READY=1 was sent
        run.proc.send_signal(signal.SIGHUP)
        assert next_state().startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert next_state() == "READY=1"
        run.wait_for(r"reload: new workers \[\d+, \d+\] ready")
        assert run.stop() == 0
        assert next_state() == "STOPPING=1"
        assert senders == {run.proc.pid}  # the supervisor, as NotifyAccess=main requires


@pytest.mark.slow
def test_max_requests_jitter_gives_each_worker_a_limit_in_the_range(program: Any) -> None:
    run = program("--bind", "tcp", "--workers", "1", "--max-requests", "2",
                  "--max-requests-jitter", "3")
    url = run.wait_for(r"^listening (\S+)")[1]
    [pid] = run.ready_pids(1)
    for _ in range(5):  # max_requests + max_requests_jitter: the worker has retired by now
        answering_pid(url)
    limit = int(run.wait_for(rf"worker {pid}: max_requests=(\d+) reached")[1])
    assert 2 <= limit <= 5
    assert run.stop() == 0


@pytest.mark.slow
def test_a_threading_server_in_a_worker_drains_its_threads(program: Any) -> None:
    run = program("--bind", "tcp", "--workers", "1", "--mode", "threading")
    url = run.wait_for(r"^listening (\S+)")[1]
    [pid] = run.ready_pids(1)
    with connect(url) as slow:
        slow.sendall(b"slow\n")
        assert recv_line(slow) == b"waiting\n"  # in a thread of the worker
        run.proc.send_signal(signal.SIGTERM)
        run.wait_for(rf"worker {pid}: stopping; draining 1 request in flight")
        slow.sendall(b"go on\n")
        assert recv_line(slow) == b"pid %d slow\n" % pid
    run.wait_for(rf"worker {pid} stopped \(exit status 0\)")
    assert run.proc.wait(timeout=10) == 0


@pytest.mark.slow
def test_a_forking_server_in_a_worker_has_its_children_cut_off_at_the_deadline(
        program: Any) -> None:
    run = program("--bind", "tcp", "--workers", "1", "--mode", "forking",
                  "--shutdown-timeout", "0.3")
    url = run.wait_for(r"^listening (\S+)")[1]
    [pid] = run.ready_pids(1)
    with connect(url) as slow:
        slow.sendall(b"slow\n")
        assert recv_line(slow) == b"waiting\n"  # in a child of the worker
        run.proc.send_signal(signal.SIGTERM)
        run.wait_for(rf"worker {pid}: cutting off 1 requests still running in threads or "
                     "children")
        assert slow.recv(100) == b""
    run.wait_for(rf"worker {pid} stopped \(exit status 0\)")
    assert run.proc.wait(timeout=10) == 0


@pytest.mark.slow
def test_a_worker_that_never_finishes_draining_is_killed_after_the_grace_period(
        program: Any) -> None:
    run = program("--bind", "tcp", "--workers", "1", "--shutdown-timeout", "0.2",
                  "--worker-timeout", "0.5")
    url = run.wait_for(r"^listening (\S+)")[1]
    [pid] = run.ready_pids(1)
    with connect(url) as stubborn:  # its handler swallows the cancellation
        stubborn.sendall(b"stubborn\n")
        assert recv_line(stubborn) == b"waiting\n"
        run.proc.send_signal(signal.SIGTERM)
        run.wait_for(rf"worker {pid} still runs 0.7 s after SIGTERM; killing it")
        run.wait_for(rf"worker {pid} killed: still running 0.7 s after SIGTERM \(killed by "
                     r"SIGKILL\)")
    assert run.proc.wait(timeout=10) == 0


@pytest.mark.slow
def test_shutdown_from_another_thread_returns_once_every_worker_has_stopped(
        program: Any) -> None:
    run = program("--bind", "tcp", "--workers", "2")
    pids = run.ready_pids(2)
    run.proc.send_signal(signal.SIGUSR2)  # a thread calls supervisor.shutdown()
    run.wait_for(r"^shutdown returned$")
    stopped = {int(m[1]) for line in run.seen if (m := re.search(r"worker (\d+) stopped", line))}
    assert stopped == set(pids)  # both were logged before shutdown() returned
    assert run.proc.wait(timeout=10) == 0


# --------------------------------------------------------------------------- the command line
HANDLER_V1 = """
import os
import servers

with open("imported-by", "a") as log:  # which processes import this module
    log.write(f"{os.getpid()}\\n")


class Hello(servers.StreamRequestHandler):
    async def handle(self) -> None:
        self.wfile.write(b"v1 from %d\\n" % os.getpid())
"""


def command(*args: str, cwd: Path | None = None) -> Program:
    return Program([sys.executable, "-m", "servers", *args], cwd=cwd)


@pytest.mark.slow
def test_cli_workers_import_the_handler_themselves_so_a_reload_deploys_new_code(
        tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(HANDLER_V1)
    run = command("hello:Hello", "--bind", "tcp://127.0.0.1:0", "--bind",
                  f"unix:{tmp_path / 'hello.sock'}", "--workers", "2", "--log-level", "info",
                  cwd=tmp_path)
    try:
        tcp = run.wait_for(r"^serving Hello on (tcp://127.0.0.1:\d+) \(reactor mode, 2 "
                           r"workers\)$")[1]
        assert not tcp.endswith(":0")  # the real port
        unix = run.wait_for(r"^serving Hello on (unix:\S+) ")[1]
        old = set(run.ready_pids(2))
        for url in (tcp, unix):
            assert re.fullmatch(rb"v1 from (\d+)\n", ask(url, b""))
        (tmp_path / "hello.py").write_text(HANDLER_V1.replace("v1", "version 2"))
        run.proc.send_signal(signal.SIGHUP)
        run.wait_for(r"reload: new workers \[\d+, \d+\] ready; stopping the old ones")
        for _ in old:  # until then the old workers may still accept (and serve v1)
            run.wait_for(r"worker \d+ stopped \(exit status 0\)")
        reply = ask(tcp, b"")
        assert reply.startswith(b"version 2 from ")
        assert int(reply.split()[-1]) not in old
        assert run.stop() == 0
        importers = {int(pid) for pid in (tmp_path / "imported-by").read_text().split()}
        assert run.proc.pid not in importers  # only workers (and a checking child) imported it
        assert old <= importers
        assert not (tmp_path / "hello.sock").exists()
    finally:
        run.close()


@pytest.mark.slow
def test_cli_reuse_port_and_max_requests(tmp_path: Path) -> None:
    run = command("servers.builtin:Echo", "--bind", "tcp://127.0.0.1:0", "--bind",
                  "udp://127.0.0.1:0", "--workers", "1", "--reuse-port", "--max-requests", "2",
                  "--log-level", "info")
    try:
        tcp = run.wait_for(r"^serving Echo on (\S+) \(reactor mode, 1 workers\)")[1]
        udp = run.wait_for(r"^serving DatagramEcho on (\S+) ")[1]
        [pid] = run.ready_pids(1)
        assert ask(tcp, b"one\n") == b"one\n"
        assert ask(udp, b"two") == b"two"
        run.wait_for(rf"worker {pid} reached max_requests; starting its replacement")
        run.wait_for(rf"worker {pid} stopped \(exit status 0\)")
        assert ask(tcp, b"three\n") == b"three\n"
        assert run.stop(signal.SIGINT) == 0
    finally:
        run.close()


@pytest.mark.parametrize(("args", "message"), [
    (["--reuse-port"], "--reuse-port applies with --workers N"),
    (["--workers", "2", "--max-requests-jitter", "3"],
     "--max-requests-jitter applies with --max-requests"),
    (["--workers", "0"], "write a whole number >= 1, not '0'"),
    (["--workers", "2", "--worker-timeout", "0"], "write a number of seconds > 0"),
])
def test_cli_worker_options_are_checked(args: list[str], message: str, capsys: Any) -> None:
    from servers import cli
    with pytest.raises(SystemExit) as info:
        cli.main(["servers.builtin:Echo", "--bind", "tcp://127.0.0.1:0", *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_cli_workers_with_a_handler_that_cannot_load_bind_nothing(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('broken on import')\n")
    for spec, status, text in (("nosuch:Handler", 2, "no module named 'nosuch'"),
                               ("broken:Handler", 1, "RuntimeError: broken on import")):
        run = command(spec, "--bind", "tcp://127.0.0.1:0", "--workers", "2", cwd=tmp_path)
        try:
            run.wait_for(re.escape(text))
            assert run.proc.wait(timeout=10) == status
            assert not any(line.startswith("serving") for line in run.seen)
        finally:
            run.close()


CHANGES_IN_WORKERS = """
import signal
import servers

if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:  # in a worker (it ignores SIGHUP)
    class Changed(servers.StreamRequestHandler):
        def handle(self) -> None:  # now a plain def: --mode reactor refuses it
            pass
else:  # in the child that checks the arguments
    class Changed(servers.StreamRequestHandler):
        async def handle(self) -> None:
            pass
"""


@pytest.mark.slow
def test_cli_workers_that_cannot_load_the_handler_end_with_the_cause(tmp_path: Path) -> None:
    (tmp_path / "changed.py").write_text(CHANGES_IN_WORKERS)
    run = command("changed:Changed", "--bind", "tcp://127.0.0.1:0", "--workers", "1",
                  "--mode", "reactor", cwd=tmp_path)
    try:
        run.wait_for(r"^serving Changed on ")
        run.wait_for(r"error: 5 worker processes in a row died before they were ready; the "
                     r"last one: ValueError: Changed.handle is a plain def")
        assert run.proc.wait(timeout=10) == 1
    finally:
        run.close()


@pytest.mark.slow
def test_cli_workers_on_an_address_in_use_exit_1(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = command("servers.builtin:Echo", "--bind", f"unix:{tmp_path / 'e.sock'}",
                      "--bind", f"tcp://127.0.0.1:{port}", "--workers", "2")
        try:
            run.wait_for(rf"error: cannot listen on tcp://127.0.0.1:{port}: .*Address already "
                         "in use")
            assert run.proc.wait(timeout=10) == 1
        finally:
            run.close()
    assert not (tmp_path / "e.sock").exists()  # the address bound first was released


@pytest.mark.slow
def test_cli_workers_serve_sockets_passed_by_a_service_manager() -> None:
    with socket.create_server(("127.0.0.1", 0)) as tcp, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        launcher = str(Path(__file__).with_name("socket_activate.py"))
        run = Program([sys.executable, launcher, f"{tcp.fileno()}=echo",
                       f"{udp.fileno()}=echo", "--", sys.executable, "-m", "servers",
                       "servers.builtin:Echo", "--bind", "systemd:echo", "--workers", "2",
                       "--log-level", "info"], pass_fds=(tcp.fileno(), udp.fileno()))
        try:
            port = tcp.getsockname()[1]
            assert run.wait_for(r"^serving Echo on (\S+) ")[1] == f"tcp://127.0.0.1:{port}"
            udp_url = run.wait_for(r"^serving DatagramEcho on (\S+) \(reactor mode, 2 "
                                   r"workers\)")[1]
            run.ready_pids(2)
            assert ask(f"tcp://127.0.0.1:{port}", b"passed\n") == b"passed\n"
            assert ask(udp_url, b"datagram") == b"datagram"
            run.proc.send_signal(signal.SIGHUP)  # the passed sockets stay: no refusal
            run.wait_for(r"reload: new workers \[\d+, \d+\] ready")
            assert ask(f"tcp://127.0.0.1:{port}", b"again\n") == b"again\n"
            assert run.stop() == 0
        finally:
            run.close()
