"""Graceful shutdown under load: `shutdown()` while hundreds of clients are mid-request delivers
every accepted request's full response, accepts no new connection, cancels the stragglers at
`shutdown_timeout` (their `handle()` sees `reactor.Cancelled` and its `finally` runs), and
leaves no descriptor, thread or child behind (the autouse `no_leaks` fixture).
Helpers: `test_hostile_support.py`."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

import pytest

import reactor
import servers
from test_hostile_support import (
    ClientProcess, Reply, client, in_thread, listening, needs_fork, on_loop, on_reactor, pump,
    serve_in_thread, server_records)

REPLY_SIZE = 100_000  # larger than one send: replies are still queued when shutdown starts


def reply_for(line: bytes) -> bytes:
    return line.strip() + b" " + b"z" * REPLY_SIZE + b"\n"


def never_served(sock: socket.socket) -> bool:
    """The connection ends without a byte (EOF, or a reset when its listener closed)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    finally:
        sock.close()


def read_reply(sock: socket.socket) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    return bytes(data)


@pytest.mark.slow
@pytest.mark.threads
def test_shutdown_from_another_thread_delivers_every_accepted_request() -> None:
    gate = threading.Event()

    class Handler(servers.StreamRequestHandler):
        async def handle(self) -> None:
            line = await self.rfile.readline()
            if line.startswith(b"wait"):
                while not gate.is_set():  # a handler awaiting an outside event
                    await reactor.sleep(0.01)
            self.wfile.write(reply_for(line))

    partial, waiting = 150, 100
    with in_thread(Handler, servers.TCPServer, request_queue_size=512) as server:
        socks = [client(server.server_address) for _ in range(partial + waiting)]
        for i, sock in enumerate(socks):
            sock.sendall(b"part-%d" % i if i < partial else b"wait-%d\n" % i)
        for _ in range(1000):  # one probe per loop turn
            count = on_loop(server, lambda: len(server.reactor.requests))
            if count == partial + waiting:
                break
        assert count == partial + waiting

        stopper = threading.Thread(target=server.shutdown, name="stopper")
        stopper.start()
        for _ in range(1000):
            state = on_loop(server, lambda: (server.draining, listening(server)))
            if state[0]:
                break
        assert state == (True, False), state
        late = client(server.server_address)  # the kernel queues it; the server must not
        late.sendall(b"late\n")

        for i, sock in enumerate(socks[:partial]):
            sock.sendall(b"\n")  # the partial requests complete after shutdown() began
        gate.set()
        for i, sock in enumerate(socks):
            name = b"part-%d" % i if i < partial else b"wait-%d" % i
            assert read_reply(sock) == reply_for(name), i
            sock.close()
        stopper.join(10)
        assert not stopper.is_alive(), "shutdown() did not return once drained"
    # server_close() has closed the listener: the late connection was never accepted
    assert never_served(late), "a connection made after shutdown() was served"


def test_shutdown_timeout_cancels_stragglers_and_their_finally_runs(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="servers")
    events: list[tuple[str, Any]] = []

    class Handler(servers.StreamRequestHandler):
        async def handle(self) -> None:
            try:
                line = await self.rfile.readline()
                self.wfile.write(reply_for(line))
            except reactor.Cancelled:
                events.append(("cancelled", self.client_address))
                raise
            finally:
                events.append(("finally", self.client_address))

    good_count, straggler_count = 20, 30
    with on_reactor(Handler, shutdown_timeout=30.0, request_queue_size=128) as (server, r, clock):
        good = [client(server.server_address) for _ in range(good_count)]
        stragglers = [client(server.server_address) for _ in range(straggler_count)]
        for sock in good + stragglers:
            sock.sendall(b"begun")  # every request is mid-line
        pump(r, lambda: len(r.requests) == good_count + straggler_count)
        r.shutdown()  # the loop is not running: begins on the next turn
        pump(r, lambda: server.draining)
        assert not listening(server, r)
        for i, sock in enumerate(good):
            sock.sendall(b" %d\n" % i)
        replies = [Reply(sock) for sock in good]
        pump(r, lambda: all(reply.has(b"\n") for reply in replies))
        assert [bytes(reply.data) for reply in replies] == [reply_for(b"begun %d" % i)
                                                            for i in range(good_count)]
        pump(r, lambda: len(r.requests) == straggler_count)
        clock.advance(29)
        for _ in range(5):
            r.run_once(0)
        assert len(r.requests) == straggler_count, "cancelled too early"
        assert not [event for event in events if event[0] == "cancelled"]
        clock.advance(2)
        pump(r, lambda: not r.requests)
        assert server not in r.servers, "a drained server leaves its shared reactor"
        straggler_replies = [Reply(sock) for sock in stragglers]
        pump(r, lambda: all(reply.ended() for reply in straggler_replies))
        assert all(bytes(reply.data) == b"" for reply in straggler_replies)
        for sock in good + stragglers:
            sock.close()
    addresses = {sock_address for kind, sock_address in events if kind == "cancelled"}
    assert len(addresses) == straggler_count
    assert sum(kind == "finally" for kind, _ in events) == good_count + straggler_count
    warnings = [rec.getMessage() for rec in server_records(caplog)]
    assert len(warnings) == 1 and "shutdown_timeout" in warnings[0], warnings


@pytest.mark.slow
@pytest.mark.threads
@pytest.mark.parametrize("style", ["classic", "async"])
def test_threading_shutdown_under_load_loses_nothing_and_joins_every_thread(
        style: str) -> None:
    class Classic(servers.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(reply_for(self.rfile.readline()))

    class Async(servers.StreamRequestHandler):
        async def handle(self) -> None:
            self.wfile.write(reply_for(await self.rfile.readline()))

    count = 100
    server = type("S", (servers.ThreadingTCPServer,), {"request_queue_size": 256})(
        ("127.0.0.1", 0), Classic if style == "classic" else Async)
    thread = serve_in_thread(server)
    try:
        socks = [client(server.server_address) for _ in range(count)]
        for i, sock in enumerate(socks):
            sock.sendall(b"part-%d" % i)
        for _ in range(1000):
            if on_loop(server, lambda: server.request_dispatch.running) == count:
                break
        server.shutdown()  # returns once the loop stopped; the threads keep their requests
        thread.join()
        late_refused = False
        try:
            late = client(server.server_address, timeout=2)
        except OSError:
            late_refused = True
        else:
            late.sendall(b"late\n")
        for i, sock in enumerate(socks):
            sock.sendall(b"\n")
            assert read_reply(sock) == reply_for(b"part-%d" % i)
            sock.close()
    finally:
        server.server_close()  # joins every request thread (block_on_close)
    if not late_refused:
        assert never_served(late)


@needs_fork
@pytest.mark.forking
@pytest.mark.slow
def test_forking_shutdown_under_load_loses_nothing_and_reaps_every_child() -> None:
    clients = """
        socks = [connect() for _ in range(30)]
        for i, sock in enumerate(socks):
            sock.sendall(b"part-%d" % i)
        report("sent")
        assert sys.stdin.readline() == "finish\\n"
        replies = []
        for i, sock in enumerate(socks):
            sock.sendall(b"\\n")
            reply = recv_all(sock)
            replies.append(reply == b"part-%d " % i + b"z" * 100_000 + b"\\n")
        report(all(replies))
    """

    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(reply_for(self.rfile.readline()))

    with on_reactor(Handler, servers.ForkingTCPServer, request_queue_size=64) as (
            server, r, _clock):
        with ClientProcess(clients, server.server_address) as proc:
            proc.wait_lines(r, 1)
            pump(r, lambda: len(server.active_children or ()) == 30)
            r.shutdown()
            pump(r, lambda: server not in r.servers)  # stopped accepting, left the reactor
            proc.send("finish")
            lines = proc.finish(r)
            assert lines[-1] is True
            # The server left the reactor, but its children's pidfds are still watched.
            pump(r, lambda: not server.active_children)
        assert not r.requests
