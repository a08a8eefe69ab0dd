"""serve_forever(), shutdown(), handle_request() and their timeouts; the context manager."""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import Any

import pytest

import servers
from conftest import connect, recv_line

HOST = "127.0.0.1"


class Echo(servers.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def exchange(server: Any, payload: bytes = b"ping\n") -> bytes:
    with connect(server.server_address) as client:
        client.sendall(payload)
        return recv_line(client)


class TimeoutServer(servers.TCPServer):
    timed_out = 0

    def handle_timeout(self) -> Any:
        self.timed_out += 1
        return ("timed out", self.timed_out)


# ------------------------------------------------------------------------ handle_request
def test_handle_request_returns_handle_timeouts_value_after_self_timeout() -> None:
    with TimeoutServer((HOST, 0), Echo) as server:
        server.timeout = 0.05
        start = time.monotonic()
        assert server.handle_request() == ("timed out", 1)
        assert time.monotonic() - start >= 0.04
        assert server.handle_request() == ("timed out", 2)


def test_handle_request_waits_for_the_smaller_of_socket_timeout_and_self_timeout() -> None:
    with TimeoutServer((HOST, 0), Echo) as server:
        server.timeout = 60
        server.socket.settimeout(0.05)
        assert server.handle_request() == ("timed out", 1)
        server.timeout = 0.05
        server.socket.settimeout(60)
        assert server.handle_request() == ("timed out", 2)


def test_handle_request_uses_the_socket_timeout_when_self_timeout_is_none() -> None:
    with TimeoutServer((HOST, 0), Echo) as server:
        assert server.timeout is None
        server.socket.settimeout(0.05)
        assert server.handle_request() == ("timed out", 1)
        assert server.socket.gettimeout() == 0.05, "the server must not change the timeout"


def test_handle_request_with_a_timeout_still_serves_a_waiting_request() -> None:
    with TimeoutServer((HOST, 0), Echo) as server:
        server.timeout = 5
        with connect(server.server_address) as client:
            client.sendall(b"quick\n")
            assert server.handle_request() is None
            assert recv_line(client) == b"quick\n"
        assert server.timed_out == 0


def test_handle_request_zero_timeout_polls_once() -> None:
    with TimeoutServer((HOST, 0), Echo) as server:
        server.timeout = 0
        assert server.handle_request() == ("timed out", 1)


def test_handle_request_zero_timeout_still_serves_a_pending_request() -> None:
    with TimeoutServer((HOST, 0), Echo) as server:
        server.timeout = 0
        with connect(server.server_address) as client:
            client.sendall(b"poll\n")
            # connect() returned: the connection is in the accept queue already
            assert server.handle_request() is None, "a zero-timeout poll must serve it"
            assert recv_line(client) == b"poll\n"
        assert server.timed_out == 0


def test_default_handle_timeout_returns_none() -> None:
    with servers.TCPServer((HOST, 0), Echo) as server:
        server.timeout = 0.01
        assert server.handle_request() is None


def test_handle_request_after_serve_forever_returned_still_works() -> None:
    class Server(servers.TCPServer):
        def service_actions(self) -> None:
            self.shutdown()

    with Server((HOST, 0), Echo) as server:
        server.serve_forever(poll_interval=0.01)
        with connect(server.server_address) as client:
            client.sendall(b"later\n")
            server.handle_request()
            assert recv_line(client) == b"later\n"


def test_listening_socket_stays_blocking_as_far_as_python_can_tell() -> None:
    with servers.TCPServer((HOST, 0), Echo) as server:
        assert server.socket.gettimeout() is None
        with connect(server.server_address) as client:
            client.sendall(b"x\n")
            server.handle_request()
            assert recv_line(client) == b"x\n"
        assert server.socket.gettimeout() is None


# ------------------------------------------------------------------------ serve_forever
def test_serve_forever_calls_service_actions_every_turn_and_ignores_timeout() -> None:
    class Server(TimeoutServer):
        turns = 0

        def service_actions(self) -> None:
            self.turns += 1
            if self.turns == 5:
                self.shutdown()

    with Server((HOST, 0), Echo) as server:
        server.timeout = 0.001
        server.serve_forever(poll_interval=0.001)
        assert server.turns == 5
        assert server.timed_out == 0, "serve_forever() never calls handle_timeout()"


@pytest.mark.threads
def test_serve_forever_can_run_again_after_shutdown() -> None:
    server = servers.TCPServer((HOST, 0), Echo)
    try:
        for round_ in range(3):
            thread = threading.Thread(target=server.serve_forever, args=(0.01,))
            thread.start()
            try:
                assert exchange(server, b"round %d\n" % round_) == b"round %d\n" % round_
            finally:
                server.shutdown()
                thread.join()
    finally:
        server.server_close()


@pytest.mark.threads
def test_shutdown_called_before_serve_forever_starts_still_stops_it() -> None:
    pairs = []
    for _ in range(20):
        server = servers.TCPServer((HOST, 0), Echo)
        pairs.append((server, threading.Thread(target=server.serve_forever, args=(0.01,))))
    try:
        for server, thread in pairs:
            thread.start()
            server.shutdown()
        for server, thread in pairs:
            thread.join(10)
            assert not thread.is_alive()
    finally:
        for server, thread in pairs:
            server.server_close()


def test_shutdown_after_the_loop_ended_makes_the_next_serve_forever_return_at_once() -> None:
    class Server(servers.TCPServer):
        stop_at_first_turn = True

        def service_actions(self) -> None:
            if self.stop_at_first_turn:
                self.shutdown()

    with Server((HOST, 0), Echo) as server:
        server.serve_forever(poll_interval=0.01)
        server.stop_at_first_turn = False
        server.shutdown()  # nothing is serving: returns at once, the stop request stays set
        server.serve_forever(poll_interval=60)  # ...so this returns at once
        assert not server.accepting and not server.draining
        assert repr(server) == f"<Server({server.server_address!r})>"  # not serving


def test_shutdown_from_a_handler_on_the_serving_thread_does_not_deadlock() -> None:
    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            self.server.shutdown()
            self.wfile.write(b"stopping\n")

    with servers.TCPServer((HOST, 0), Handler) as server:
        with connect(server.server_address) as client:
            server.serve_forever(poll_interval=60)  # no thread: the handler stops it
            assert recv_line(client) == b"stopping\n"


def test_shutdown_from_service_actions_stops_serve_forever_without_another_poll() -> None:
    class Server(servers.TCPServer):
        def service_actions(self) -> None:
            self.shutdown()

    with Server((HOST, 0), Echo) as server:
        with connect(server.server_address) as client:
            client.sendall(b"first\n")
            # The request makes the first turn end at once; service_actions() then asks to
            # stop, and the loop must not wait poll_interval (60 s) before it notices.
            server.serve_forever(poll_interval=60)
            assert recv_line(client) == b"first\n"


@pytest.mark.threads
def test_shutdown_from_a_request_thread_of_a_threading_server(serving: Any) -> None:
    returned = threading.Event()

    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            self.server.shutdown()  # blocks until serve_forever() has returned
            returned.set()
            self.wfile.write(b"stopped\n")

    server = servers.ThreadingTCPServer((HOST, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(60,))
    thread.start()
    try:
        with connect(server.server_address) as client:
            client.sendall(b"stop\n")
            assert recv_line(client) == b"stopped\n"
        thread.join(10)
        assert not thread.is_alive()
        assert returned.is_set()
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.mark.threads
def test_shutdown_returns_only_after_serve_forever_has_stopped() -> None:
    server = servers.TCPServer((HOST, 0), Echo)
    thread = threading.Thread(target=server.serve_forever, args=(60,))
    thread.start()
    try:
        assert exchange(server) == b"ping\n"
        server.shutdown()
        thread.join(0.5)
        assert not thread.is_alive(), "shutdown() returned while serve_forever() still ran"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.mark.threads
def test_shutdown_takes_effect_without_waiting_for_poll_interval() -> None:
    server = servers.TCPServer((HOST, 0), Echo)
    thread = threading.Thread(target=server.serve_forever, args=(60,))
    thread.start()
    try:
        assert exchange(server) == b"ping\n"  # the loop is surely running now
        start = time.monotonic()
        server.shutdown()
        assert time.monotonic() - start < 5
    finally:
        thread.join()
        server.server_close()


# ------------------------------------------------------------------------ context manager
def test_context_manager_returns_the_server_and_closes_it() -> None:
    with servers.TCPServer((HOST, 0), Echo) as server:
        assert isinstance(server, servers.TCPServer)
        assert server.socket.fileno() != -1
    assert server.socket.fileno() == -1


def test_context_manager_closes_on_error_and_does_not_swallow_it() -> None:
    with pytest.raises(KeyError):
        with servers.UDPServer((HOST, 0), servers.DatagramRequestHandler) as server:
            raise KeyError("inside")
    assert server.socket.fileno() == -1


def test_base_server_context_manager_calls_server_close() -> None:
    class Server(servers.BaseServer):
        closed = 0

        def server_close(self) -> None:
            self.closed += 1

    with Server(("nowhere", 0), Echo) as server:
        assert server.closed == 0
    assert server.closed == 1


def test_server_close_twice_is_harmless() -> None:
    server = servers.TCPServer((HOST, 0), Echo)
    server.server_close()
    server.server_close()
    assert server.socket.fileno() == -1


class DatagramEcho(servers.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


@pytest.mark.threads
@pytest.mark.parametrize("cls", [servers.TCPServer, servers.UDPServer])
def test_a_listening_socket_with_a_timeout_does_not_stall_serve_forever(cls: type) -> None:
    """xmlrpc and asyncio tests call server.socket.settimeout(); the loop must still only
    call get_request() when a request is there, and shutdown() must be prompt."""
    handler = Echo if cls is servers.TCPServer else DatagramEcho
    server = cls((HOST, 0), handler, bind_and_activate=False)
    server.socket.settimeout(20)
    server.server_bind()
    server.server_activate()
    thread = threading.Thread(target=server.serve_forever, args=(0.01,))
    thread.start()
    try:
        for n in range(2):
            if cls is servers.TCPServer:
                assert exchange(server, b"%d\n" % n) == b"%d\n" % n
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                    client.settimeout(10)
                    client.sendto(b"%d" % n, server.server_address)
                    assert client.recv(10) == b"%d" % n
        start = time.monotonic()
        server.shutdown()
        assert time.monotonic() - start < 5, "the loop sat in a blocking get_request()"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


class Interrupted(Exception):
    pass


@pytest.mark.threads
@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
@pytest.mark.parametrize("loop", ["handle_request", "serve_forever"])
def test_exception_from_a_signal_handler_propagates_out_of_the_loop(loop: str) -> None:
    fired = threading.Event()
    inside = threading.Event()

    class Server(servers.TCPServer):
        def handle_request(self) -> Any:
            inside.set()
            try:
                return super().handle_request()
            finally:
                inside.clear()

        def serve_forever(self, poll_interval: float = 0.5) -> None:
            inside.set()
            try:
                super().serve_forever(poll_interval)
            finally:
                inside.clear()

    def on_signal(signum: int, frame: Any) -> None:
        if inside.is_set():
            fired.set()
            raise Interrupted()

    main = threading.get_ident()

    def kick() -> None:
        for _ in range(200):  # until the handler ran inside the loop
            signal.pthread_kill(main, signal.SIGUSR1)
            if fired.wait(0.05):
                return

    previous = signal.signal(signal.SIGUSR1, on_signal)
    kicker = threading.Thread(target=kick)
    try:
        with Server((HOST, 0), Echo) as server:
            with pytest.raises(Interrupted):
                kicker.start()
                if loop == "handle_request":
                    server.handle_request()  # no timeout: only the signal ends it
                else:
                    server.serve_forever(poll_interval=60)
            kicker.join()
            assert fired.is_set()
            if loop == "serve_forever":
                server.shutdown()  # the loop is over: must not block
            with connect(server.server_address) as client:  # the server still works
                client.sendall(b"after\n")
                server.handle_request()
                assert recv_line(client) == b"after\n"
    finally:
        if kicker.is_alive():
            fired.set()
            kicker.join()
        signal.signal(signal.SIGUSR1, previous)
