"""Behind a real load balancer (issue 10, section 4): HAProxy speaks PROXY v2 to a Supervisor
with two workers, and the handlers see the real clients; a reload, a killed worker and a
graceful stop lose no request.

The supervisor runs `proxied.py` in a subprocess (its stderr read line by line with a bound);
HAProxy is tests/haproxy.py's fixture, given `retries 0` so that a connection our server
refused would reach the client as a failure instead of being retried out of sight. The load is
a client in this process, one connection through HAProxy per request, each read until EOF:
batches of 8 in flight together during the reload, one at a time around the kill; between
them it reads the supervisor's lines that have arrived, without waiting. No thread, no sleep:
everything synchronises on replies, log lines and pidfds.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import connect, recv_line
from haproxy import HAProxy, load_balancer, requires_haproxy
from lineprocess import LineProcess, repo_environ

__all__ = ["load_balancer"]  # the fixture, imported so that pytest finds it here

SCRIPT = Path(__file__).with_name("proxied.py")
REPLY = re.compile(rb"(\S+) (\d+) pid (\d+) v(\d) (\d+) (.*)\n")
MAX_REQUESTS = 3000  # the bound on every load loop (one request takes a few ms)
WIDTH = 8  # requests in flight together during the reload

pytestmark = [requires_haproxy, pytest.mark.slow, pytest.mark.forking,
              pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs os.pidfd_open")]


@dataclass
class Answer:
    client: tuple[str, int]  # the client_address the handler saw
    pid: int  # the worker that served it
    version: int  # the PROXY header's version, from handler.proxy
    destination_port: int  # where the client connected, from handler.proxy
    line: bytes


def parse(reply: bytes) -> Answer | None:
    match = REPLY.fullmatch(reply)
    if match is None:
        return None
    return Answer((match[1].decode(), int(match[2])), int(match[3]), int(match[4]),
                  int(match[5]), match[6] + b"\n")


class Supervised(LineProcess):
    def __init__(self, *args: str) -> None:
        super().__init__([sys.executable, str(SCRIPT), *args],
                         env=repo_environ(PYTHONDONTWRITEBYTECODE="1"))
        match = self.wait_for(r"^listening (\S+) (\d+)")
        self.address = (match[1], int(match[2]))

    def ready_pids(self, count: int) -> list[int]:
        return [int(self.wait_for(r"worker (\d+) ready")[1]) for _ in range(count)]


@pytest.fixture
def supervised(load_balancer: Callable[..., HAProxy]
               ) -> Iterator[Callable[..., tuple[Supervised, HAProxy, list[int]]]]:
    """A factory: (the supervisor, HAProxy in front of it, its two workers' pids)."""
    started: list[Supervised] = []

    def start(*args: str) -> tuple[Supervised, HAProxy, list[int]]:
        # 30 s: the slow requests here outlast no header timeout (the test at the end shows
        # what happens to one that does)
        started.append(Supervised("--workers", "2", "--proxy-header-timeout", "30", *args))
        run = started[-1]
        pids = run.ready_pids(2)
        return run, load_balancer([run.address], send_proxy="v2",
                                  backend_lines=["retries 0"]), pids

    yield start
    for run in started:
        run.close()


def ask(address: Any, line: bytes) -> tuple[bytes, tuple[str, int]]:
    """One request through the balancer: (the reply up to EOF, the client's own address)."""
    with connect(address[:2]) as client:
        client.sendall(line)
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
        return reply, client.getsockname()


class Slow:
    """A request held in flight in a worker (through the balancer) until `finish()`."""

    def __init__(self, address: Any) -> None:
        self.sock = connect(address[:2])
        self.sock.sendall(b"slow\n")
        match = re.fullmatch(rb"waiting (\d+)\n", recv_line(self.sock))
        assert match, "the slow request was not acknowledged"
        self.pid = int(match[1])
        self.reply = b""  # what finish() received

    def finish(self) -> tuple[Answer | None, tuple[str, int]]:
        with self.sock:
            self.sock.sendall(b"go on\n")
            reply = b""
            while chunk := self.sock.recv(65536):
                reply += chunk
            self.reply = reply
            return parse(reply), self.sock.getsockname()


@dataclass
class Load:
    """The client: `requests()` sends numbered requests together and records each outcome."""

    address: Any
    answered: list[tuple[int, int]] = field(default_factory=list)  # (number, pid)
    failures: list[str] = field(default_factory=list)

    def request(self, number: int) -> None:
        self.requests(range(number, number + 1))

    def requests(self, numbers: range) -> None:
        """These requests in flight together: each connects and sends its line, then each
        reply is read until EOF."""
        clients: list[tuple[int, socket.socket]] = []
        try:
            for number in numbers:
                client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                clients.append((number, client))
                client.settimeout(10)
                try:
                    client.connect(self.address[:2])
                    client.sendall(b"request %d\n" % number)
                except OSError as exc:
                    self.failures.append(f"{number}: {exc!r}")
                    client.close()
            for number, client in clients:
                if client.fileno() >= 0:
                    self._answer(number, client)
        finally:
            for _, client in clients:
                client.close()

    def _answer(self, number: int, client: socket.socket) -> None:
        line = b"request %d\n" % number
        reply = b""
        try:
            while chunk := client.recv(65536):
                reply += chunk
        except OSError as exc:
            self.failures.append(f"{number}: {exc!r} after {reply!r}")
            return
        answer = parse(reply)
        own = client.getsockname()
        if answer is None or answer.line != line or answer.client != own:
            self.failures.append(f"{number}: {reply!r} (the client was {own})")
        else:
            self.answered.append((number, answer.pid))

    def pids_from(self, first: int) -> set[int]:
        return {pid for number, pid in self.answered if number >= first}


def test_handlers_see_the_real_client_addresses_in_both_workers(supervised: Any) -> None:
    run, balancer, pids = supervised("--max-connections", "1")
    # a worker at max_connections=1 leaves new connections to the other: both answer
    slow = Slow(balancer.address)
    reply, own = ask(balancer.address, b"quick\n")
    quick = parse(reply)
    assert quick is not None, reply
    held, held_own = slow.finish()
    assert held is not None
    assert {slow.pid, quick.pid} == set(pids) and held.pid == slow.pid
    for answer, client in ((quick, own), (held, held_own)):
        assert answer.client == client  # the client's address, not HAProxy's
        assert (answer.version, answer.destination_port) == (2, balancer.address[1])
    assert own != held_own
    # and so for every connection, whichever worker takes it
    load = Load(balancer.address)
    for number in range(20):
        load.request(number)
    assert load.failures == [] and load.pids_from(0) <= set(pids)
    assert run.stop() == 0


@pytest.mark.timeout(60)
def test_a_sighup_reload_under_load_loses_no_request(supervised: Any) -> None:
    run, balancer, old = supervised()
    slow = Slow(balancer.address)  # in flight on an old worker across the reload
    load = Load(balancer.address)
    new: list[int] = []
    stopped: list[int] = []
    reloaded_at = finished_at = None
    for first in range(0, MAX_REQUESTS, WIDTH):
        load.requests(range(first, first + WIDTH))
        if first == 10 * WIDTH:
            run.proc.send_signal(signal.SIGHUP)
        for line in run.ready_lines():
            if match := re.search(r"reload: new workers \[(\d+), (\d+)\] ready; stopping the "
                                  r"old ones \[(\d+), (\d+)\]", line):
                new = [int(match[1]), int(match[2])]
                assert sorted([int(match[3]), int(match[4])]) == sorted(old)
                reloaded_at = first
            elif match := re.search(r"worker (\d+) stopped \(exit status 0\)", line):
                stopped.append(int(match[1]))
        if reloaded_at is not None and slow.sock.fileno() >= 0:
            held, held_own = slow.finish()  # the old worker drained it
            assert held is not None and (held.pid, held.client) == (slow.pid, held_own), (
                f"the slow request was cut: {slow.reply!r}; {run.seen}; {load.failures}; "
                f"{balancer.log()[-3000:]}")
        if sorted(stopped) == sorted(old) and finished_at is None:
            finished_at = first + WIDTH  # the first request sent once they were gone
        if finished_at is not None and first >= finished_at + 20 * WIDTH:
            break
    assert finished_at is not None, f"the reload did not end; {run.seen}"
    assert load.failures == []
    assert load.pids_from(finished_at) <= set(new)  # only the new workers are left
    assert load.pids_from(0) & set(old)  # and the old ones did serve some of the load
    assert run.stop() == 0


@pytest.mark.timeout(60)
def test_a_killed_worker_cuts_only_its_request_in_flight(supervised: Any) -> None:
    """The kill lands between two requests of the load (the test waits on a pidfd until the
    worker is gone before it sends the next): the only request in flight on the killed worker
    is the slow one, which is cut; every other request, including those while one worker
    serves alone and before the replacement is ready, is answered."""
    run, balancer, pids = supervised()
    slow = Slow(balancer.address)
    victim = slow.pid
    survivor = next(pid for pid in pids if pid != victim)
    load = Load(balancer.address)
    replacement = None
    killed_at = ready_at = None
    for number in range(MAX_REQUESTS):
        if number == 50:
            pidfd = os.pidfd_open(victim)
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                assert select.select([pidfd], [], [], 10)[0], f"worker {victim} still runs"
            finally:
                os.close(pidfd)
            killed_at = number
        load.request(number)
        for line in run.ready_lines():
            if match := re.search(r"worker (\d+) ready", line):
                replacement, ready_at = int(match[1]), number
        if ready_at is not None and number >= ready_at + 100:
            break
    assert replacement is not None and killed_at is not None, run.seen
    assert any(re.search(rf"worker {victim} exited unexpectedly \(killed by SIGKILL\)", line)
               for line in run.seen)
    with slow.sock:
        try:
            cut = slow.sock.recv(65536)
        except ConnectionResetError:
            cut = b""
    assert cut == b""  # HAProxy closed the client's side of the killed worker's connection
    assert load.failures == []
    assert load.pids_from(killed_at) <= {survivor, replacement}
    assert run.stop() == 0


def test_a_graceful_stop_drains_a_slow_request_through_haproxy(supervised: Any) -> None:
    run, balancer, pids = supervised()
    slow = Slow(balancer.address)
    run.proc.send_signal(signal.SIGTERM)
    stopped: set[int] = set()  # the idle worker may stop before or after the busy one drains
    draining = rf"worker {slow.pid}: stopping; draining 1 request in flight"
    while not re.search(draining, line := run.line()):
        assert line, f"{draining!r} never appeared: {run.seen}"
        if match := re.search(r"worker (\d+) stopped \(exit status 0\)", line):
            stopped.add(int(match[1]))
    assert slow.pid not in stopped
    held, own = slow.finish()
    assert held is not None and (held.pid, held.client, held.line) == (slow.pid, own, b"slow\n")
    while stopped != set(pids):
        stopped.add(int(run.wait_for(r"worker (\d+) stopped \(exit status 0\)")[1]))
    run.wait_for(r"^returned$")
    assert run.proc.wait(timeout=10) == 0


def test_a_request_may_outlast_proxy_header_timeout(supervised: Any) -> None:
    run, balancer, _ = supervised("--proxy-header-timeout", "0.5")
    reply, own = ask(balancer.address, b"linger\n")  # answered after 1 s
    answer = parse(reply)
    assert answer is not None, f"cut: {reply!r}; {run.ready_lines()}"
    assert (answer.client, answer.line) == (own, b"linger\n")
