"""StreamRequestHandler (classic files and async files) and SocketWriter."""

from __future__ import annotations

import array
import io
import logging
import selectors
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SELECTOR_CLASSES

import reactor
from handlers import AsyncReader, AsyncWriter, SocketWriter, StreamRequestHandler, deferred_start
from reactor import Reactor, Stage
from reactor.testing import FakeClock, run_until_idle



class Server:
    def __init__(self) -> None:
        self.errors: list[Any] = []

    def handle_error(self, request: Any, client_address: Any) -> None:  # pragma: no cover
        self.errors.append(client_address)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server side, client side); both blocking, with a safety timeout on the client."""
    server_side, client = socket.socketpair()
    client.settimeout(10)
    try:
        yield server_side, client
    finally:
        server_side.close()
        client.close()


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        server_side, _ = listener.accept()
    try:
        yield server_side, client
    finally:
        server_side.close()
        client.close()




def recv_all(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


# ------------------------------------------------------------------------ classic handlers
def test_classic_handler_reads_lines_and_writes_replies(pair) -> None:
    server_side, client = pair
    seen: dict[str, Any] = {}

    class Echo(StreamRequestHandler):
        def handle(self) -> None:
            seen["rfile"], seen["wfile"] = type(self.rfile), type(self.wfile)
            seen["connection"] = self.connection
            for line in self.rfile:
                seen.setdefault("count", self.wfile.write(line.upper()))

    client.sendall(b"one\ntwo\n")
    client.shutdown(socket.SHUT_WR)
    Echo(server_side, "peer", Server())
    server_side.shutdown(socket.SHUT_WR)
    assert recv_all(client) == b"ONE\nTWO\n"
    assert seen["rfile"] is io.BufferedReader
    assert seen["wfile"] is SocketWriter
    assert seen["connection"] is server_side
    assert seen["count"] == 4  # write() returns the byte count


def test_rbufsize_zero_gives_a_raw_unbuffered_rfile(pair) -> None:
    server_side, client = pair
    seen: list[Any] = []

    class Raw(StreamRequestHandler):
        rbufsize = 0

        def handle(self) -> None:
            seen.append(self.rfile)
            seen.append(self.rfile.read(3))

    client.sendall(b"abcdef")
    Raw(server_side, "peer", Server())
    assert isinstance(seen[0], socket.SocketIO)
    assert seen[1] == b"abc"
    assert server_side.recv(10) == b"def"  # unbuffered: nothing was read ahead


def test_wbufsize_gives_a_buffered_wfile_flushed_at_finish(pair) -> None:
    server_side, client = pair
    seen: list[Any] = []

    class Buffered(StreamRequestHandler):
        wbufsize = 8192

        def handle(self) -> None:
            self.wfile.write(b"held ")
            self.wfile.write(b"back")
            client.setblocking(False)
            try:
                client.recv(100)
                seen.append("sent early")  # pragma: no cover
            except BlockingIOError:
                seen.append("still buffered")
            finally:
                client.settimeout(10)
            seen.append(type(self.wfile))

    Buffered(server_side, "peer", Server())
    assert seen == ["still buffered", io.BufferedWriter]
    assert client.recv(100) == b"held back"


def test_finish_closes_the_files_but_not_the_connection(pair) -> None:
    server_side, client = pair
    handler = StreamRequestHandler(server_side, "peer", Server())
    assert handler.rfile.closed and handler.wfile.closed
    assert server_side.fileno() != -1
    server_side.sendall(b"still open")
    assert client.recv(100) == b"still open"


def test_classic_timeout_is_set_on_the_connection(pair) -> None:
    server_side, _ = pair
    seen: list[float | None] = []

    class Timed(StreamRequestHandler):
        timeout = 7.5

        def handle(self) -> None:
            seen.append(self.connection.gettimeout())

    Timed(server_side, "peer", Server())
    assert seen == [7.5]


def test_without_timeout_the_connection_is_left_blocking(pair) -> None:
    server_side, _ = pair
    seen: list[float | None] = []

    class Plain(StreamRequestHandler):
        def handle(self) -> None:
            seen.append(self.connection.gettimeout())

    Plain(server_side, "peer", Server())
    assert seen == [None]


def test_a_read_past_the_classic_timeout_raises_timeout_error_in_handle(pair) -> None:
    server_side, _ = pair
    seen: list[str] = []

    class Timed(StreamRequestHandler):
        timeout = 0.001  # a real wait of 1 ms: the client never sends

        def handle(self) -> None:
            try:
                self.rfile.readline()
            except TimeoutError:
                seen.append("timeout")

    Timed(server_side, "peer", Server())
    assert seen == ["timeout"]


def test_disable_nagle_algorithm_sets_tcp_nodelay(tcp_pair) -> None:
    server_side, _ = tcp_pair

    class NoDelay(StreamRequestHandler):
        disable_nagle_algorithm = True

    assert not server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    NoDelay(server_side, "peer", Server())
    assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_classic_handler_error_propagates_after_finish(pair) -> None:
    server_side, _ = pair
    handlers_seen: list[Any] = []

    class Broken(StreamRequestHandler):
        def handle(self) -> None:
            handlers_seen.append(self)
            raise RuntimeError("broken")

    with pytest.raises(RuntimeError, match="broken"):
        Broken(server_side, "peer", Server())
    assert handlers_seen[0].wfile.closed and handlers_seen[0].rfile.closed


# ------------------------------------------------------------------------ SocketWriter
def test_socket_writer_is_an_unbuffered_binary_file(pair) -> None:
    server_side, client = pair
    writer = SocketWriter(server_side)
    assert isinstance(writer, io.BufferedIOBase)
    assert writer.writable() and not writer.readable()
    assert writer.fileno() == server_side.fileno()
    assert writer.write(b"abc") == 3
    assert client.recv(10) == b"abc"  # sent at once, no flush needed


def test_socket_writer_returns_the_byte_count_of_any_buffer(pair) -> None:
    server_side, client = pair
    writer = SocketWriter(server_side)
    numbers = array.array("i", [1, 2, 3])
    assert writer.write(numbers) == numbers.itemsize * 3
    assert writer.write(memoryview(b"xyz")) == 3
    assert writer.write(bytearray(b"")) == 0
    assert len(client.recv(100)) == numbers.itemsize * 3 + 3


def test_closing_the_socket_writer_leaves_the_socket_open(pair) -> None:
    server_side, client = pair
    writer = SocketWriter(server_side)
    writer.close()
    assert writer.closed
    assert server_side.fileno() != -1
    server_side.sendall(b"ok")
    assert client.recv(10) == b"ok"


def test_socket_writer_in_a_text_wrapper(pair) -> None:
    server_side, client = pair
    text = io.TextIOWrapper(SocketWriter(server_side), encoding="utf-8", write_through=True)
    text.write("héllo\n")
    assert client.recv(100) == "héllo\n".encode()
    text.detach()


# ------------------------------------------------------------------------ async handlers
def start_on(loop: Reactor, handler_cls: type, sock: socket.socket,
             address: Any = ("127.0.0.1", 5555)) -> tuple[reactor.Task, reactor.RequestEntry]:
    """What a server of the library does: defer the handler, run its coroutine as a task."""
    sock.setblocking(False)
    entry = loop.open_request(Server(), sock, address, sock.fileno())
    entry.stage = Stage.RUNNING
    with deferred_start(loop, entry) as slot:
        handler_cls(sock, address, entry.server)
    assert slot.coroutine is not None
    return loop.spawn(slot.coroutine, entry), entry


def test_async_handler_on_a_reactor_gets_async_files_and_serves_lines(fake_loop: Reactor,
                                                                      pair) -> None:
    server_side, client = pair
    seen: list[Any] = []

    class Upper(StreamRequestHandler):
        async def handle(self) -> None:
            seen.append((type(self.rfile), type(self.wfile)))
            async for line in self.rfile:
                self.wfile.write(line.upper())
                await self.wfile.drain()

    task, entry = start_on(fake_loop, Upper, server_side)
    run_until_idle(fake_loop)
    assert entry.stage is Stage.WAITING and entry.state == "reading"
    client.sendall(b"hello\nwor")
    run_until_idle(fake_loop)
    assert client.recv(100) == b"HELLO\n"
    client.sendall(b"ld\n")
    client.shutdown(socket.SHUT_WR)
    run_until_idle(fake_loop)
    assert task.done and task.error is None
    assert client.recv(100) == b"WORLD\n"
    assert seen == [(AsyncReader, AsyncWriter)]
    assert (entry.bytes_in, entry.bytes_out) == (12, 12)
    assert len(fake_loop.requests) == 0
    fake_loop.forget(server_side.fileno())


def test_async_handler_timeout_raises_timeout_error_inside_handle(fake_loop: Reactor,
                                                                  clock: FakeClock, pair) -> None:
    server_side, _ = pair
    seen: list[str] = []

    class Timed(StreamRequestHandler):
        timeout = 30

        async def handle(self) -> None:
            try:
                await self.rfile.readline()
            except TimeoutError:
                seen.append("timeout")

    task, _ = start_on(fake_loop, Timed, server_side)
    run_until_idle(fake_loop)
    clock.advance(29)
    run_until_idle(fake_loop)
    assert seen == []
    clock.advance(1)
    run_until_idle(fake_loop)
    assert seen == ["timeout"] and task.done
    fake_loop.forget(server_side.fileno())


def test_async_handler_on_a_reactor_leaves_the_socket_non_blocking(fake_loop: Reactor,
                                                                   pair) -> None:
    server_side, _ = pair
    seen: list[float | None] = []

    class Timed(StreamRequestHandler):
        timeout = 5

        async def handle(self) -> None:
            seen.append(self.connection.gettimeout())

    start_on(fake_loop, Timed, server_side)
    run_until_idle(fake_loop)
    assert seen == [0.0]  # the timeout is enforced by the reactor, not the socket
    fake_loop.forget(server_side.fileno())


def test_everything_queued_is_delivered_before_the_request_ends(fake_loop: Reactor,
                                                                pair) -> None:
    server_side, client = pair
    server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = bytes(range(256)) * 4096  # 1 MiB: far more than the kernel takes at once

    class Bulk(StreamRequestHandler):
        async def handle(self) -> None:
            self.wfile.write(payload)  # queued, not awaited

    task, entry = start_on(fake_loop, Bulk, server_side)
    run_until_idle(fake_loop)
    assert not task.done
    assert entry.stage is Stage.WAITING and entry.state == "writing"
    received = bytearray()
    for _ in range(10_000):
        received += client.recv(65536)
        run_until_idle(fake_loop)
        if task.done:
            break
    server_side.shutdown(socket.SHUT_WR)
    received += recv_all(client)
    assert bytes(received) == payload
    assert task.error is None and entry.bytes_out == len(payload)
    fake_loop.forget(server_side.fileno())


def test_async_handler_outside_a_reactor_uses_blocking_io_and_the_socket_timeout(pair) -> None:
    server_side, client = pair
    seen: list[Any] = []

    class Upper(StreamRequestHandler):
        timeout = 9

        async def handle(self) -> None:
            seen.append(self.connection.gettimeout())
            seen.append(self.reactor)
            async for line in self.rfile:
                self.wfile.write(line.upper())
                await self.wfile.drain()

    client.sendall(b"a\nb\n")
    client.shutdown(socket.SHUT_WR)
    Upper(server_side, "peer", Server())  # driven by run_blocking inside the constructor
    server_side.shutdown(socket.SHUT_WR)
    assert recv_all(client) == b"A\nB\n"
    assert seen == [9, None]


def test_async_handler_outside_a_reactor_times_out_through_the_socket(pair) -> None:
    server_side, _ = pair
    seen: list[str] = []

    class Timed(StreamRequestHandler):
        timeout = 0.001  # a real 1 ms wait: nothing is ever sent

        async def handle(self) -> None:
            try:
                await self.rfile.readline()
            except TimeoutError:
                seen.append("timeout")

    Timed(server_side, "peer", Server())
    assert seen == ["timeout"]


def test_async_handler_limits_come_from_class_attributes(fake_loop: Reactor, pair,
                                                         caplog) -> None:
    server_side, client = pair
    seen: list[str] = []

    class Small(StreamRequestHandler):
        max_line_length = 8

        async def handle(self) -> None:
            try:
                await self.rfile.readline()
            except ValueError as exc:
                seen.append(type(exc).__name__)

    client.sendall(b"far too long a line")
    task, _ = start_on(fake_loop, Small, server_side)
    run_until_idle(fake_loop)
    assert seen == ["LineTooLong"] and task.done
    fake_loop.forget(server_side.fileno())


def test_async_finish_closes_the_async_files(fake_loop: Reactor, pair) -> None:
    server_side, _ = pair
    handlers_seen: list[Any] = []

    class Quick(StreamRequestHandler):
        async def handle(self) -> None:
            handlers_seen.append(self)

    task, _ = start_on(fake_loop, Quick, server_side)
    run_until_idle(fake_loop)
    handler = handlers_seen[0]
    assert task.done
    assert handler.rfile.closed and handler.wfile.closed
    with pytest.raises(ValueError):
        handler.wfile.write(b"late")
    fake_loop.forget(server_side.fileno())


def test_an_error_in_an_async_handler_reaches_its_task(fake_loop: Reactor, pair) -> None:
    server_side, _ = pair

    class Broken(StreamRequestHandler):
        async def handle(self) -> None:
            raise KeyError("broken")

    task, _ = start_on(fake_loop, Broken, server_side)
    logging.getLogger("reactor").disabled = True
    try:
        run_until_idle(fake_loop)
    finally:
        logging.getLogger("reactor").disabled = False
    assert isinstance(task.error, KeyError)
    fake_loop.forget(server_side.fileno())


def test_a_classic_buffered_wfile_to_a_vanished_peer_fails_as_in_the_stdlib() -> None:
    import socketserver

    outcomes = []
    for module in (socketserver, __import__("handlers")):
        server_side, client = socket.socketpair()
        client.close()

        class Late(module.StreamRequestHandler):  # type: ignore[name-defined,misc]
            wbufsize = 8192

            def handle(self) -> None:
                self.wfile.write(b"nobody listens")  # buffered until finish()

        try:
            Late(server_side, "peer", Server())
            outcomes.append(None)
        except OSError as exc:
            outcomes.append(type(exc))
        finally:
            server_side.close()
    assert outcomes[0] is outcomes[1]  # the flush error is ignored, close() meets it again
    assert outcomes[1] is BrokenPipeError


def test_async_handler_answers_pipelined_requests_in_order(fake_loop: Reactor, pair) -> None:
    server_side, client = pair
    requests = b"".join(b"request %d\n" % n for n in range(50))

    class Upper(StreamRequestHandler):
        async def handle(self) -> None:
            async for line in self.rfile:
                self.wfile.write(line.upper())
                await self.wfile.drain()

    client.sendall(requests)  # all at once: the handler finds many requests buffered
    client.shutdown(socket.SHUT_WR)
    task, entry = start_on(fake_loop, Upper, server_side)
    run_until_idle(fake_loop)
    assert task.done and task.error is None
    server_side.shutdown(socket.SHUT_WR)
    assert recv_all(client) == requests.upper()
    assert entry.bytes_out == len(requests)
    fake_loop.forget(server_side.fileno())


# ------------------------------------------------------------------------ async timeouts
def test_idle_timeout_bounds_the_wait_for_a_request_to_begin(fake_loop: Reactor,
                                                             clock: FakeClock, pair) -> None:
    server_side, _ = pair
    seen: list[Any] = []

    class Idle(StreamRequestHandler):
        timeout = None
        idle_timeout = 100

        async def handle(self) -> None:
            try:
                await self.rfile.readline()
            except TimeoutError:
                seen.append(fake_loop.time())

    start = clock.now()
    task, _ = start_on(fake_loop, Idle, server_side)
    run_until_idle(fake_loop)
    clock.advance(99)
    run_until_idle(fake_loop)
    assert seen == []
    clock.advance(1)
    run_until_idle(fake_loop)
    assert seen == [start + 100] and task.done
    fake_loop.forget(server_side.fileno())


@pytest.mark.parametrize("last_byte_at_deadline", [False, True])
def test_request_timeout_cuts_off_a_client_that_trickles_its_request(
        fake_loop: Reactor, clock: FakeClock, pair, last_byte_at_deadline: bool) -> None:
    server_side, client = pair
    seen: list[str] = []

    class Strict(StreamRequestHandler):
        timeout = None
        idle_timeout = None
        request_timeout = 10

        async def handle(self) -> None:
            try:
                seen.append((await self.rfile.readline()).decode())
            except TimeoutError:
                seen.append("timeout")

    task, _ = start_on(fake_loop, Strict, server_side)
    run_until_idle(fake_loop)
    clock.advance(50)  # idle before the request begins: no limit here
    run_until_idle(fake_loop)
    for byte in b"GET /":  # one byte every 2 s: each wait is short, the request is not
        client.send(bytes([byte]))
        run_until_idle(fake_loop)
        clock.advance(2)
    assert seen == [] and clock.now() == 1000 + 50 + 10
    if last_byte_at_deadline:
        client.send(b"x")  # progress, but too late: the request deadline has passed
    run_until_idle(fake_loop)
    assert seen == ["timeout"] and task.done
    fake_loop.forget(server_side.fileno())


def test_a_request_completed_in_time_resets_the_request_deadline(fake_loop: Reactor,
                                                                 clock: FakeClock, pair) -> None:
    server_side, client = pair
    lines: list[bytes] = []

    class Strict(StreamRequestHandler):
        timeout = None
        idle_timeout = None
        request_timeout = 10

        async def handle(self) -> None:
            async for line in self.rfile:
                lines.append(line)

    task, _ = start_on(fake_loop, Strict, server_side)
    run_until_idle(fake_loop)
    for n in range(3):  # three requests, each taking 8 s: 24 s in all
        client.send(b"req")
        run_until_idle(fake_loop)
        clock.advance(8)
        client.send(b"%d\n" % n)
        run_until_idle(fake_loop)
    client.shutdown(socket.SHUT_WR)
    run_until_idle(fake_loop)
    assert lines == [b"req0\n", b"req1\n", b"req2\n"]
    assert task.done and task.error is None
    fake_loop.forget(server_side.fileno())


def test_write_timeout_drops_a_client_that_reads_nothing(fake_loop: Reactor, clock: FakeClock,
                                                         pair) -> None:
    server_side, _ = pair
    server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    seen: list[str] = []

    class Writer(StreamRequestHandler):
        timeout = None
        write_timeout = 5
        write_high_water = 1024

        async def handle(self) -> None:
            self.wfile.write(b"w" * 200_000)
            try:
                await self.wfile.drain()
            except TimeoutError:
                seen.append("timeout")

    task, _ = start_on(fake_loop, Writer, server_side)
    run_until_idle(fake_loop)
    clock.advance(4.9)
    run_until_idle(fake_loop)
    assert seen == []
    clock.advance(0.1)
    run_until_idle(fake_loop)
    assert seen == ["timeout"]
    # the final flush does not wait a second write_timeout for a client that reads nothing
    assert task.done and task.error is None
    fake_loop.forget(server_side.fileno())
