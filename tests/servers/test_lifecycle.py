"""One request lifecycle: work before the handler (read-ahead) is a stage of the same table
entry, and shutdown() from a plain signal handler stops a loop sleeping in select()."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from conftest import connect, recv_line

import reactor
import servers


class Upper(servers.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline().upper())


class HeldServer(servers.TCPServer):
    read_ahead = b"\n"


def test_a_request_completing_read_ahead_during_shutdown_is_served_inside_the_table() -> None:
    """Its first line arrives after shutdown() began: the server must not declare itself
    drained (and leave the shared reactor) before that request has run."""
    inside: list[bool] = []

    class Probe(Upper):
        def handle(self) -> None:
            inside.append(self.server in loop.servers and len(loop.requests) == 1)
            super().handle()

    with reactor.Reactor() as loop, HeldServer(("127.0.0.1", 0), Probe) as server:
        loop.register(server)
        held = connect(server.server_address)
        held.sendall(b"first half ")
        while not loop.requests:  # the connection is held, in the table
            loop.run_once(1.0)
        entry = loop.requests[0]
        assert entry.state == "reading-ahead"
        loop.call_soon(loop.shutdown)
        for _ in range(3):  # shutdown() queues the drain for the next turn: let it begin
            loop.run_once(0)
        assert server in loop.servers
        held.sendall(b"second half\n")
        finished = threading.Event()
        threading.Thread(target=lambda: (loop.serve_forever(0.05), finished.set()),
                         daemon=True).start()
        assert recv_line(held) == b"FIRST HALF SECOND HALF\n"
        assert finished.wait(10)
        assert inside == [True]  # served while still registered, its entry in the table
        assert entry.stage is reactor.Stage.CLOSED  # the same entry went on to the handler
        assert server not in loop.servers
        held.close()


def test_the_entry_keeps_its_id_from_read_ahead_to_the_handler() -> None:
    seen: list[tuple[int, str]] = []

    class Probe(servers.StreamRequestHandler):
        def handle(self) -> None:
            (entry,) = self.server.reactor.requests
            seen.append((entry.id, entry.state))
            self.wfile.write(self.rfile.readline())

    with reactor.Reactor() as loop, HeldServer(("127.0.0.1", 0), Probe) as server:
        loop.register(server)
        client = connect(server.server_address)
        client.sendall(b"pa")
        while not loop.requests:
            loop.run_once(1.0)
        first_id = loop.requests[0].id
        client.sendall(b"rt\n")
        while not seen:
            loop.run_once(1.0)
        assert seen == [(first_id, "handling")]
        assert recv_line(client) == b"part\n"
        client.close()


@pytest.mark.timeout(20)
def test_shutdown_from_a_signal_handler_stops_a_loop_sleeping_in_select() -> None:
    server = servers.TCPServer(("127.0.0.1", 0), Upper)
    previous = signal.signal(signal.SIGALRM, lambda *_: server.shutdown())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        started = time.monotonic()
        server.serve_forever(poll_interval=30)
        assert time.monotonic() - started < 10  # not the 30 s poll interval
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        server.server_close()
