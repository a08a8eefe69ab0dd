"""DatagramRequestHandler: one datagram in, one reply out, always."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from handlers import DatagramRequestHandler, deferred_start
from reactor import Reactor, checkpoint
from reactor.testing import run_until_idle


class Server:
    def handle_error(self, request: Any, client_address: Any) -> None:  # pragma: no cover
        raise AssertionError("not expected")


@pytest.fixture
def udp() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server socket, client socket), bound on loopback."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        client.settimeout(10)
        yield server, client
    finally:
        server.close()
        client.close()


def receive_request(server: socket.socket) -> tuple[tuple[bytes, socket.socket], Any]:
    data, address = server.recvfrom(8192)
    return (data, server), address


class Reverse(DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read()[::-1])


class AsyncReverse(DatagramRequestHandler):
    async def handle(self) -> None:
        self.wfile.write(self.rfile.read()[::-1])


class Silent(DatagramRequestHandler):
    def handle(self) -> None:
        pass


def test_classic_handler_gets_the_packet_and_replies_to_the_sender(udp) -> None:
    server, client = udp
    client.sendto(b"stressed", server.getsockname())
    request, address = receive_request(server)
    handler = Reverse(request, address, Server())
    assert handler.packet == b"stressed"
    assert handler.socket is server
    assert client.recvfrom(100) == (b"desserts", server.getsockname())
    assert server.fileno() != -1  # the shared socket stays open


def test_the_reply_is_sent_even_when_empty(udp) -> None:
    server, client = udp
    client.sendto(b"anything", server.getsockname())
    request, address = receive_request(server)
    Silent(request, address, Server())
    assert client.recvfrom(100) == (b"", server.getsockname())


def test_the_reply_is_sent_even_when_handle_raises(udp) -> None:
    server, client = udp

    class Partial(DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"partial")
            raise ValueError("broken")

    client.sendto(b"x", server.getsockname())
    request, address = receive_request(server)
    with pytest.raises(ValueError):
        Partial(request, address, Server())
    assert client.recv(100) == b"partial"


def test_async_handler_outside_a_reactor_replies(udp) -> None:
    server, client = udp
    client.sendto(b"live", server.getsockname())
    request, address = receive_request(server)
    handler = AsyncReverse(request, address, Server())
    assert handler.reactor is None
    assert client.recv(100) == b"evil"


def test_async_handler_on_a_reactor_replies_without_blocking(loop: Reactor, udp) -> None:
    server, client = udp
    client.sendto(b"drawer", server.getsockname())
    request, address = receive_request(server)
    with deferred_start(loop) as slot:
        AsyncReverse(request, address, Server())
    task = loop.spawn(slot.coroutine)  # type: ignore[arg-type]
    run_until_idle(loop)
    assert task.done and task.error is None
    assert client.recv(100) == b"reward"
    assert server.gettimeout() is None  # the shared socket was not switched to non-blocking


def test_async_setup_and_finish_are_awaited_in_order(loop: Reactor, udp) -> None:
    server, client = udp
    order: list[str] = []

    class Phases(DatagramRequestHandler):
        async def setup(self) -> None:
            super().setup()
            await checkpoint()  # suspends: the rest runs on a later turn
            order.append("setup")

        async def handle(self) -> None:
            order.append("handle")
            self.wfile.write(self.rfile.read() + b"+handled")

        async def finish(self) -> None:
            await checkpoint()
            order.append("finish")
            super().finish()

    client.sendto(b"data", server.getsockname())
    request, address = receive_request(server)
    with deferred_start(loop) as slot:
        Phases(request, address, Server())
    task = loop.spawn(slot.coroutine)  # type: ignore[arg-type]
    run_until_idle(loop)
    assert task.done and task.error is None
    assert order == ["setup", "handle", "finish"]
    assert client.recv(100) == b"data+handled"


def test_async_handler_whose_setup_raises_skips_handle_and_finish(udp) -> None:
    server, client = udp
    calls: list[str] = []

    class BrokenSetup(DatagramRequestHandler):
        def setup(self) -> None:
            raise ValueError("no setup")

        async def handle(self) -> None:  # pragma: no cover - must not run
            calls.append("handle")

        def finish(self) -> None:  # pragma: no cover - must not run
            calls.append("finish")

    client.sendto(b"x", server.getsockname())
    request, address = receive_request(server)
    with pytest.raises(ValueError, match="no setup"):
        BrokenSetup(request, address, Server())  # off a reactor: run to completion here
    assert calls == []


def test_async_handler_that_raises_still_sends_its_reply(udp) -> None:
    server, client = udp

    class Partial(DatagramRequestHandler):
        async def handle(self) -> None:
            self.wfile.write(b"partial")
            raise ValueError("broken")

    client.sendto(b"x", server.getsockname())
    request, address = receive_request(server)
    with pytest.raises(ValueError, match="broken"):
        Partial(request, address, Server())
    assert client.recv(100) == b"partial"


def test_rfile_and_wfile_are_in_memory(udp) -> None:
    server, client = udp
    seen: list[Any] = []

    class Inspect(DatagramRequestHandler):
        def handle(self) -> None:
            seen.append(self.rfile.readline())
            seen.append(self.rfile.read())
            self.wfile.write(b"a")
            self.wfile.write(b"b")

    client.sendto(b"line\nrest", server.getsockname())
    request, address = receive_request(server)
    Inspect(request, address, Server())
    assert seen == [b"line\n", b"rest"]
    assert client.recv(100) == b"ab"  # one datagram with everything written


@pytest.fixture
def unix_dgram() -> Iterator[tuple[socket.socket, socket.socket, str]]:
    with tempfile.TemporaryDirectory(prefix="dgram-") as directory:
        server_path = os.path.join(directory, "server")
        client_path = os.path.join(directory, "client")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            server.bind(server_path)
            client.bind(client_path)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            yield server, client, client_path
        finally:
            server.close()
            client.close()


def test_on_a_reactor_a_reply_to_a_full_peer_is_dropped_and_logged(loop: Reactor, unix_dgram,
                                                                   caplog) -> None:
    server, client, client_path = unix_dgram
    server.setblocking(False)
    sent = 0
    while True:  # fill the client's receive queue until the kernel refuses more
        try:
            server.sendto(b"f" * 512, client_path)
            sent += 1
        except BlockingIOError:
            break
    server.setblocking(True)
    assert sent > 0
    with deferred_start(loop) as slot:
        AsyncReverse((b"hello", server), client_path, Server())
    task = loop.spawn(slot.coroutine)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="handlers"):
        run_until_idle(loop)  # must not block the loop on the full peer
    assert task.done and task.error is None
    assert any("dropped" in record.getMessage() for record in caplog.records)
