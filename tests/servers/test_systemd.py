"""servers.systemd: sockets passed by a service manager (`listen_fds()`, through
systemd-socket-activate itself where installed and through `socket_activate.py`, its stand-in
for port-0 TCP and UDP sockets), and notifications sent to a real NOTIFY_SOCKET (`notify()`,
`Notifier`), with the sender's pid checked as systemd's NotifyAccess=main checks it."""

from __future__ import annotations

import json
import logging
import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lineprocess import LineProcess

import reactor
import servers
from conftest import recv_line
from reactor.testing import FakeClock
from servers import cli, systemd

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = str(Path(__file__).with_name("socket_activate.py"))
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
needs_socket_activate = pytest.mark.skipif(
    SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not installed (Debian: systemd)")
PROTOCOL_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET",
                      "WATCHDOG_USEC", "WATCHDOG_PID")

# Run in the activated process: what listen_fds() found, and what it left in the environment.
REPORT = """
import json, logging, os, sys
logging.basicConfig(format="%(levelname)s %(message)s")
from servers import systemd
found = systemd.listen_fds()
print(json.dumps({
    "sockets": {name: {"fd": s.fileno(), "family": s.family.name, "type": s.type.name,
                       "address": s.getsockname(), "inheritable": os.get_inheritable(s.fileno())}
                for name, s in found.items()},
    "environ": sorted(name for name in os.environ if name.startswith("LISTEN_")),
}))
"""


def child_environ(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in PROTOCOL_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


def activate(passed: list[tuple[int, str | None]], *options: str,
             code: str = REPORT) -> subprocess.CompletedProcess[str]:
    """Run `code` in a process that received `passed` [(fd, name or None)] as 3, 4, ..."""
    specs = [f"{fd}={name}" if name else str(fd) for fd, name in passed]
    return subprocess.run([sys.executable, LAUNCHER, *options, *specs, "--",
                           sys.executable, "-c", code],
                          pass_fds=[fd for fd, _ in passed], capture_output=True, text=True,
                          timeout=20, env=child_environ())


def report_of(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


@pytest.fixture
def four_sockets(tmp_path: Path) -> Iterator[list[socket.socket]]:
    """TCP (listening), UDP, Unix stream (listening) and Unix datagram, bound as a service
    manager binds them."""
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "admin.sock"))
    unix.listen()
    unixgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unixgram.bind(str(tmp_path / "log.sock"))
    sockets = [tcp, udp, unix, unixgram]
    yield sockets
    for sock in sockets:
        sock.close()


# --------------------------------------------------------------------------- listen_fds()
@pytest.mark.slow
def test_listen_fds_gives_each_passed_socket_by_name_with_its_family_and_type(
        four_sockets: list[socket.socket]) -> None:
    names = ["web", "dns", "admin", "log"]
    report = report_of(activate([(s.fileno(), n) for s, n in zip(four_sockets, names)]))
    expected = {
        name: {"fd": fd, "family": sock.family.name, "type": sock.type.name,
               "address": list(a) if isinstance(a := sock.getsockname(), tuple) else a,
               "inheritable": False}  # FD_CLOEXEC set, as sd_listen_fds() does
        for fd, (name, sock) in enumerate(zip(names, four_sockets), start=3)}
    assert report["sockets"] == expected
    assert list(report["sockets"]) == names  # type: ignore[call-overload]
    assert report["environ"] == [], "children must not inherit the LISTEN_* variables"


@pytest.mark.slow
def test_without_names_the_sockets_are_called_fd3_fd4(
        four_sockets: list[socket.socket]) -> None:
    report = report_of(activate([(s.fileno(), None) for s in four_sockets[:2]], "--no-names"))
    assert list(report["sockets"]) == ["fd3", "fd4"]  # type: ignore[call-overload]


@pytest.mark.slow
def test_a_name_given_twice_keys_the_first_socket_and_the_next_by_descriptor(
        four_sockets: list[socket.socket]) -> None:
    """systemd names every socket of a .socket unit after the unit, by default."""
    passed = [(s.fileno(), "web.socket") for s in four_sockets[:2]]
    report = report_of(activate(passed))
    assert list(report["sockets"]) == ["web.socket", "fd4"]  # type: ignore[call-overload]


@pytest.mark.slow
def test_a_descriptor_that_is_not_a_socket_is_skipped_with_a_warning(
        four_sockets: list[socket.socket]) -> None:
    read_end, write_end = os.pipe()
    try:
        result = activate([(read_end, "fifo"), (four_sockets[0].fileno(), "web")])
    finally:
        os.close(read_end)
        os.close(write_end)
    assert list(report_of(result)["sockets"]) == ["web"]  # type: ignore[call-overload]
    assert "WARNING descriptor 3 ('fifo') passed by the service manager is a FIFO, not a " \
           "socket; skipped (it stays open)" in result.stderr


@pytest.mark.slow
def test_a_descriptor_announced_but_not_open_is_a_clear_error() -> None:
    code = ("import os; from servers import systemd\n"
            "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
            "try: systemd.listen_fds()\n"
            "except ValueError as e: print(e, sorted(k for k in os.environ if 'LISTEN' in k))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=20, env=child_environ())
    assert result.stdout == ("LISTEN_FDS=1 announces descriptor 3, which is not open in this "
                             "process (was it closed, or not passed on?) []\n")


@pytest.mark.parametrize("pid", ["parent", "malformed"])
def test_sockets_announced_for_another_process_are_not_taken(
        pid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getppid()) if pid == "parent" else "12ab")
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "web")
    if pid == "parent":
        assert systemd.listen_fds() == {}
    else:
        with pytest.raises(ValueError, match="LISTEN_PID='12ab' is not a positive whole"):
            systemd.listen_fds()
    # cleared either way, as sd_listen_fds(unset_environment=1) does: they were not for us,
    # and must not reach a program we start
    assert not [name for name in os.environ if name.startswith("LISTEN_")]


def test_listen_pid_without_listen_fds_means_no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    assert systemd.listen_fds() == {}
    assert "LISTEN_PID" not in os.environ


@pytest.mark.parametrize(("count", "names", "message"), [
    ("two", None, "LISTEN_FDS='two' is not a positive whole number"),
    ("0", None, "LISTEN_FDS='0' is not a positive whole number"),
    ("1", "web:api", "LISTEN_FDNAMES='web:api' has 2 names for LISTEN_FDS=1 descriptors"),
])
def test_malformed_variables_are_a_clear_error_and_still_cleared(
        count: str, names: str | None, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", count)
    if names is not None:
        monkeypatch.setenv("LISTEN_FDNAMES", names)
    with pytest.raises(ValueError, match=message):
        systemd.listen_fds()
    assert not [name for name in os.environ if name.startswith("LISTEN_")]


def test_without_the_variables_there_are_no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROTOCOL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert systemd.listen_fds() == {}
    assert systemd.take_inherited() == []


def test_socket_from_fd_reads_family_and_type_and_refuses_what_is_not_a_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as original:
        original.bind(("127.0.0.1", 0))
        fd = os.dup(original.fileno())
        os.set_inheritable(fd, True)
        with systemd.socket_from_fd(fd) as sock:
            assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_DGRAM)
            assert sock.getsockname() == original.getsockname()
            assert not os.get_inheritable(fd)
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ValueError, match=f"descriptor {read_end} is a FIFO, not a socket"):
            systemd.socket_from_fd(read_end)
        os.fstat(read_end)  # still open: not ours to close
    finally:
        os.close(read_end)
        os.close(write_end)
    with pytest.raises(ValueError, match=f"descriptor {read_end} is closed, not a socket"):
        systemd.socket_from_fd(read_end)


@pytest.mark.slow
@needs_socket_activate
def test_systemd_socket_activate_passes_sockets_that_listen_fds_takes(tmp_path: Path) -> None:
    """The real tool: it binds, waits for the first client, then execs the program."""
    assert SOCKET_ACTIVATE is not None
    path = str(tmp_path / "web.sock")
    env = child_environ()
    process = subprocess.Popen(
        [SOCKET_ACTIVATE, "-l", path, "--fdname=web", "-E", f"PYTHONPATH={env['PYTHONPATH']}",
         sys.executable, "-c", REPORT],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stderr is not None
        assert process.stderr.readline() == f"Listening on {path} as 3.\n"
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)  # the first client starts the program
            stdout, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
        process.wait()
    report = json.loads(stdout)
    assert report["sockets"] == {"web": {"fd": 3, "family": "AF_UNIX", "type": "SOCK_STREAM",
                                         "address": path, "inheritable": False}}
    assert report["environ"] == []


# --------------------------------------------------------------------------- notifications
class NotifyReceiver:
    """The service manager's end of NOTIFY_SOCKET: a bound datagram socket that also reports
    each sender's pid (SCM_CREDENTIALS, where the platform has it)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.credentials = hasattr(socket, "SO_PASSCRED")
        if self.credentials:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(10)

    def receive(self) -> tuple[str, int | None]:
        """The next message, and its sender's pid (None where it cannot be known)."""
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = None
        for level, kind, payload in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, getattr(socket, "SCM_CREDENTIALS", -1)):
                pid = struct.unpack("3i", payload[:12])[0]
        return data.decode(), pid

    def queued(self) -> list[str]:
        """Every message already waiting, without waiting for more."""
        found = []
        self.sock.setblocking(False)
        try:
            while True:
                found.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return found
        finally:
            self.sock.settimeout(10)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyReceiver]:
    """A NOTIFY_SOCKET in tmp_path, set in this process's environment."""
    for name in PROTOCOL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    path = str(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    receiving = NotifyReceiver(path)
    yield receiving
    receiving.close()


@pytest.fixture
def fake_reactor() -> Iterator[tuple[reactor.Reactor, FakeClock]]:
    clock = FakeClock()
    with reactor.Reactor(clock=clock) as loop:
        yield loop, clock


def test_notify_sends_the_states_in_one_datagram(receiver: NotifyReceiver) -> None:
    assert systemd.notify("READY=1", "STATUS=serving 2 addresses")
    assert receiver.receive() == ("READY=1\nSTATUS=serving 2 addresses",
                                  os.getpid() if receiver.credentials else None)


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"servers-test-{os.getpid()}-{time.monotonic_ns()}"
    receiving = NotifyReceiver("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert receiving.receive()[0] == "READY=1"
    finally:
        receiving.close()


def test_without_notify_socket_nothing_is_sent(receiver: NotifyReceiver,
                                               monkeypatch: pytest.MonkeyPatch,
                                               fake_reactor: tuple[reactor.Reactor, FakeClock]
                                               ) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET")
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    loop, clock = fake_reactor
    notifier = systemd.Notifier(loop)
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert systemd.notify("READY=1") is False
    notifier.ready()
    notifier.stopping()
    clock.advance(10)
    loop.run_once(0)
    assert receiver.queued() == []
    assert loop.statistics()["timers"] == 0


def test_a_missing_notify_socket_is_one_warning_and_never_an_exception(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, logger="servers"):
        assert systemd.notify("READY=1") is False
        assert systemd.notify("WATCHDOG=1") is False
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot notify the service manager at {str(tmp_path / 'gone')!r}: "
        "No such file or directory"]


def test_a_notify_socket_of_another_kind_is_one_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:9999")  # systemd 253+: a VM's host
    with caplog.at_level(logging.WARNING, logger="servers"):
        assert systemd.notify("READY=1") is False
        assert systemd.notify("STOPPING=1") is False
    assert [r.getMessage() for r in caplog.records] == [
        "NOTIFY_SOCKET='vsock:2:9999' is neither a path nor @name; notifications are not sent"]


@pytest.mark.parametrize("state", ["READY", "STATUS=two\nlines"])
def test_a_malformed_state_is_refused(state: str, receiver: NotifyReceiver) -> None:
    with pytest.raises(ValueError, match="a notification is NAME=VALUE on one line"):
        systemd.notify(state)
    assert receiver.queued() == []


def test_notifier_sends_ready_reloading_ready_stopping(
        receiver: NotifyReceiver, fake_reactor: tuple[reactor.Reactor, FakeClock]) -> None:
    notifier = systemd.Notifier(fake_reactor[0])
    assert notifier.enabled and notifier.watchdog_interval is None
    notifier.ready()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.ready(status="reloaded")
    notifier.stopping()
    messages = receiver.queued()
    assert messages[0] == "READY=1"
    reloading, usec = messages[1].split("\n")
    assert reloading == "RELOADING=1" and usec.startswith("MONOTONIC_USEC=")
    assert before <= int(usec.removeprefix("MONOTONIC_USEC=")) <= after
    assert messages[2:] == ["READY=1\nSTATUS=reloaded", "STOPPING=1"]


def test_the_watchdog_pings_every_half_interval_only_while_the_loop_turns(
        receiver: NotifyReceiver, monkeypatch: pytest.MonkeyPatch,
        fake_reactor: tuple[reactor.Reactor, FakeClock]) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    loop, clock = fake_reactor
    notifier = systemd.Notifier(loop)
    assert notifier.watchdog_interval == 2.0
    clock.advance(1.99)
    loop.run_once(0)
    assert receiver.queued() == []
    clock.advance(0.01)
    loop.run_once(0)
    assert receiver.queued() == ["WATCHDOG=1"]
    clock.advance(60)  # a loop stuck in a handler: no turn, no ping
    assert receiver.queued() == []
    loop.run_once(0)  # turning again: one ping, not a burst for the time missed
    loop.run_once(0)
    assert receiver.queued() == ["WATCHDOG=1"]
    notifier.close()
    clock.advance(60)
    loop.run_once(0)
    assert receiver.queued() == [] and loop.statistics()["timers"] == 0


@pytest.mark.parametrize(("usec", "pid"), [("4000000", "1"), ("soon", None), ("0", None)])
def test_the_watchdog_is_off_for_another_pid_or_a_malformed_interval(
        usec: str, pid: str | None, receiver: NotifyReceiver, monkeypatch: pytest.MonkeyPatch,
        fake_reactor: tuple[reactor.Reactor, FakeClock]) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    notifier = systemd.Notifier(fake_reactor[0])
    assert notifier.watchdog_interval is None
    assert repr(notifier) == "<Notifier on, watchdog off>"


@pytest.mark.forking
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_only_the_process_that_made_the_notifier_sends(
        receiver: NotifyReceiver, fake_reactor: tuple[reactor.Reactor, FakeClock]) -> None:
    """systemd's default NotifyAccess=main ignores any other sender: a forked child (a
    ForkingMixIn request, a worker) must not speak for the service."""
    notifier = systemd.Notifier(fake_reactor[0])
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            notifier.ready()
            notifier.stopping()
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert receiver.queued() == []  # the child's sends would be queued by now
    notifier.ready()
    assert receiver.receive() == ("READY=1", os.getpid() if receiver.credentials else None)


def test_listen_fds_is_a_name_of_the_servers_package() -> None:
    assert servers.listen_fds is systemd.listen_fds


# --------------------------------------------------------------------------- the command line
class Running(LineProcess):
    """A process whose stderr is read line by line, each read bounded."""

    def __init__(self, argv: list[str], env: dict[str, str],
                 pass_fds: tuple[int, ...] = ()) -> None:
        super().__init__(argv, cwd=ROOT, env=env, pass_fds=pass_fds)


@pytest.fixture
def running() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*argv: str, env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> Running:
        started.append(Running(list(argv), env, pass_fds))
        return started[-1]

    yield start
    for each in started:
        each.close()


def passed_through(env: dict[str, str]) -> list[str]:
    """systemd-socket-activate gives the program only PATH, HOME, ... and what -E names."""
    names = ["PYTHONPATH", "NOTIFY_SOCKET", "WATCHDOG_USEC"]
    names += [name for name in env if name.startswith("COVERAGE")]
    return [word for name in names if name in env for word in ("-E", f"{name}={env[name]}")]


def messages_until(receiver: NotifyReceiver, wanted: str, pid: int) -> list[str]:
    """Notifications up to and including `wanted`, each checked to come from `pid` (systemd's
    NotifyAccess=main ignores any other sender)."""
    found: list[str] = []
    while not found or found[-1] != wanted:
        message, sender = receiver.receive()
        assert sender in (pid, None), f"{message!r} came from {sender}, not the main process"
        found.append(message)
    return found


@pytest.mark.slow
@needs_socket_activate
def test_the_command_line_serves_systemd_sockets_and_reports_ready_watchdog_stopping(
        running: Callable[..., Running], receiver: NotifyReceiver, tmp_path: Path) -> None:
    assert SOCKET_ACTIVATE is not None
    path = str(tmp_path / "echo.sock")
    env = child_environ(NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="200000")
    run = running(SOCKET_ACTIVATE, "-l", path, "--fdname=echo", *passed_through(env),
                  sys.executable, "-m", "servers", "servers.builtin:Echo",
                  "--bind", "systemd:echo", env=env)
    assert run.line() == f"Listening on {path} as 3."
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(path)  # before the server exists: this connection starts it
        client.sendall(b"early\n")
        assert run.wait_for(r"^serving (.*)$")[1] == \
            f"Echo on unix:{path} from systemd:echo (reactor mode)"
        assert recv_line(client) == b"early\n"
    pid = run.proc.pid  # systemd-socket-activate execs the program in its own process
    before_ready = messages_until(receiver, "READY=1", pid)
    assert set(before_ready[:-1]) <= {"WATCHDOG=1"}
    assert messages_until(receiver, "WATCHDOG=1", pid) == ["WATCHDOG=1"]
    assert run.stop() == 0
    after = messages_until(receiver, "STOPPING=1", pid)
    assert set(after[:-1]) <= {"WATCHDOG=1"}
    assert os.path.exists(path), "the socket file is systemd's, not the server's, to remove"


@pytest.mark.slow
def test_the_command_line_serves_passed_tcp_and_udp_sockets_by_name_and_by_descriptor(
        running: Callable[..., Running], four_sockets: list[socket.socket]) -> None:
    tcp, udp = four_sockets[:2]
    env = child_environ()
    run = running(sys.executable, LAUNCHER, f"{tcp.fileno()}=web", f"{udp.fileno()}=dns", "--",
                  sys.executable, "-m", "servers", "servers.builtin:Echo", "--mode", "threading",
                  "--bind", "systemd:web", "--bind", "fd:4",
                  env=env, pass_fds=(tcp.fileno(), udp.fileno()))
    host, port = tcp.getsockname()
    assert run.wait_for(r"^serving (.*)$")[1] == \
        f"Echo on tcp://{host}:{port} from systemd:web (threading mode)"
    host, port = udp.getsockname()
    assert run.wait_for(r"^serving (.*)$")[1] == \
        f"DatagramEcho on udp://{host}:{port} from fd:4 (threading mode)"
    with socket.create_connection(tcp.getsockname(), timeout=10) as client:
        client.sendall(b"over tcp\n")
        assert recv_line(client) == b"over tcp\n"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(b"over udp", udp.getsockname())
        assert client.recv(100) == b"over udp"
    assert run.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize(("binds", "status", "message"), [
    (["systemd:api"], 2, "error: systemd:api: no socket named 'api' was passed to this "
                         "process (passed: web, log)"),
    (["systemd:web", "fd:3"], 2, "fd:3 and systemd:web are the same socket; bind it once"),
    (["fd:1"], 2, "error: descriptor 1 is a FIFO, not a socket"),
    (["systemd:log"], 1, "cannot listen on systemd:log: "),
])
def test_the_command_line_says_what_is_wrong_with_a_passed_socket(
        binds: list[str], status: int, message: str, tmp_path: Path) -> None:
    web = socket.create_server(("127.0.0.1", 0))
    log = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # bound, never listening
    log.bind(str(tmp_path / "log.sock"))
    args = [arg for bind in binds for arg in ("--bind", bind)]
    try:
        result = subprocess.run(
            [sys.executable, LAUNCHER, f"{web.fileno()}=web", f"{log.fileno()}=log", "--",
             sys.executable, "-m", "servers", "servers.builtin:Echo", *args],
            pass_fds=(web.fileno(), log.fileno()), capture_output=True, text=True, timeout=20,
            env=child_environ())
    finally:
        web.close()
        log.close()
    assert result.returncode == status, result.stderr
    assert message in result.stderr


def test_systemd_binds_without_a_service_manager_say_how_to_get_sockets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROTOCOL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="systemd:web: no sockets were passed to this process; "
                                         "start it from a systemd .socket unit"):
        cli.take_inherited_binds([cli.parse_bind("systemd:web")])


@pytest.mark.parametrize(("family", "kind", "mode", "server_class"), [
    (socket.AF_INET, socket.SOCK_STREAM, "threading", "ThreadingTCPServer"),
    (socket.AF_INET, socket.SOCK_DGRAM, "reactor", "UDPServer"),
    (socket.AF_UNIX, socket.SOCK_STREAM, "forking", "ForkingUnixStreamServer"),
    (socket.AF_UNIX, socket.SOCK_DGRAM, "sync", "UnixDatagramServer"),
])
def test_fd_binds_pick_the_server_class_from_the_socket_and_the_mode(
        family: socket.AddressFamily, kind: socket.SocketKind, mode: str, server_class: str,
        tmp_path: Path) -> None:
    with socket.socket(family, kind) as original:
        original.bind(str(tmp_path / "s") if family == socket.AF_UNIX else ("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            original.listen()
        fd = os.dup(original.fileno())
        handler = "servers.builtin:Echo" if mode == "reactor" else "test_systemd:ClassicEcho"
        parser = cli.build_parser()
        args = parser.parse_args([handler, "--mode", mode, "--bind", f"fd:{fd}"])
        [plan] = cli.make_plans(args, parser.error)
        assert plan.bind.socket is not None
        try:
            assert plan.bind.socket.fileno() == fd
            assert plan.bind.address == original.getsockname()
            assert issubclass(plan.server_class, getattr(servers, server_class))
            assert plan.server_class.__name__ == server_class
        finally:
            plan.bind.socket.close()


class ClassicDatagramEcho(servers.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


class ClassicEcho(servers.StreamRequestHandler):
    """A classic handler with a datagram twin, for the modes that take classic handlers."""

    datagram_handler = ClassicDatagramEcho

    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


@pytest.mark.parametrize(("text", "message"), [
    ("systemd:", "write systemd:NAME with the socket's name"),
    ("fd:three", "write fd:N with N an inherited socket's descriptor number"),
])
def test_malformed_inherited_binds_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cli.parse_bind(text)
