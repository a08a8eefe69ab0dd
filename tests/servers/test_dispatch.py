"""Where handlers run (`server.request_dispatch`), as a user inspects it: its kind, what it
runs now, its bound, and the server's `accepting` / `draining` state and `repr()`."""

from __future__ import annotations

import threading

import pytest

import servers
from servers.dispatch import LoopDispatch, ThreadDispatch
from test_hostile_support import Reply, client, in_thread, on_loop, on_reactor, pump


class ParkedEcho(servers.StreamRequestHandler):
    async def handle(self) -> None:
        self.wfile.write(await self.rfile.readline())


def test_a_plain_server_runs_its_async_requests_on_the_loop() -> None:
    with on_reactor(ParkedEcho) as (server, r, _clock):
        dispatch = server.request_dispatch
        assert isinstance(dispatch, LoopDispatch) and dispatch is server.request_dispatch
        assert (dispatch.kind, dispatch.handshake_in_worker, dispatch.running) == (
            "loop", False, 0)
        socks = [client(server.server_address) for _ in range(3)]
        pump(r, lambda: dispatch.running == 3)
        assert server.accepting and not server.draining
        assert "accepting, 3 in flight" in repr(server)
        assert "<LoopDispatch running=3>" in repr(server)
        for i, sock in enumerate(socks):
            sock.sendall(b"%d\n" % i)
            reply = Reply(sock)
            pump(r, lambda: reply.has(b"\n"))
            assert bytes(reply.data) == b"%d\n" % i
            sock.close()
        pump(r, lambda: dispatch.running == 0)


@pytest.mark.threads
def test_a_threading_server_counts_its_threads_and_pauses_at_max_threads() -> None:
    release = threading.Event()
    started = threading.Semaphore(0)

    class Held(servers.StreamRequestHandler):
        def handle(self) -> None:
            started.release()
            release.wait(10)
            self.wfile.write(self.rfile.readline())

    with in_thread(Held, max_threads=2, request_queue_size=8) as server:
        dispatch = server.request_dispatch
        assert isinstance(dispatch, ThreadDispatch)
        assert (dispatch.kind, dispatch.handshake_in_worker) == ("thread", True)
        socks = [client(server.server_address) for _ in range(3)]
        try:
            for _ in range(2):
                assert started.acquire(timeout=10)
            state = on_loop(server, lambda: (dispatch.running, dispatch.has_room(),
                                             server.accepting, dispatch.joinable, repr(server)))
            assert state[:4] == (2, False, False, 2)
            assert "paused, 2 in flight" in state[4]
            assert "ThreadDispatch running=2 max_threads=2 joinable=2" in state[4]
            release.set()
            for i, sock in enumerate(socks):
                sock.sendall(b"line %d\n" % i)
                assert sock.recv(100) == b"line %d\n" % i
        finally:
            for sock in socks:
                sock.close()
        for _ in range(500):  # each probe is one loop turn; the threads report their end
            state = on_loop(server, lambda: (dispatch.running, server.accepting))
            if state == (0, True):
                break
        assert state == (0, True)
    assert dispatch.joinable == 0  # server_close() joined the rest


def test_a_server_not_yet_serving_shows_only_its_address() -> None:
    with servers.TCPServer(("127.0.0.1", 0), ParkedEcho) as server:
        assert repr(server) == f"<TCPServer({server.server_address!r})>"
        assert not server.accepting and not server.draining
