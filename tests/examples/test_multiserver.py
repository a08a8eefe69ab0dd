"""examples/multiserver.py, run as a subprocess on ephemeral ports: all four services answer
from one thread, the admin table shows a held-open connection, and SIGTERM drains it and
exits 0 with the Unix socket file removed."""

from __future__ import annotations

import http.client
import os
import re
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "multiserver.py"


class Example:
    """The example in a subprocess; its stdout read line by line with a bound."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, str(EXAMPLE), *args], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self._buffer = b""

    def line(self, timeout: float = 10.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise AssertionError("the example printed no line in time")
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"the example exited: {self.stderr()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def example(tmp_path: Path) -> Iterator[tuple[Example, dict[str, str], Path]]:
    admin = tmp_path / "admin.sock"
    run = Example("--tcp-port", "0", "--udp-port", "0", "--http-port", "0",
                  "--admin-socket", str(admin), "--shutdown-timeout", "10")
    try:
        urls = {}
        for _ in range(4):
            line = run.line()
            name, url = re.match(r"(\w[\w ]*?)\s{2,}(\S+)", line).groups()
            urls[name] = url
        assert run.line().startswith("one process, one thread")
        yield run, urls, admin
    finally:
        run.close()


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("://")[1].rstrip("/").rpartition(":")
    return host, int(port)


def read_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


@pytest.mark.slow
def test_four_services_one_thread_and_a_graceful_stop(example) -> None:
    run, urls, admin = example
    assert set(urls) == {"line service", "datagram service", "admin", "status page"}
    assert urls["admin"] == f"unix:{admin}"

    with socket.create_connection(host_port(urls["line service"]), timeout=10) as held:
        held.sendall(b"hello\n")
        assert read_until(held, b"\n") == b"HELLO\n"

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(10)
            udp.sendto(b"datagram", host_port(urls["datagram service"]))
            assert udp.recv(100) == b"DATAGRAM"

        with socket.socket(socket.AF_UNIX) as console:
            console.settimeout(10)
            console.connect(str(admin))
            console.sendall(b"table\n")
            table = read_until(console, b"\n").decode()
            while table.count("\n") < 3:  # header, the held connection, this command
                table += read_until(console, b"\n").decode()
            console.sendall(b"stats\n")
            stats = read_until(console, b"lines: 1\n").decode()
        held_row = next(line for line in table.splitlines()
                        if f"127.0.0.1:{held.getsockname()[1]}" in line)
        assert held_row.split()[1] == urls["line service"]
        assert held_row.split()[3:4] == ["reading"] and held_row.split()[5:] == ["6", "6"]
        assert "datagrams: 1" in stats

        page = http.client.HTTPConnection(*host_port(urls["status page"]), timeout=10)
        try:
            page.request("GET", "/")
            response = page.getresponse()
            body = response.read().decode()
            assert response.status == 200
            assert response.getheader("Content-Type") == "text/html; charset=utf-8"
            assert f"127.0.0.1:{held.getsockname()[1]}" in body
            page.request("GET", "/status.txt")  # the same connection: keep-alive
            response = page.getresponse()
            assert response.status == 200 and "http requests: 1" in response.read().decode()
            page.request("GET", "/nowhere")
            response = page.getresponse()
            assert response.status == 404
            response.read()
        finally:
            page.close()

        status = Path(f"/proc/{run.proc.pid}/status").read_text()
        assert re.search(r"^Threads:\s+1$", status, re.M), "the example must use one thread"

        run.proc.send_signal(signal.SIGTERM)
        assert run.line().startswith("stopping (SIGTERM): draining")
        held.sendall(b"served while draining\n")
        assert read_until(held, b"\n") == b"SERVED WHILE DRAINING\n"
    assert run.line() == "stopped"
    assert run.proc.wait(timeout=10) == 0
    assert run.stderr() == ""
    assert not admin.exists()


@pytest.mark.slow
def test_one_request_in_flight_is_counted_in_the_singular(example) -> None:
    run, urls, _ = example
    with socket.create_connection(host_port(urls["status page"]), timeout=10) as page:
        page.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = b""
        while chunk := page.recv(65536):  # the server closes: its table row is gone too
            body += chunk
    assert b"1 request in flight</h1>" in body  # this request itself
    with socket.create_connection(host_port(urls["line service"]), timeout=10) as held:
        held.sendall(b"hello\n")
        assert read_until(held, b"\n") == b"HELLO\n"
        run.proc.send_signal(signal.SIGTERM)
        assert run.line() == "stopping (SIGTERM): draining 1 request in flight"
    assert run.line() == "stopped"
    assert run.proc.wait(timeout=10) == 0


def readme_clients() -> list[str]:
    """The README's `python -c` clients (shown for machines without nc)."""
    readme = (REPO / "README.md").read_text()
    return [shlex.split(line)[2] for line in readme.splitlines()
            if line.startswith("python -c ")]


@pytest.mark.slow
def test_the_readme_python_clients_talk_to_the_example(example) -> None:
    run, urls, admin = example
    tcp, admin_client, status = readme_clients()
    line_port = host_port(urls["line service"])[1]
    http_port = host_port(urls["status page"])[1]
    programs = [
        (tcp.replace("8007", str(line_port)), "hello\nworld\n", "HELLO\nWORLD\n"),
        (admin_client.replace('f"/tmp/multiserver-{os.getuid()}.sock"', repr(str(admin))),
         "stats\n", "uptime "),
        (status.replace("8080", str(http_port)), "", "lines: 2"),
    ]
    for program, typed, expected in programs:
        result = subprocess.run([sys.executable, "-c", program], input=typed, text=True,
                                capture_output=True, timeout=20)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout, (program, result.stdout)


@pytest.mark.slow
def test_the_admin_shutdown_command_stops_everything(example) -> None:
    run, urls, admin = example
    with socket.socket(socket.AF_UNIX) as console:
        console.settimeout(10)
        console.connect(str(admin))
        console.sendall(b"help\n")
        assert read_until(console, b"this list\n").startswith(b"table ")
        console.sendall(b"shutdown\n")
        assert read_until(console, b"\n") == b"shutting down\n"
        assert console.recv(100) == b""
    assert run.line() == "stopped"
    assert run.proc.wait(timeout=10) == 0
    assert not admin.exists()


@pytest.mark.slow
def test_a_port_in_use_gets_advice_and_status_1(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        result = subprocess.run(
            [sys.executable, str(EXAMPLE), "--tcp-port", port, "--udp-port", "0",
             "--http-port", "0", "--admin-socket", str(tmp_path / "a.sock")],
            capture_output=True, text=True, timeout=20,
            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 1
    assert "choose other ports with --tcp-port" in result.stderr
    assert not (tmp_path / "a.sock").exists()


@pytest.mark.slow
@pytest.mark.forking
def test_with_workers_each_answer_names_its_worker_and_shutdown_stops_them_all(
        tmp_path: Path) -> None:
    admin = tmp_path / "admin.sock"
    run = Example("--tcp-port", "0", "--udp-port", "0", "--http-port", "0",
                  "--admin-socket", str(admin), "--workers", "2")
    try:
        urls = dict(re.match(r"(\w[\w ]*?)\s{2,}(\S+)", run.line()).groups() for _ in range(4))
        supervisor = int(re.match(r"2 worker processes \(pid (\d+) supervises\)",
                                  run.line())[1])
        assert supervisor == run.proc.pid
        page = http.client.HTTPConnection(*host_port(urls["status page"]), timeout=10)
        try:
            page.request("GET", "/status.txt")
            response = page.getresponse()
            answered = int(re.match(r"pid (\d+), uptime", response.read().decode())[1])
        finally:
            page.close()
        ppid = Path(f"/proc/{answered}/stat").read_text().rpartition(")")[2].split()[1]
        assert int(ppid) == supervisor  # a worker answered, not the supervisor
        with socket.socket(socket.AF_UNIX) as console:
            console.settimeout(10)
            console.connect(str(admin))
            console.sendall(b"stats\n")
            assert re.match(rb"pid \d+, uptime", read_until(console, b"\n"))
            console.sendall(b"shutdown\n")  # stops the supervisor, so every worker
            assert read_until(console, b"\n") == b"shutting down\n"
            assert console.recv(100) == b""
        assert run.line() == "stopped"
        assert run.proc.wait(timeout=10) == 0
        assert run.stderr() == ""
        assert not admin.exists()
    finally:
        run.close()
