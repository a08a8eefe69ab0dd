"""`python -m servers`: argument checking in-process, serving in a real subprocess.

Subprocess tests synchronise on the lines the command prints to stderr (the real addresses
at start, log lines when stopping) and on sockets; they never sleep.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lineprocess import LineProcess

import servers
from servers import builtin, cli

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- addresses
@pytest.mark.parametrize(("text", "kind", "address"), [
    ("tcp://127.0.0.1:9000", "tcp", ("127.0.0.1", 9000)),
    ("udp://0.0.0.0:0", "udp", ("0.0.0.0", 0)),
    ("tcp://localhost:65535", "tcp", ("localhost", 65535)),
    ("tcp://[::1]:9000", "tcp", ("::1", 9000)),
    ("udp://[fe80::1%lo]:53", "udp", ("fe80::1%lo", 53)),
    ("unix:/tmp/a.sock", "unix", "/tmp/a.sock"),
    ("unix:relative.sock", "unix", "relative.sock"),
    ("unix:///tmp/a.sock", "unix", "/tmp/a.sock"),
    ("unixgram:/tmp/b.sock", "unixgram", "/tmp/b.sock"),
    ("unix:@name", "unix", "\0name"),
])
def test_parse_bind_accepts(text: str, kind: str, address: Any) -> None:
    bind = cli.parse_bind(text)
    assert (bind.url, bind.kind, bind.address) == (text, kind, address)
    assert bind.datagram == (kind in ("udp", "unixgram"))


@pytest.mark.parametrize(("text", "advice"), [
    ("http://127.0.0.1:80", "write tcp://HOST:PORT, udp://HOST:PORT, unix:PATH or unixgram:PATH"),
    ("tcp:127.0.0.1:80", "write tcp://127.0.0.1:80 (with //)"),
    ("127.0.0.1:9000", "write tcp://127.0.0.1:9000 or udp://127.0.0.1:9000"),
    ("/tmp/x.sock", "write unix:/tmp/x.sock"),
    ("tcp://127.0.0.1", "write tcp://127.0.0.1:PORT"),
    ("tcp://:9000", "tcp://127.0.0.1:9000 for this machine only, or tcp://0.0.0.0:9000"),
    ("tcp://::1:9000", "put IPv6 addresses in brackets: tcp://[::1]:9000"),
    ("tcp://[::1]9000", "write tcp://[IPV6]:PORT"),
    ("tcp://127.0.0.1:http", "not a number from 0 to 65535"),
    ("udp://127.0.0.1:70000", "not a number from 0 to 65535"),
    ("unix:", "unix: needs a path"),
])
def test_parse_bind_says_what_to_write_instead(text: str, advice: str) -> None:
    with pytest.raises(ValueError, match=re.escape(advice)):
        cli.parse_bind(text)


# --------------------------------------------------------------------------- handlers
def test_load_handler_finds_classes_nested_ones_and_the_stdlib_kind() -> None:
    assert cli.load_handler("servers.builtin:Echo") is builtin.Echo
    assert cli.load_handler("servers:StreamRequestHandler") is servers.StreamRequestHandler
    assert cli.load_handler("http.server:SimpleHTTPRequestHandler").__name__ == \
        "SimpleHTTPRequestHandler"


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path for test modules (removed from sys.modules afterwards)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_load_handler_reaches_dotted_names(module_dir: Path) -> None:
    (module_dir / "nested_handlers.py").write_text(textwrap.dedent("""
        import servers
        class Outer:
            class Inner(servers.BaseRequestHandler):
                pass
    """))
    assert cli.load_handler("nested_handlers:Outer.Inner").__qualname__ == "Outer.Inner"


@pytest.mark.parametrize(("spec", "advice"), [
    ("Echo", "write the handler as MODULE:CLASS, e.g. servers.builtin:Echo"),
    ("servers.builtin:", "write the handler as MODULE:CLASS"),
    ("no_such_module_xyz:Echo", "no module named 'no_such_module_xyz'"),
    ("servers.no_such:Echo", "no module named 'servers.no_such'"),
    ("servers.builtin:Ecko", "handler classes there: DatagramDaytime, DatagramDiscard, "
     "DatagramEcho, DatagramStatus, Daytime, Discard, Echo, Status"),
    ("servers.builtin:daytime", "servers.builtin:daytime is not a request handler class"),
    ("servers.builtin:MAX_DATAGRAM_REPLY_BYTES", "is not a request handler class"),
    ("socket:socket", "is not a request handler class"),
    ("myhandlers.py:Echo", "write a module name, not a file: myhandlers:Echo"),
    ("lib/myhandlers.py:Echo", "lib.myhandlers:Echo"),
])
def test_load_handler_says_what_to_write_instead(spec: str, advice: str) -> None:
    with pytest.raises(ValueError, match=re.escape(advice)):
        cli.load_handler(spec)


def test_a_module_whose_own_import_fails_shows_its_real_error(module_dir: Path) -> None:
    (module_dir / "broken_handlers.py").write_text("import no_such_dependency_xyz\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        cli.load_handler("broken_handlers:Echo")


def test_a_stream_handler_serves_datagrams_only_through_its_declared_counterpart() -> None:
    udp = cli.parse_bind("udp://127.0.0.1:0")
    tcp = cli.parse_bind("tcp://127.0.0.1:0")
    assert cli.handler_for(builtin.Echo, udp) is builtin.DatagramEcho
    assert cli.handler_for(builtin.Echo, tcp) is builtin.Echo

    class Shout(builtin.Echo):  # inherits datagram_handler, which would silently not shout
        pass

    with pytest.raises(ValueError, match="Shout is a stream handler and cannot serve udp://"):
        cli.handler_for(Shout, udp)
    with pytest.raises(ValueError, match="DatagramEcho is a datagram handler"):
        cli.handler_for(builtin.DatagramEcho, tcp)
    assert cli.handler_for(servers.BaseRequestHandler, udp) is servers.BaseRequestHandler


# --------------------------------------------------------------------------- server classes
@pytest.mark.parametrize(("mode", "kind", "expected"), [
    ("reactor", "tcp", servers.TCPServer),
    ("sync", "udp", servers.UDPServer),
    ("reactor", "unix", servers.UnixStreamServer),
    ("sync", "unixgram", servers.UnixDatagramServer),
    ("threading", "tcp", servers.ThreadingTCPServer),
    ("threading", "udp", servers.ThreadingUDPServer),
    ("threading", "unix", servers.ThreadingUnixStreamServer),
    ("threading", "unixgram", servers.ThreadingUnixDatagramServer),
    ("forking", "tcp", servers.ForkingTCPServer),
    ("forking", "udp", servers.ForkingUDPServer),
    ("forking", "unix", servers.ForkingUnixStreamServer),
    ("forking", "unixgram", servers.ForkingUnixDatagramServer),
])
def test_each_mode_and_address_kind_maps_to_the_library_class(mode: str, kind: str,
                                                               expected: type) -> None:
    made = cli.server_class_for(mode, kind, {"max_connections": 7, "shutdown_timeout": 1.5})
    assert issubclass(made, expected) and made is not expected
    assert made.__name__ == expected.__name__
    assert (made.max_connections, made.shutdown_timeout) == (7, 1.5)
    assert (expected.max_connections, expected.shutdown_timeout) == (4096, 30.0)
    assert made.allow_reuse_address is (kind == "tcp")


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    return int(exit_info.value.code or 0), capsys.readouterr().err


def test_help_shows_examples_and_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "python -m servers servers.builtin:Echo --bind" in out
    for mode in cli.MODES:
        assert f"\n  {mode} " in out


@pytest.mark.parametrize(("argv", "advice"), [
    (["servers.builtin:Echo"], "give at least one address to serve on, e.g. --bind"),
    (["servers.builtin:Echo", "--bind", "127.0.0.1:9"], "write tcp://127.0.0.1:9 or udp://"),
    (["Echo", "--bind", "tcp://127.0.0.1:0"], "write the handler as MODULE:CLASS"),
    (["servers:StreamRequestHandler", "--mode", "reactor", "--bind", "tcp://127.0.0.1:0"],
     "StreamRequestHandler.handle is a plain def: on the reactor it would run inline"),
    (["servers.builtin:Echo", "--mode", "sync", "--bind", "tcp://127.0.0.1:0"],
     "Echo.handle is async def: it runs as a task on the reactor"),
    (["servers:StreamRequestHandler", "--bind", "udp://127.0.0.1:0"],
     "StreamRequestHandler is a stream handler and cannot serve udp://127.0.0.1:0"),
    (["servers.builtin:DatagramEcho", "--bind", "unix:/tmp/x"],
     "DatagramEcho is a datagram handler and cannot serve unix:/tmp/x"),
    (["servers.builtin:Echo", "--max-threads", "4", "--bind", "tcp://127.0.0.1:0"],
     "--max-threads applies to --mode threading, not reactor"),
    (["servers.builtin:Echo", "--mode", "threading", "--max-children", "4",
      "--bind", "tcp://127.0.0.1:0"], "--max-children applies to --mode forking"),
    (["servers.builtin:Echo", "--read-ahead", "\\n", "--bind", "tcp://127.0.0.1:0"],
     "--read-ahead applies to classic (def handle) handlers"),
    (["servers:StreamRequestHandler", "--read-ahead", "", "--bind", "tcp://127.0.0.1:0"],
     "the terminator cannot be empty"),
    (["servers:StreamRequestHandler", "--read-ahead", "\\x", "--bind", "tcp://127.0.0.1:0"],
     "write the terminator with backslash escapes, e.g. '\\n'"),
    (["servers.builtin:Echo", "--max-connections", "0", "--bind", "tcp://127.0.0.1:0"],
     "write a whole number >= 1 or 'none', not '0'"),
    (["servers.builtin:Echo", "--mode", "forking", "--max-children", "none",
      "--bind", "tcp://127.0.0.1:0"], "write a whole number >= 1"),
    (["servers.builtin:Echo", "--timeout", "soon", "--bind", "tcp://127.0.0.1:0"],
     "write a number of seconds, not 'soon'"),
    (["servers.builtin:Echo", "--timeout", "0", "--bind", "tcp://127.0.0.1:0"],
     "write a number of seconds > 0, or 'none'"),
    (["servers.builtin:Echo", "--shutdown-timeout", "-1", "--bind", "tcp://127.0.0.1:0"],
     "write a number of seconds >= 0, not '-1'"),
    (["servers.builtin:Echo", "--mode", "fast", "--bind", "tcp://127.0.0.1:0"],
     "invalid choice: 'fast'"),
])
def test_bad_arguments_exit_2_with_one_line_that_says_what_to_write(
        argv: list[str], advice: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_main(argv, capsys)
    assert status == 2
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and advice in error_lines[0], err


def test_a_mode_the_platform_lacks_is_refused(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "_server_bases", dict)  # as where os.fork is missing
    status, err = run_main(["servers.builtin:Echo", "--mode", "forking",
                            "--bind", "tcp://127.0.0.1:0"], capsys)
    assert status == 2 and "--mode forking with tcp addresses needs os.fork()" in err


def test_check_prints_the_plan_with_default_modes(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    path = tmp_path / "dgram"
    assert cli.main(["servers.builtin:Echo", "--check", "--bind", "tcp://127.0.0.1:0",
                     "--bind", f"unixgram:{path}"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "would serve Echo on tcp://127.0.0.1:0 (reactor mode)",
        f"would serve DatagramEcho on unixgram:{path} (reactor mode)",
    ]
    assert not path.exists()  # bound, then released at once
    assert cli.main(["servers:StreamRequestHandler", "--check", "-b", "tcp://127.0.0.1:0"]) == 0
    assert capsys.readouterr().err == \
        "would serve StreamRequestHandler on tcp://127.0.0.1:0 (threading mode)\n"


def test_options_become_attributes_of_this_runs_classes_only() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["servers:StreamRequestHandler", "--mode", "sync",
                              "--bind", "tcp://127.0.0.1:0", "--max-connections", "none",
                              "--timeout", "2.5", "--shutdown-timeout", "0",
                              "--read-ahead", "\\r\\n\\r\\n"])
    [plan] = cli.make_plans(args, parser.error)
    assert plan.server_class.max_connections is None
    assert plan.server_class.shutdown_timeout == 0.0
    assert plan.server_class.read_ahead == b"\r\n\r\n"
    assert plan.handler_class.timeout == 2.5
    assert issubclass(plan.handler_class, servers.StreamRequestHandler)
    assert plan.handler_class.__name__ == "StreamRequestHandler"
    assert servers.StreamRequestHandler.timeout is None
    assert servers.TCPServer.read_ahead is None and servers.TCPServer.max_connections == 4096


def test_options_not_given_leave_the_library_defaults() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["servers.builtin:Echo", "--bind", "tcp://127.0.0.1:0"])
    [plan] = cli.make_plans(args, parser.error)
    assert plan.handler_class is builtin.Echo
    assert plan.server_class.max_connections == servers.TCPServer.max_connections
    assert "max_connections" not in vars(plan.server_class)


# --------------------------------------------------------------------------- in a subprocess
class Command(LineProcess):
    """`python -m servers ...` in a subprocess; reads its stderr line by line with a bound."""

    def __init__(self, *args: str, cwd: Path | None = None) -> None:
        super().__init__([sys.executable, "-m", "servers", *args], cwd=cwd)

    def serving(self, count: int) -> list[str]:
        """The URLs of the first `count` 'serving ...' lines."""
        return [self.wait_for(r"^serving \S+ on (\S+) \(")[1] for _ in range(count)]

    def threads(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^Threads:\s+(\d+)", status, re.M)[1])


@pytest.fixture
def command() -> Iterator[Any]:
    started: list[Command] = []

    def start(*args: str, cwd: Path | None = None) -> Command:
        started.append(Command(*args, cwd=cwd))
        return started[-1]

    yield start
    for each in started:
        each.close()


def connect(url: str) -> socket.socket:
    """A client socket for a URL the command printed (datagram ones bound, to get replies)."""
    scheme, _, rest = url.partition(":")
    if scheme in ("unix", "unixgram"):
        path = "\0" + rest[1:] if rest.startswith("@") else rest
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_DGRAM if scheme == "unixgram" else socket.SOCK_STREAM)
        if scheme == "unixgram":
            sock.bind("")  # autobind: an address the server can reply to
        address: Any = path
    else:
        host, _, port = rest[2:].rpartition(":")
        host = host.strip("[]")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM)
        address = (host, int(port))
    sock.settimeout(10)
    sock.connect(address)
    return sock


def ask(url: str, data: bytes) -> bytes:
    """Send `data`; return the reply (a datagram, or a stream's bytes until EOF)."""
    with connect(url) as sock:
        sock.sendall(data)
        if sock.type == socket.SOCK_DGRAM:
            return sock.recv(65536)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply


@pytest.mark.slow
def test_builtin_echo_on_four_kinds_of_address_in_one_thread(command, tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    run = command("servers.builtin:Echo", "--bind", "tcp://127.0.0.1:0",
                  "--bind", "udp://127.0.0.1:0", "--bind", f"unix:{path}",
                  "--bind", f"unixgram:{tmp_path / 'echo.dgram'}")
    urls = run.serving(4)
    assert urls[0].startswith("tcp://127.0.0.1:") and not urls[0].endswith(":0")
    assert urls[2:] == [f"unix:{path}", f"unixgram:{tmp_path / 'echo.dgram'}"]
    for url in urls:
        assert ask(url, b"hello\nworld\n") == b"hello\nworld\n"
    assert run.threads() == 1
    assert run.stop() == 0
    assert not path.exists() and not (tmp_path / "echo.dgram").exists()


@pytest.mark.slow
def test_ipv6_literal(command) -> None:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    run = command("servers.builtin:Echo", "--bind", "tcp://[::1]:0")
    [url] = run.serving(1)
    assert url.startswith("tcp://[::1]:")
    assert ask(url, b"six\n") == b"six\n"
    assert run.stop(signal.SIGINT) == 0


USER_HANDLERS = """
import servers

class Shout(servers.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line.upper())
"""


@pytest.mark.slow
@pytest.mark.threads
def test_a_users_classic_handler_over_tcp_and_unix_from_the_current_directory(
        command, tmp_path: Path) -> None:
    (tmp_path / "myhandlers.py").write_text(USER_HANDLERS)
    run = command("myhandlers:Shout", "--bind", "tcp://127.0.0.1:0", "--bind", "unix:shout.sock",
                  cwd=tmp_path)
    assert run.line().endswith("(threading mode)")
    tcp = re.search(r"on (\S+)", run.seen[0])[1]
    [unix] = run.serving(1)
    assert unix == "unix:shout.sock"
    assert ask(tcp, b"hi\n") == b"HI\n"
    with connect(f"unix:{tmp_path / 'shout.sock'}") as held:
        held.sendall(b"held open\n")
        assert held.recv(100) == b"HELD OPEN\n"
        assert ask(tcp, b"still served\n") == b"STILL SERVED\n"  # another thread serves it
    assert run.stop(signal.SIGINT) == 0
    assert not (tmp_path / "shout.sock").exists()


@pytest.mark.slow
@pytest.mark.threads
def test_a_standard_library_handler_serves_http(command, tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello from a file\n")
    run = command("http.server:SimpleHTTPRequestHandler", "--bind", "tcp://127.0.0.1:0",
                  cwd=tmp_path)
    [url] = run.serving(1)
    assert run.seen[-1].endswith("(threading mode)")
    with connect(url) as client:
        client.sendall(b"GET /hello.txt HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.0 200 ") and reply.endswith(b"\r\n\r\nhello from a file\n")
    assert run.stop(signal.SIGINT) == 0


@pytest.mark.slow
def test_stop_drains_requests_in_flight_then_exits_0(command) -> None:
    run = command("servers.builtin:Echo", "--bind", "tcp://127.0.0.1:0", "--log-level", "info")
    [url] = run.serving(1)
    with connect(url) as held:
        held.sendall(b"before\n")
        assert held.recv(100) == b"before\n"
        run.proc.send_signal(signal.SIGTERM)
        run.wait_for(r"^stopping \(SIGTERM\): no new connections; draining 1 request for "
                     r"up to 30 s; signal again \(or Ctrl-C\) to stop now$")
        with connect(url) as late:  # the kernel may queue it; the server never serves it
            late.sendall(b"too late\n")
            held.sendall(b"during the drain\n")
            assert held.recv(100) == b"during the drain\n"
            held.close()
            assert run.proc.wait(timeout=10) == 0
            try:
                assert late.recv(100) == b""
            except ConnectionResetError:
                pass


@pytest.mark.slow
def test_a_second_signal_stops_at_once(command) -> None:
    run = command("servers.builtin:Echo", "--bind", "tcp://127.0.0.1:0", "--log-level", "info")
    [url] = run.serving(1)
    with connect(url) as held:
        held.sendall(b"x\n")
        assert held.recv(100) == b"x\n"
        run.proc.send_signal(signal.SIGINT)
        run.wait_for("draining 1 request for")
        assert run.stop(signal.SIGTERM) == 128 + signal.SIGTERM
    assert "second signal: stopping without waiting" in run.rest()


@pytest.mark.slow
@pytest.mark.threads
def test_threads_still_running_at_the_deadline_are_cut_off(command, tmp_path: Path) -> None:
    (tmp_path / "myhandlers.py").write_text(USER_HANDLERS)
    run = command("myhandlers:Shout", "--bind", "tcp://127.0.0.1:0", "--shutdown-timeout",
                  "0.2", "--log-level", "info", cwd=tmp_path)
    [url] = run.serving(1)
    with connect(url) as held:
        held.sendall(b"idle after this\n")
        assert held.recv(100) == b"IDLE AFTER THIS\n"
        assert run.stop() == 0
        assert held.recv(100) == b""  # its thread's socket was shut down
    assert re.search(r"cutting off the request from 127\.0\.0\.1:\d+ \(in a thread\): the "
                     r"drain deadline \(0\.2 s\) passed", run.rest())


@pytest.mark.slow
@pytest.mark.threads
def test_a_second_signal_cuts_off_threads_at_once(command, tmp_path: Path) -> None:
    (tmp_path / "myhandlers.py").write_text(USER_HANDLERS)
    run = command("myhandlers:Shout", "--bind", "tcp://127.0.0.1:0", "--log-level", "info",
                  cwd=tmp_path)
    [url] = run.serving(1)
    with connect(url) as held:
        held.sendall(b"x\n")
        assert held.recv(100) == b"X\n"
        run.proc.send_signal(signal.SIGTERM)
        run.wait_for("draining 1 request for up to 30 s")  # the drain has begun
        assert run.stop(signal.SIGTERM) == 128 + signal.SIGTERM
        assert held.recv(100) == b""
    assert re.search(r"cutting off the request from \S+ \(in a thread\): a second signal",
                     run.rest())


@pytest.mark.slow
@pytest.mark.forking
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forking_mode_serves_in_children_and_cuts_off_the_idle_ones(command,
                                                                    tmp_path: Path) -> None:
    (tmp_path / "myhandlers.py").write_text(USER_HANDLERS)
    run = command("myhandlers:Shout", "--mode", "forking", "--max-children", "2",
                  "--shutdown-timeout", "0.2", "--log-level", "info",
                  "--bind", "tcp://127.0.0.1:0", cwd=tmp_path)
    [url] = run.serving(1)
    assert ask(url, b"child\n") == b"CHILD\n"
    with connect(url) as held:
        held.sendall(b"held\n")
        assert held.recv(100) == b"HELD\n"
        assert run.stop(signal.SIGINT) == 0
        assert held.recv(100) == b""  # the child got SIGTERM at the deadline
    # the held one, and the first one too if it has not been reaped yet
    assert re.search(r"cutting off the request from \S+ \(in child \d+\): the drain "
                     r"deadline", run.rest())


CLASSIC_ONE_LINE = """
import servers

class OneLine(servers.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline().upper())
"""


@pytest.mark.slow
def test_sync_mode_with_read_ahead_is_not_stalled_by_a_dribbling_client(
        command, tmp_path: Path) -> None:
    (tmp_path / "oneline.py").write_text(CLASSIC_ONE_LINE)
    run = command("oneline:OneLine", "--mode", "sync", "--read-ahead", "\\n",
                  "--bind", "tcp://127.0.0.1:0", cwd=tmp_path)
    [url] = run.serving(1)
    with connect(url) as dribbler:
        dribbler.sendall(b"no end of line yet")
        assert ask(url, b"complete\n") == b"COMPLETE\n"
        dribbler.sendall(b"\n")
        assert dribbler.recv(100) == b"NO END OF LINE YET\n"
    assert run.stop() == 0


@pytest.mark.slow
def test_an_address_in_use_exits_1_and_names_it(command) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        url = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        run = command("servers.builtin:Echo", "--bind", "udp://127.0.0.1:0", "--bind", url)
        assert run.proc.wait(timeout=10) == 1
    assert f"python -m servers: error: cannot listen on {url}: " in run.rest()


@pytest.mark.slow
def test_python_dash_m_servers_help_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "servers", "--help"], capture_output=True,
                            text=True, timeout=20, cwd=REPO)
    assert result.returncode == 0 and "examples:" in result.stdout


# --------------------------------------------------------------------------- stopping, errors
def other_mode_handler(mode: str, tmp_path: Path) -> str:
    """The handler spec to serve in `mode`: the built-in async Echo on the reactor, a classic
    line upper-caser elsewhere."""
    if mode == "reactor":
        return "servers.builtin:Echo"
    (tmp_path / "myhandlers.py").write_text(USER_HANDLERS)
    return "myhandlers:Shout"


@pytest.mark.slow
@pytest.mark.parametrize("mode", [
    "sync", "reactor", pytest.param("threading", marks=pytest.mark.threads),
    pytest.param("forking", marks=[pytest.mark.forking, pytest.mark.skipif(
        not hasattr(os, "fork"), reason="needs os.fork")]),
])
def test_a_stop_says_at_once_what_it_drains_and_how_to_stop_now(command, tmp_path: Path,
                                                                mode: str) -> None:
    run = command(other_mode_handler(mode, tmp_path), "--mode", mode,
                  "--bind", "tcp://127.0.0.1:0", cwd=tmp_path)  # the default log level
    [url] = run.serving(1)
    with contextlib.ExitStack() as clients:
        # Idle keep-alive clients: their requests stay in flight. In forking mode the child
        # may answer before the parent has put its request in the table; a second client
        # served proves that the first one is there (the second may not be yet).
        count = 2 if mode == "forking" else 1
        for _ in range(count):
            held = clients.enter_context(connect(url))
            held.sendall(b"x\n")
            assert held.recv(100).lower() == b"x\n"
        run.proc.send_signal(signal.SIGINT)
        # At once, even in sync mode, where the loop is inside the classic handler.
        drained = "(1 request|2 requests)" if mode == "forking" else "1 request"
        assert re.fullmatch(rf"stopping \(SIGINT\): no new connections; draining {drained} "
                            r"for up to 30 s; Ctrl-C again to stop now", run.line()), run.seen
        held.sendall(b"still served\n")
        assert held.recv(100).lower() == b"still served\n"
    assert run.proc.wait(timeout=10) == 0  # the clients left: the drain is over
    assert run.rest() == ""


@pytest.mark.slow
@pytest.mark.threads
def test_threads_cut_off_at_the_deadline_are_one_line_each_and_do_not_hold_the_exit(
        command, tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(textwrap.dedent("""
        import threading
        import servers

        class Slow(servers.StreamRequestHandler):
            def handle(self):
                line = self.rfile.readline()
                if line == b"flood\\n":  # blocked writing to a client that does not read
                    while True:
                        self.wfile.write(b"x" * 65536)
                self.wfile.write(line)
                self.rfile.readline()  # end-of-file when cut off...
                threading.Event().wait(60)  # ...then work that ignores it
    """))
    run = command("slow:Slow", "--shutdown-timeout", "1", "--bind", "tcp://127.0.0.1:0",
                  cwd=tmp_path)
    [url] = run.serving(1)
    with connect(url) as flooded, connect(url) as stubborn:
        flooded.sendall(b"flood\n")
        assert flooded.recv(10)  # its thread is writing
        stubborn.sendall(b"hi\n")
        assert stubborn.recv(100) == b"hi\n"
        run.proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        assert run.line() == ("stopping (SIGINT): no new connections; draining 2 requests "
                              "for up to 1 s; Ctrl-C again to stop now")
        status = run.proc.wait(timeout=20)
        elapsed = time.monotonic() - started
    assert status == 0
    assert elapsed < 1 + cli.CUT_OFF_GRACE + 1.0, elapsed
    rest = run.rest()
    assert "Traceback" not in rest and "BrokenPipe" not in rest, rest
    lines = rest.splitlines()
    assert len(lines) == 2, rest
    for line in lines:
        assert re.search(r" WARNING servers: tcp://127\.0\.0\.1:\d+: cutting off the request "
                         r"from 127\.0\.0\.1:\d+ \(in a thread\): the drain deadline \(1 s\) "
                         r"passed$", line), line


@pytest.mark.slow
def test_reactor_requests_cancelled_at_the_deadline_are_counted_in_the_singular(
        command) -> None:
    run = command("servers.builtin:Echo", "--shutdown-timeout", "0.2",
                  "--bind", "tcp://127.0.0.1:0")
    [url] = run.serving(1)
    with connect(url) as held:
        held.sendall(b"x\n")
        assert held.recv(100) == b"x\n"
        assert run.stop() == 0
        assert held.recv(100) == b""
    assert "shutdown_timeout=0.2s passed with 1 request in flight; cancelling it" in run.rest()


def run_command(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servers", *args], capture_output=True,
                          text=True, timeout=20, cwd=cwd or REPO)


@pytest.mark.slow
def test_an_argument_error_comes_first_then_the_usage_and_where_to_read_more() -> None:
    result = run_command("servers.builtin:Echo", "--mode", "reactor")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "python -m servers: error: give at least one address to serve on, e.g. "
        "--bind tcp://127.0.0.1:9000",
        "usage: python -m servers MODULE:CLASS --bind URL [--bind URL ...] [--mode MODE] "
        "[options]",
        "run 'python -m servers --help' for the addresses, modes and options",
    ]
    assert result.stdout == ""


@pytest.mark.slow
def test_the_usage_shows_bind_as_required() -> None:
    result = run_command("--help")
    assert result.returncode == 0
    usage = result.stdout.split("\n\n")[0]
    assert usage.startswith("usage: python -m servers MODULE:CLASS --bind URL [--bind URL ...]")


@pytest.mark.slow
@pytest.mark.parametrize("level", ["INFO", "Warning", "debug"])
def test_log_level_in_any_case(level: str) -> None:
    result = run_command("servers.builtin:Echo", "--log-level", level, "--check",
                         "--bind", "tcp://127.0.0.1:0")
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("first", "second", "message"), [
    ("tcp://127.0.0.1:{port}", "tcp://127.0.0.1:{port}", "tcp://127.0.0.1:{port} is given twice"),
    ("unix:{tmp}/a.sock", "unixgram:{tmp}/../{name}/a.sock",
     "unix:{tmp}/a.sock and unixgram:{tmp}/../{name}/a.sock are the same address"),
])
def test_check_refuses_the_same_address_twice(first: str, second: str, message: str,
                                              tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:  # a port number to write down
        port = probe.getsockname()[1]
    values = {"port": port, "tmp": tmp_path, "name": tmp_path.name}
    result = run_command("servers.builtin:Echo", "--check", "--bind", first.format(**values),
                         "--bind", second.format(**values))
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (f"python -m servers: error: "
                                             f"{message.format(**values)}; each address can "
                                             "be served once")


@pytest.mark.slow
def test_check_binds_every_address_and_reports_one_that_cannot_be(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        url = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        result = run_command("servers.builtin:Echo", "--check", "--bind", f"unix:{tmp_path}/s",
                             "--bind", url)
    assert result.returncode == 1
    assert result.stderr.startswith(f"python -m servers: error: cannot listen on {url}: ")
    assert "Address already in use" in result.stderr
    assert not (tmp_path / "s").exists()  # the address bound before it was released
    result = run_command("servers.builtin:Echo", "--check", "--bind", "tcp://192.0.2.1:0")
    assert result.returncode == 1  # an address this machine does not have (TEST-NET-1)
    assert "cannot listen on tcp://192.0.2.1:0: " in result.stderr


def make_stale_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as crashed:  # bound, never closed by its server
        crashed.bind(str(path))


@pytest.mark.slow
def test_a_stale_socket_file_error_names_the_command_line_flag(command,
                                                               tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    make_stale_socket(path)
    result = run_command("servers.builtin:Echo", "--bind", f"unix:{path}")
    assert result.returncode == 1
    assert f"{path} is a stale socket file" in result.stderr
    assert "remove it, or give --remove-stale-socket" in result.stderr
    assert "remove_stale_socket" not in result.stderr
    run = command("servers.builtin:Echo", "--remove-stale-socket", "--bind", f"unix:{path}")
    assert run.serving(1) == [f"unix:{path}"]
    assert ask(f"unix:{path}", b"replaced\n") == b"replaced\n"
    assert run.stop() == 0
    assert not path.exists()


def test_remove_stale_socket_without_a_unix_address_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_main(["servers.builtin:Echo", "--remove-stale-socket",
                            "--bind", "tcp://127.0.0.1:0"], capsys)
    assert status == 2 and "--remove-stale-socket applies to unix: and unixgram:" in err
