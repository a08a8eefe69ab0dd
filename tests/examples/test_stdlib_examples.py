"""examples/stdlib_*.py: the standard library documentation's socketserver examples, written
against this library, run as real programs: their --self-test, and the server/client modes
(a server subprocess on a free port, the example's own client against it, Ctrl-C to stop)."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
HAS_FORK = hasattr(os, "fork")

NAMES = [
    pytest.param("stdlib_tcp", id="tcp"),
    pytest.param("stdlib_tcp_streams", id="tcp_streams"),
    pytest.param("stdlib_udp", id="udp"),
    pytest.param("stdlib_threaded", id="threaded"),
    pytest.param("stdlib_forking", id="forking",
                 marks=pytest.mark.skipif(not HAS_FORK, reason="needs os.fork")),
]


def environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-X", "dev", str(EXAMPLES / f"{name}.py"), *args],
                          capture_output=True, text=True, timeout=30, env=environment(),
                          stdin=subprocess.DEVNULL)


def received(output: str) -> list[str]:
    return [line.split("received: ", 1)[1] for line in output.splitlines()
            if line.startswith("received: ")]


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Warning" not in result.stderr, result.stderr


# ------------------------------------------------------------------------ --self-test
@pytest.mark.slow
def test_tcp_example_self_test_upper_cases_each_message() -> None:
    result = run_example("stdlib_tcp", "--self-test")
    assert_clean(result)
    assert received(result.stdout) == ["HELLO WORLD", "SOCKETSERVER ON A REACTOR"]
    assert "127.0.0.1 wrote: hello world" in result.stdout
    assert result.stdout.rstrip().endswith("self-test passed")


@pytest.mark.slow
def test_stream_example_self_test_answers_line_by_line() -> None:
    result = run_example("stdlib_tcp_streams", "--self-test")
    assert_clean(result)
    assert received(result.stdout) == ["HELLO WORLD", "LINES VIA RFILE AND WFILE"]
    assert result.stdout.rstrip().endswith("self-test passed")


@pytest.mark.slow
def test_udp_example_self_test_answers_each_datagram() -> None:
    result = run_example("stdlib_udp", "--self-test")
    assert_clean(result)
    assert received(result.stdout) == ["HELLO WORLD", "ONE DATAGRAM EACH"]
    assert result.stdout.rstrip().endswith("self-test passed")


@pytest.mark.slow
def test_threaded_example_self_test_serves_each_client_in_its_own_thread() -> None:
    result = run_example("stdlib_threaded", "--self-test")
    assert_clean(result)
    answers = received(result.stdout)
    assert [a.split(": ", 1)[1] for a in answers] == [
        "Hello World 1", "Hello World 2", "Hello World 3"]
    loop_thread = re.search(r"server loop running in thread: (.+)", result.stdout)
    assert loop_thread is not None
    names = [a.split(": ", 1)[0] for a in answers]
    assert len(set(names)) == 3, "each connection needs a thread of its own"
    assert loop_thread.group(1) not in names and "MainThread" not in names


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FORK, reason="needs os.fork")
def test_forking_example_self_test_serves_each_client_in_a_child() -> None:
    result = run_example("stdlib_forking", "--self-test")
    assert_clean(result)
    server_pid = re.search(r"server process: pid (\d+)", result.stdout)
    assert server_pid is not None
    answers = received(result.stdout)
    assert [a.split(": ", 1)[1] for a in answers] == [
        "Hello World 1", "Hello World 2", "Hello World 3"]
    pids = {a.split(": ", 1)[0] for a in answers}
    assert len(pids) == 3 and f"pid {server_pid.group(1)}" not in pids
    assert "children left: 0" in result.stdout
    assert result.stdout.rstrip().endswith("self-test passed")


# ------------------------------------------------------------------------ server + client
class ServerProcess:
    """An example in server mode on a free port; its first line says where it listens."""

    def __init__(self, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-X", "dev", str(EXAMPLES / f"{name}.py"), "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=environment())

    def first_line(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise AssertionError(f"no line from the server within {timeout} s")
                byte = os.read(self.proc.stdout.fileno(), 1)
                if not byte:
                    raise AssertionError("the server exited before saying where it listens")
                line += byte
        return line.decode()

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=20)
        return self.proc.returncode, out.decode(), err.decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_example_serves_its_own_client_until_ctrl_c(name: str) -> None:
    server = ServerProcess(name)
    try:
        match = re.fullmatch(r"serving on (\S+):(\d+)\n", server.first_line())
        assert match is not None
        host, port = match.groups()
        result = run_example(name, "--client", "--host", host, "--port", port, "ping", "pong")
        assert_clean(result)
        answer = result.stdout.strip()
        if name in ("stdlib_tcp", "stdlib_tcp_streams", "stdlib_udp"):
            assert answer == "PING PONG"
        elif name == "stdlib_threaded":
            assert answer.endswith(": ping pong")
        else:  # the forking client sends each word on a connection of its own
            assert re.fullmatch(r"received: pid \d+: ping\nreceived: pid \d+: pong", answer)
        status, out, err = server.stop()
    finally:
        server.kill()
    assert status == 0, err
    assert "Traceback" not in err
    assert out.rstrip().endswith("stopped")
