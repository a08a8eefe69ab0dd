"""Datagram servers on a reactor: each datagram of a batch goes straight to its handler.

An async handler that never waits is answered at receipt and gets no row in the request table;
one that waits becomes a task with its row until it ends. Real sockets (UDP on loopback and
Unix datagram sockets), a reactor turned by hand (`run_once`), over every selector class.
One file for the whole fast path (inline runs, tasks, batches, hooks, faults), hence its length.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import reactor
import servers
from reactor import Stage
from test_builtin import readable, turn_until


# --------------------------------------------------------------------------- helpers
class Family:
    """One datagram family: how to make its server and a client that can receive replies."""

    def __init__(self, name: str, directory: str) -> None:
        self.name = name
        self.directory = directory
        self.clients = 0

    @property
    def server_class(self) -> type:
        return servers.UDPServer if self.name == "udp" else servers.UnixDatagramServer

    def address(self) -> Any:
        return ("127.0.0.1", 0) if self.name == "udp" else os.path.join(self.directory, "srv")

    def client(self) -> socket.socket:
        if self.name == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
        else:
            self.clients += 1
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(os.path.join(self.directory, f"client{self.clients}"))
        sock.settimeout(10)
        return sock


@pytest.fixture(params=["udp", "unixgram"])
def family(request: pytest.FixtureRequest) -> Iterator[Family]:
    with tempfile.TemporaryDirectory(prefix="dgram-") as directory:
        yield Family(request.param, directory)


@pytest.fixture
def serve(loop: reactor.Reactor, family: Family) -> Iterator[Callable[..., Any]]:
    """`serve(Handler, **class_attributes)`: a server of the family, registered on `loop`."""
    made: list[Any] = []

    def start(handler: type, **attributes: Any) -> Any:
        server_class = type("Server", (family.server_class,), attributes)
        server = server_class(family.address(), handler)
        made.append(server)
        loop.register(server)
        return server

    yield start
    for server in made:
        server.server_close()


@pytest.fixture
def gate() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(wait_on, release): handlers park until the test writes to `release`."""
    wait_on, release = socket.socketpair()
    try:
        yield wait_on, release
    finally:
        wait_on.close()
        release.close()


class Echo(servers.DatagramRequestHandler):
    async def handle(self) -> None:
        self.wfile.write(self.rfile.read())


# --------------------------------------------------------------------------- inline and tasks
def test_an_async_handler_that_never_waits_is_answered_without_a_table_row(
        loop, serve, family) -> None:
    seen: list[int] = []

    class Counting(servers.DatagramRequestHandler):
        async def handle(self) -> None:
            seen.append(len(self.reactor.requests))
            self.wfile.write(self.rfile.read().upper())

    server = serve(Counting)
    with family.client() as client:
        client.sendto(b"ping", server.server_address)
        turn_until(loop, lambda: readable(client))
        assert client.recv(100) == b"PING"
    assert seen == [0]
    assert not loop.requests


def test_an_async_handler_that_waits_is_a_task_with_its_row_until_it_ends(
        loop, serve, family, gate) -> None:
    wait_on, release = gate

    class Parking(servers.DatagramRequestHandler):
        async def handle(self) -> None:
            self.wfile.write(b"before ")
            await reactor.wait(reactor.WaitReadable(wait_on.fileno()))
            self.wfile.write(wait_on.recv(100) + b" " + self.rfile.read())

    server = serve(Parking)
    with family.client() as client:
        client.sendto(b"question", server.server_address)
        turn_until(loop, lambda: len(loop.requests) == 1)
        (entry,) = loop.requests
        assert entry.stage is Stage.WAITING and entry.state == "reading"
        assert entry.request[0] == b"question" and entry.request[1] is server.socket
        assert entry.client_address == client.getsockname()
        assert not readable(client)
        release.send(b"after")
        turn_until(loop, lambda: readable(client))
        assert client.recv(100) == b"before after question"
    turn_until(loop, lambda: not loop.requests)


def test_every_datagram_is_answered_when_some_wait_and_some_do_not(
        loop, serve, family, gate) -> None:
    wait_on, release = gate

    class Mixed(servers.DatagramRequestHandler):
        async def handle(self) -> None:
            data = self.rfile.read()
            if data.startswith(b"wait"):
                await reactor.wait(reactor.WaitReadable(wait_on.fileno()))
            self.wfile.write(data)

    server = serve(Mixed)
    with family.client() as client:
        for data in (b"wait1", b"now1", b"now2"):
            client.sendto(data, server.server_address)
        turn_until(loop, lambda: server.requests_accepted == 3)
        assert [client.recv(100), client.recv(100)] == [b"now1", b"now2"]
        assert len(loop.requests) == 1
        release.send(b"x")
        turn_until(loop, lambda: readable(client))
        assert client.recv(100) == b"wait1"
    turn_until(loop, lambda: not loop.requests)


# A Unix datagram is in the server's queue when sendto() returns; a UDP one on loopback may
# still be on its way (softirq), so the tests that count a single turn's batch use Unix sockets.
queued_at_once = pytest.mark.parametrize("family", ["unixgram"], indirect=True)


@queued_at_once
def test_one_readiness_event_takes_at_most_accept_batch_datagrams(loop, serve, family) -> None:
    server = serve(Echo, accept_batch=4)
    with family.client() as client:
        for n in range(6):
            client.sendto(b"%d" % n, server.server_address)
        loop.run_once(5)
        assert server.requests_accepted == 4  # the loop's other work runs between batches
        loop.run_once(5)
        assert server.requests_accepted == 6
        assert [client.recv(100) for _ in range(6)] == [b"%d" % n for n in range(6)]


@queued_at_once
def test_classic_handlers_on_a_reactor_are_served_in_batches_too(loop, serve, family) -> None:
    class ClassicEcho(servers.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.read() * 2)

    server = serve(ClassicEcho, accept_batch=3)
    with family.client() as client:
        for data in (b"a", b"b", b"c"):
            client.sendto(data, server.server_address)
        loop.run_once(5)
        assert server.requests_accepted == 3
        assert [client.recv(100) for _ in range(3)] == [b"aa", b"bb", b"cc"]
    assert not loop.requests


# --------------------------------------------------------------------------- hooks and faults
@pytest.mark.parametrize("is_async", [False, True], ids=["classic", "async"])
def test_overridden_hooks_are_called_for_every_datagram(loop, serve, family,
                                                        is_async: bool) -> None:
    calls: list[tuple[str, bytes]] = []

    class Hooked(family.server_class):  # type: ignore[name-defined, misc]
        def verify_request(self, request: Any, client_address: Any) -> bool:
            calls.append(("verify", request[0]))
            return request[0] != b"refused"

        def finish_request(self, request: Any, client_address: Any) -> None:
            calls.append(("finish_request", request[0]))
            super().finish_request(request, client_address)

        def shutdown_request(self, request: Any) -> None:
            calls.append(("shutdown", request[0]))
            super().shutdown_request(request)

        def close_request(self, request: Any) -> None:
            calls.append(("close", request[0]))

    if is_async:
        handler: type = Echo
    else:
        class handler(servers.DatagramRequestHandler):  # noqa: N801
            def handle(self) -> None:
                self.wfile.write(self.rfile.read())

    server = Hooked(family.address(), handler)
    try:
        loop.register(server)
        with family.client() as client:
            client.sendto(b"refused", server.server_address)
            client.sendto(b"served", server.server_address)
            turn_until(loop, lambda: readable(client))
            assert client.recv(100) == b"served"
            assert not readable(client)
    finally:
        server.server_close()
    assert calls == [("verify", b"refused"), ("shutdown", b"refused"), ("close", b"refused"),
                     ("verify", b"served"), ("finish_request", b"served"),
                     ("shutdown", b"served"), ("close", b"served")]


def test_a_failing_handler_is_reported_and_the_next_datagram_is_served(
        loop, serve, family) -> None:
    errors: list[str] = []

    class Failing(servers.DatagramRequestHandler):
        async def handle(self) -> None:
            data = self.rfile.read()
            if data == b"late":
                await reactor.checkpoint()
            if data in (b"early", b"late"):
                raise ValueError(data.decode())
            self.wfile.write(data)

    server = serve(Failing, handle_error=lambda self, request, address: errors.append(
        f"{request[0].decode()} from {address == client.getsockname()}"))
    with family.client() as client:
        for data in (b"early", b"late", b"fine"):
            client.sendto(data, server.server_address)
        replies = []
        for _ in range(3):
            turn_until(loop, lambda: readable(client))
            replies.append(client.recv(100))
    # the reply goes out even when handle() raises (an empty one), as in the standard library
    assert sorted(replies) == [b"", b"", b"fine"]
    assert sorted(errors) == ["early from True", "late from True"]
    turn_until(loop, lambda: not loop.requests)


def test_shutdown_from_a_handler_ends_the_batch(family) -> None:
    class Stopping(servers.DatagramRequestHandler):
        async def handle(self) -> None:
            self.server.shutdown()  # on the serving thread: returns at once

    with family.server_class(family.address(), Stopping) as server, family.client() as client:
        for _ in range(3):
            client.sendto(b"stop", server.server_address)
        server.serve_forever()
        assert server.requests_accepted == 1  # the other two stay queued in the socket
        assert client.recv(100) == b""


def test_max_connections_bounds_the_datagrams_that_wait(loop, serve, family) -> None:
    gates = [socket.socketpair() for _ in range(3)]

    class Parking(servers.DatagramRequestHandler):
        async def handle(self) -> None:
            wait_on = gates[int(self.rfile.read())][0]
            await reactor.wait(reactor.WaitReadable(wait_on.fileno()))
            self.wfile.write(wait_on.recv(100))

    server = serve(Parking, max_connections=2)
    try:
        with family.client() as client:
            for data in (b"0", b"1", b"2"):
                client.sendto(data, server.server_address)
            turn_until(loop, lambda: len(loop.requests) == 2)
            loop.run_once(0)
            assert server.requests_accepted == 2  # the third waits in the socket's queue
            gates[0][1].send(b"zero")
            turn_until(loop, lambda: server.requests_accepted == 3)
            assert client.recv(100) == b"zero"
            assert len(loop.requests) == 2
            for n, (_, release) in enumerate(gates[1:], 1):
                release.send(b"%d" % n)
            turn_until(loop, lambda: not loop.requests)
            assert sorted(client.recv(100) for _ in range(2)) == [b"1", b"2"]
    finally:
        for pair in gates:
            for sock in pair:
                sock.close()


def test_keyboard_interrupt_in_a_handler_leaves_the_loop(loop, serve, family) -> None:
    shut: list[bytes] = []

    class Interrupted(servers.DatagramRequestHandler):
        async def handle(self) -> None:
            raise KeyboardInterrupt

    server = serve(Interrupted, shutdown_request=lambda self, request: shut.append(request[0]))
    with family.client() as client:
        client.sendto(b"ctrl-c", server.server_address)
        with pytest.raises(KeyboardInterrupt):
            turn_until(loop, lambda: False)
    assert shut == [b"ctrl-c"]
    assert not loop.requests


def test_a_finish_request_that_picks_an_async_handler_runs_it_on_the_reactor(
        loop, family, gate) -> None:
    wait_on, release = gate

    class Classic(servers.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"classic")

    class Waiting(servers.DatagramRequestHandler):
        async def handle(self) -> None:
            await reactor.wait(reactor.WaitReadable(wait_on.fileno()))
            self.wfile.write(b"async")

    class Routing(family.server_class):  # type: ignore[name-defined, misc]
        def finish_request(self, request: Any, client_address: Any) -> None:
            handler = Waiting if request[0] == b"wait" else self.RequestHandlerClass
            handler(request, client_address, self)

    server = Routing(family.address(), Classic)
    try:
        loop.register(server)
        with family.client() as client:
            client.sendto(b"wait", server.server_address)
            client.sendto(b"now", server.server_address)
            turn_until(loop, lambda: readable(client))
            assert client.recv(100) == b"classic"  # the waiting one did not block the loop
            assert [entry.stage for entry in loop.requests] == [Stage.WAITING]
            release.send(b"go")
            turn_until(loop, lambda: readable(client))
            assert client.recv(100) == b"async"
        turn_until(loop, lambda: not loop.requests)
    finally:
        server.server_close()


def test_a_waiting_datagram_that_times_out_ends_like_any_async_request(
        fake_loop, clock, family, gate, caplog) -> None:
    wait_on, _ = gate

    class Patient(servers.DatagramRequestHandler):
        async def handle(self) -> None:
            self.wfile.write(b"partial")
            await reactor.wait(reactor.WaitReadable(wait_on.fileno(), timeout=5))
            self.wfile.write(b" never")  # pragma: no cover - the wait times out

    with family.server_class(family.address(), Patient) as server, family.client() as client:
        fake_loop.register(server)
        client.sendto(b"x", server.server_address)
        turn_until(fake_loop, lambda: len(fake_loop.requests) == 1)
        with caplog.at_level("INFO", logger="servers"):
            clock.advance(5)
            turn_until(fake_loop, lambda: not fake_loop.requests)
        assert client.recv(100) == b"partial"  # finish() still sends what was written
        assert any("timed out" in record.getMessage() for record in caplog.records)


def test_a_waiting_datagram_still_replies_when_the_reactor_closes(
        loop, serve, family, gate) -> None:
    wait_on, _ = gate

    class Waiting(servers.DatagramRequestHandler):
        async def handle(self) -> None:
            self.wfile.write(b"so far")
            await reactor.wait(reactor.WaitReadable(wait_on.fileno()))

    server = serve(Waiting)
    with family.client() as client:
        client.sendto(b"x", server.server_address)
        turn_until(loop, lambda: len(loop.requests) == 1)
        loop.close()  # closes the task's coroutine: its finally blocks and finish() run
        assert client.recv(100) == b"so far"
    assert not loop.requests


def test_errors_in_verify_request_and_classic_handlers_go_to_handle_error(
        loop, serve, family) -> None:
    errors: list[tuple[bytes, str]] = []

    class Classic(servers.DatagramRequestHandler):
        def handle(self) -> None:
            if self.rfile.read() == b"bad handler":
                raise ValueError("handler")
            self.wfile.write(b"ok")

    def verify_request(self: Any, request: Any, client_address: Any) -> bool:
        if request[0] == b"bad verify":
            raise ValueError("verify")
        return True

    def handle_error(self: Any, request: Any, client_address: Any) -> None:
        errors.append((request[0], str(sys.exc_info()[1])))

    server = serve(Classic, verify_request=verify_request, handle_error=handle_error)
    with family.client() as client:
        for data in (b"bad verify", b"bad handler", b"good"):
            client.sendto(data, server.server_address)
        turn_until(loop, lambda: server.requests_accepted == 3)
        assert [client.recv(100), client.recv(100)] == [b"", b"ok"]  # finish() ran anyway
        assert not readable(client)  # nothing for the refused datagram
    assert errors == [(b"bad verify", "verify"), (b"bad handler", "handler")]
