"""The reactor mode: many servers and many clients on one thread, driven by hand.

The clients here are non-blocking sockets driven from the same thread as the reactor, so every
interleaving is decided by the test (seeded randomness), and nothing waits on wall-clock time
except a generous safety deadline.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from typing import Any, Callable

import pytest

import handlers
import reactor
import servers

SAFETY_SECONDS = 20.0


class UpperLines(handlers.StreamRequestHandler):
    """Async handler: replies to each line with the line in upper case."""

    async def handle(self) -> None:
        async for line in self.rfile:
            self.wfile.write(line.upper())


class ManyClientsTCP(servers.TCPServer):
    request_queue_size = 1024  # a backlog big enough for a burst of a thousand connects


def drive(loop: reactor.Reactor, until: Callable[[], bool], step: Callable[[], None] = lambda: None,
          max_turns: int = 200_000) -> None:
    """Run reactor turns (and `step`) until `until()`; fail after a safety bound."""
    deadline = time.monotonic() + SAFETY_SECONDS
    for _ in range(max_turns):
        if until():
            return
        loop.run_once(0.01)
        step()
        assert time.monotonic() < deadline, "the reactor made no progress in time"
    raise AssertionError("too many turns")


class Client:
    """A non-blocking client that sends a payload in chunks and collects the reply."""

    def __init__(self, address: Any, family: int, payload: bytes, chunks: list[bytes]) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.connect_ex(address)
        self.payload = payload
        self.chunks = list(chunks)
        self.reply = bytearray()

    def send_next(self) -> None:
        if self.chunks:
            try:
                sent = self.sock.send(self.chunks[0])
            except (BlockingIOError, OSError):
                return
            head = self.chunks[0][sent:]
            if head:
                self.chunks[0] = head
            else:
                self.chunks.pop(0)

    def receive(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        self.reply += data

    @property
    def done(self) -> bool:
        return len(self.reply) >= len(self.payload)

    def close(self) -> None:
        self.sock.close()


def split_randomly(data: bytes, rng: random.Random, max_piece: int) -> list[bytes]:
    pieces, start = [], 0
    while start < len(data):
        size = rng.randint(1, max_piece)
        pieces.append(data[start:start + size])
        start += size
    return pieces


@pytest.mark.slow
def test_one_reactor_answers_a_thousand_concurrent_connections_some_trickling() -> None:
    with reactor.Reactor() as loop, ManyClientsTCP(("127.0.0.1", 0), UpperLines) as server:
        loop.register(server)
        clients = []
        for number in range(1000):
            payload = b"client %d says hello\n" % number
            # every tenth client trickles its line a byte at a time
            chunks = [payload[i:i + 1] for i in range(len(payload))] if number % 10 == 0 \
                else [payload]
            clients.append(Client(server.server_address, socket.AF_INET, payload, chunks))
        try:
            drive(loop, lambda: len(loop.requests) == 1000)
            # every connection is in the table, waiting for its first line
            assert {entry.state for entry in loop.requests} == {"reading"}
            assert all(entry.server is server for entry in loop.requests)

            def step() -> None:
                for client in clients:
                    client.send_next()
                    client.receive()

            drive(loop, lambda: all(c.done for c in clients), step)
            for client in clients:
                assert bytes(client.reply) == client.payload.upper()
        finally:
            for client in clients:
                client.close()
        drive(loop, lambda: len(loop.requests) == 0)
        loop.unregister(server)


def test_clients_advancing_in_random_order_and_vanishing_mid_request_leave_no_trace() -> None:
    rng = random.Random(7)
    with reactor.Reactor() as loop, ManyClientsTCP(("127.0.0.1", 0), UpperLines) as server:
        loop.register(server)
        clients: list[Client] = []
        vanishing: set[int] = set()
        for number in range(200):
            payload = b"".join(b"request %d.%d %s\n" % (number, k, bytes(rng.randrange(97, 123)
                               for _ in range(rng.randint(1, 40)))) for k in range(3))
            clients.append(Client(server.server_address, socket.AF_INET, payload,
                                  split_randomly(payload, rng, 9)))
            if number % 7 == 3:
                vanishing.add(number)
        try:
            order = list(range(len(clients)))

            def step() -> None:
                rng.shuffle(order)
                for index in order[: len(order) // 2]:
                    client = clients[index]
                    if client.sock.fileno() < 0:
                        continue
                    if index in vanishing and len(client.chunks) <= 2:
                        # reset mid-request: SO_LINGER 0 makes close() send RST
                        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                        client.close()
                        continue
                    client.send_next()
                    client.receive()

            def settled() -> bool:
                return all(c.done for i, c in enumerate(clients) if i not in vanishing) and \
                    all(clients[i].sock.fileno() < 0 for i in vanishing)

            drive(loop, settled, step)
            for index, client in enumerate(clients):
                if index not in vanishing:
                    assert bytes(client.reply) == client.payload.upper()
        finally:
            for client in clients:
                client.close()
        drive(loop, lambda: len(loop.requests) == 0)
        assert loop.statistics()["descriptors"] == 1  # only the listening socket is watched
        loop.unregister(server)


class DatagramUpper(handlers.DatagramRequestHandler):
    """Async datagram handler; a datagram b"hold" stays in the table until released."""

    release = False

    async def handle(self) -> None:
        data = self.rfile.read()
        while data == b"hold" and not DatagramUpper.release:
            await reactor.sleep(0.01)
        self.wfile.write(data.upper())


def test_four_servers_on_one_thread_each_answer_while_the_others_hold_slow_clients(
        unix_path: str) -> None:
    threads_before = threading.active_count()
    DatagramUpper.release = False
    with reactor.Reactor() as loop, \
            servers.TCPServer(("127.0.0.1", 0), UpperLines) as tcp, \
            servers.UDPServer(("127.0.0.1", 0), DatagramUpper) as udp, \
            servers.UnixStreamServer(unix_path, UpperLines) as unix_stream, \
            servers.UnixDatagramServer(unix_path + ".dgram", DatagramUpper) as unix_dgram:
        for server in (tcp, udp, unix_stream, unix_dgram):
            loop.register(server)
        client_path = unix_path + ".client"
        sockets = []
        try:
            # slow clients: half a line on each stream server, a held datagram on each
            # datagram server
            slow_tcp = socket.create_connection(tcp.server_address)
            slow_unix = socket.socket(socket.AF_UNIX)
            slow_unix.connect(unix_stream.server_address)
            udp_client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            unix_client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            unix_client.bind(client_path)
            sockets += [slow_tcp, slow_unix, udp_client, unix_client]
            for sock in sockets:
                sock.setblocking(False)
            slow_tcp.send(b"half a li")
            slow_unix.send(b"half a li")
            udp_client.sendto(b"hold", udp.server_address)
            unix_client.sendto(b"hold", unix_dgram.server_address)
            drive(loop, lambda: len(loop.requests) == 4)

            # meanwhile each server answers a fresh client
            fast_tcp = socket.create_connection(tcp.server_address)
            fast_unix = socket.socket(socket.AF_UNIX)
            fast_unix.connect(unix_stream.server_address)
            sockets += [fast_tcp, fast_unix]
            for sock in (fast_tcp, fast_unix):
                sock.setblocking(False)
                sock.send(b"quick\n")
            udp_fast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp_fast.setblocking(False)
            sockets.append(udp_fast)
            udp_fast.sendto(b"quick", udp.server_address)
            replies: dict[str, bytes] = {}

            def collect() -> None:
                for name, sock in (("tcp", fast_tcp), ("unix", fast_unix), ("udp", udp_fast)):
                    try:
                        replies.setdefault(name, sock.recv(100))
                    except BlockingIOError:
                        pass

            drive(loop, lambda: len(replies) == 3, collect)
            assert replies == {"tcp": b"QUICK\n", "unix": b"QUICK\n", "udp": b"QUICK"}
            assert len(loop.requests) >= 4  # the slow ones are still there
            assert threading.active_count() == threads_before

            # the slow clients complete
            DatagramUpper.release = True
            slow_tcp.send(b"ne\n")
            slow_unix.send(b"ne\n")
            done: dict[str, bytes] = {}

            def collect_slow() -> None:
                for name, sock in (("tcp", slow_tcp), ("unix", slow_unix), ("udp", udp_client),
                                   ("unixgram", unix_client)):
                    try:
                        done.setdefault(name, sock.recv(100))
                    except BlockingIOError:
                        pass

            drive(loop, lambda: len(done) == 4, collect_slow)
            assert done == {"tcp": b"HALF A LINE\n", "unix": b"HALF A LINE\n", "udp": b"HOLD",
                            "unixgram": b"HOLD"}
        finally:
            for sock in sockets:
                sock.close()
        drive(loop, lambda: len(loop.requests) == 0)
        for server in (tcp, udp, unix_stream, unix_dgram):
            loop.unregister(server)


@pytest.mark.threads
def test_shutting_down_one_server_leaves_the_others_on_the_reactor_serving() -> None:
    with reactor.Reactor() as loop, \
            servers.TCPServer(("127.0.0.1", 0), UpperLines) as first, \
            servers.TCPServer(("127.0.0.1", 0), UpperLines) as second:
        loop.register(first)
        loop.register(second)
        thread = threading.Thread(target=loop.serve_forever)
        thread.start()
        try:
            first.shutdown()  # blocks until `first` has left the reactor
            assert first not in loop.servers
            assert second in loop.servers
            with socket.create_connection(second.server_address, timeout=10) as client:
                client.sendall(b"still here\n")
                assert client.recv(100) == b"STILL HERE\n"
        finally:
            loop.shutdown()
            thread.join()


class Gate(handlers.StreamRequestHandler):
    """Async handler that reports where it runs, then echoes one line."""

    async def handle(self) -> None:
        line = await self.rfile.readline()
        where = "reactor" if self.reactor is not None else "blocking"
        self.wfile.write(b"%s %s" % (where.encode(), line))


@pytest.mark.threads
def test_the_same_async_handler_runs_in_a_thread_with_blocking_io(serving: Any) -> None:
    with serving(servers.ThreadingTCPServer(("127.0.0.1", 0), Gate)) as server:
        with socket.create_connection(server.server_address, timeout=10) as client:
            client.sendall(b"hi\n")
            assert client.recv(100) == b"blocking hi\n"


@pytest.mark.forking
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_the_same_async_handler_runs_in_a_forked_child() -> None:
    with servers.ForkingTCPServer(("127.0.0.1", 0), Gate) as server:
        with socket.create_connection(server.server_address, timeout=10) as client:
            client.sendall(b"hi\n")
            server.handle_request()  # forks; the child serves the connection and exits
            assert client.recv(100) == b"blocking hi\n"
        server.collect_children(blocking=True)
        assert not server.active_children


@pytest.mark.threads
def test_the_table_shows_a_handed_off_request_while_its_thread_runs() -> None:
    release = threading.Event()
    seen: list[str] = []

    class Held(handlers.StreamRequestHandler):
        def handle(self) -> None:
            release.wait(10)
            self.wfile.write(b"done\n")

    with reactor.Reactor() as loop, servers.ThreadingTCPServer(("127.0.0.1", 0), Held) as server:
        loop.register(server)
        with socket.create_connection(server.server_address, timeout=10) as client:
            drive(loop, lambda: len(loop.requests) == 1)
            seen.append(loop.requests[0].state)
            assert repr(loop.requests[0]).startswith("<RequestEntry #1 OFFLOADED thread")
            release.set()
            assert client.recv(100) == b"done\n"
            drive(loop, lambda: len(loop.requests) == 0)
        loop.unregister(server)
    assert seen == ["in-thread"]
