"""serve_forever / shutdown, and registering plain objects and the standard library's servers."""

from __future__ import annotations

import logging
import os
import signal
import socket
import socketserver
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import reactor
from reactor import ClosedResourceError, Reactor, ReactorError


class UpperHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline().upper())


class CountingTCPServer(socketserver.TCPServer):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.turns = 0

    def service_actions(self) -> None:
        self.turns += 1


@pytest.fixture
def stdlib_server() -> Iterator[CountingTCPServer]:
    server = CountingTCPServer(("127.0.0.1", 0), UpperHandler)
    try:
        yield server
    finally:
        server.server_close()


def client_for(server: Any) -> socket.socket:
    sock = socket.create_connection(server.server_address, timeout=10)
    return sock


# ------------------------------------------------------------------------ the stdlib's servers
def test_a_stdlib_tcp_server_registered_on_the_reactor_serves_a_request(
        loop: Reactor, stdlib_server: CountingTCPServer) -> None:
    loop.register(stdlib_server)
    assert loop.servers == (stdlib_server,)
    assert loop.statistics()["servers"] == 1
    with client_for(stdlib_server) as client:
        client.sendall(b"hello\n")
        for _ in range(10):  # one turn accepts and handles it inline, the classic way
            if loop.run_once(5):
                break
        assert client.recv(100) == b"HELLO\n"
        assert client.recv(100) == b""  # the server shut the connection down
    loop.unregister(stdlib_server)
    assert loop.servers == ()
    assert loop.statistics()["descriptors"] == 0


def test_serve_forever_serves_a_stdlib_server_until_shutdown_from_a_callback(
        loop: Reactor, stdlib_server: CountingTCPServer) -> None:
    loop.register(stdlib_server)
    replies: list[bytes] = []
    client = client_for(stdlib_server)

    def check_reply() -> None:
        replies.append(client.recv(100))
        loop.shutdown()  # on the loop thread: returns at once

    try:
        # Sent before the loop runs: the classic handler reads it inline, blocking.
        client.sendall(b"abc\n")
        loop.add_reader(client, lambda: (loop.remove_reader(client), check_reply()))
        loop.serve_forever(poll_interval=5)
    finally:
        client.close()
    assert replies == [b"ABC\n"]
    assert loop.servers == ()  # shutdown unregistered the stdlib server
    assert stdlib_server.turns >= 1  # service_actions ran once per turn
    assert not loop.closed


def test_a_plain_object_with_fileno_and_handle_request_is_served(loop: Reactor) -> None:
    a, b = socket.socketpair()

    class Plain:
        def __init__(self) -> None:
            self.got: list[bytes] = []

        def fileno(self) -> int:
            return a.fileno()

        def handle_request(self) -> None:
            self.got.append(a.recv(100))

    try:
        plain = Plain()
        loop.register(plain)
        b.send(b"ping")
        loop.run_once(5)
        assert plain.got == [b"ping"]
        loop.unregister(plain)
        b.send(b"again")
        loop.run_once(0)
        assert plain.got == [b"ping"]
    finally:
        a.close()
        b.close()


def test_handle_request_noblock_is_preferred_to_handle_request(loop: Reactor) -> None:
    a, b = socket.socketpair()
    calls: list[str] = []

    class Both:
        def fileno(self) -> int:
            return a.fileno()

        def handle_request(self) -> None:  # pragma: no cover - must not be used
            calls.append("handle_request")

        def _handle_request_noblock(self) -> None:
            calls.append("noblock")
            a.recv(100)

    try:
        server = Both()
        loop.register(server)
        b.send(b"x")
        loop.run_once(5)
        assert calls == ["noblock"]
        loop.unregister(server)
    finally:
        a.close()
        b.close()


def test_an_object_with_attach_and_detach_attaches_itself(loop: Reactor) -> None:
    calls: list[tuple[str, Reactor]] = []

    class Component:
        def attach(self, r: Reactor) -> None:
            calls.append(("attach", r))

        def detach(self, r: Reactor) -> None:
            calls.append(("detach", r))

        def begin_shutdown(self) -> None:
            calls.append(("begin_shutdown", None))

    component = Component()
    assert isinstance(component, reactor.Listener)
    loop.register(component)
    loop.unregister(component)
    assert calls == [("attach", loop), ("detach", loop)]
    assert loop.statistics()["descriptors"] == 0


def test_registering_twice_is_refused(loop: Reactor, stdlib_server) -> None:
    loop.register(stdlib_server)
    with pytest.raises(ReactorError, match="already registered"):
        loop.register(stdlib_server)
    assert loop.servers == (stdlib_server,)
    loop.unregister(stdlib_server)


def test_unregistering_an_unknown_server_is_harmless(loop: Reactor) -> None:
    loop.unregister(object())
    assert loop.servers == ()


def test_unregistering_a_server_whose_socket_is_closed_is_harmless(loop: Reactor) -> None:
    server = socketserver.TCPServer(("127.0.0.1", 0), UpperHandler)
    loop.register(server)
    loop.forget(server.fileno())  # the rule: forget before closing
    server.server_close()
    loop.unregister(server)
    assert loop.servers == ()


def test_service_actions_that_raise_are_logged_and_reported(loop: Reactor, caplog) -> None:
    a, b = socket.socketpair()
    errors: list[tuple[Any, Any]] = []

    class Flaky:
        def __init__(self) -> None:
            self.turns = 0

        def fileno(self) -> int:
            return a.fileno()

        def handle_request(self) -> None:  # pragma: no cover - nothing connects
            pass

        def service_actions(self) -> None:
            self.turns += 1
            if self.turns == 1:
                raise ValueError("flaky")
            loop.shutdown()

        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append((request, client_address))

    try:
        flaky = Flaky()
        loop.register(flaky)
        with caplog.at_level(logging.ERROR, logger="reactor"):
            loop.serve_forever(poll_interval=0)
        assert flaky.turns >= 2
        assert errors == [(None, None)]
        assert any("service_actions()" in r.getMessage() for r in caplog.records)
    finally:
        a.close()
        b.close()


def test_service_actions_run_once_per_turn(loop: Reactor) -> None:
    a, b = socket.socketpair()
    turns: list[int] = []

    class Ticker:
        def fileno(self) -> int:
            return a.fileno()

        def handle_request(self) -> None:  # pragma: no cover - nothing arrives
            pass

        def service_actions(self) -> None:
            turns.append(len(turns))
            if len(turns) == 3:
                loop.shutdown()

    try:
        loop.register(Ticker())
        loop.serve_forever(poll_interval=0)
        assert turns == [0, 1, 2]  # the stop takes effect after the current turn
    finally:
        a.close()
        b.close()


def test_register_on_a_closed_reactor_is_refused() -> None:
    r = Reactor()
    r.close()
    with pytest.raises(ClosedResourceError):
        r.register(object())


# ------------------------------------------------------------------------ serve_forever / shutdown
def test_shutdown_from_a_callback_on_the_loop_thread_stops_serve_forever(loop: Reactor) -> None:
    log: list[str] = []
    loop.call_soon(lambda: (log.append("callback"), loop.shutdown(), log.append("returned")))
    loop.serve_forever(poll_interval=5)
    assert log == ["callback", "returned"]  # shutdown() did not block on the loop thread
    assert repr(loop).startswith("<Reactor idle ")


def test_serve_forever_can_run_again_after_shutdown(loop: Reactor) -> None:
    runs = []
    for n in range(2):
        loop.call_soon(lambda: (runs.append(n), loop.shutdown()))
        loop.serve_forever(poll_interval=5)
    assert runs == [0, 1]


def test_is_serving_thread_is_true_only_inside_the_loop(loop: Reactor) -> None:
    seen: list[bool] = []
    assert not loop.is_serving_thread()
    loop.call_soon(lambda: (seen.append(loop.is_serving_thread()), loop.shutdown()))
    loop.serve_forever(poll_interval=5)
    assert seen == [True]
    assert not loop.is_serving_thread()


@pytest.mark.threads
def test_shutdown_from_another_thread_blocks_until_the_loop_has_stopped(loop: Reactor) -> None:
    running = threading.Event()
    after_shutdown: list[str] = []

    def stopper() -> None:
        assert running.wait(10)
        loop.shutdown()
        after_shutdown.append(repr(loop))

    thread = threading.Thread(target=stopper)
    thread.start()
    try:
        loop.call_soon(running.set)
        loop.serve_forever(poll_interval=None)  # type: ignore[arg-type]  # wake-ups only
    finally:
        thread.join()
    assert len(after_shutdown) == 1
    assert after_shutdown[0].startswith("<Reactor idle ")


@pytest.mark.threads
def test_shutdown_from_another_thread_stops_a_stdlib_server(
        loop: Reactor, stdlib_server: CountingTCPServer) -> None:
    loop.register(stdlib_server)
    running = threading.Event()
    replies: list[bytes] = []

    def client_then_stop() -> None:
        assert running.wait(10)
        with client_for(stdlib_server) as client:
            client.sendall(b"from a thread\n")
            replies.append(client.recv(100))
        loop.shutdown()

    thread = threading.Thread(target=client_then_stop)
    thread.start()
    try:
        loop.call_soon(running.set)
        loop.serve_forever(poll_interval=5)
    finally:
        thread.join()
    assert replies == [b"FROM A THREAD\n"]
    assert loop.servers == ()


def test_shutdown_from_a_signal_handler_stops_serve_forever(loop: Reactor) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    try:
        loop.add_signal_handler(signal.SIGUSR1, loop.shutdown)
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        loop.serve_forever(poll_interval=5)
        assert repr(loop).startswith("<Reactor idle ")
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, before)


def test_run_until_refuses_to_run_a_reactor_that_is_already_running(loop: Reactor) -> None:
    def nested() -> None:
        loop.run_until(lambda: True)

    loop.call_soon(nested)
    with pytest.raises(ReactorError, match="already running"):
        loop.serve_forever(poll_interval=0)
    assert not loop.is_serving_thread()
    assert repr(loop).startswith("<Reactor idle ")


def test_run_until_stops_when_its_predicate_holds(loop: Reactor) -> None:
    ticks: list[int] = []
    loop.call_soon(lambda: None)

    def finished() -> bool:
        ticks.append(1)
        return len(ticks) > 3

    loop.run_until(finished, poll_interval=0)
    assert len(ticks) == 4


def test_a_keyboard_interrupt_from_a_callback_leaves_serve_forever(loop: Reactor) -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    loop.call_soon(interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.serve_forever(poll_interval=5)
    assert repr(loop).startswith("<Reactor idle ")
    loop.call_soon(loop.shutdown)
    loop.serve_forever(poll_interval=5)  # the reactor is usable again
