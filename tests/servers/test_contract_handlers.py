"""BaseRequestHandler, StreamRequestHandler and DatagramRequestHandler: the standard library's
handler contract (lifecycle, rfile/wfile, timeouts, socket options), on real sockets."""

from __future__ import annotations

import io
import os
import signal
import socket
import threading
from typing import Any

import pytest

import servers
from conftest import connect, recv_all, recv_line

HOST = "127.0.0.1"
HAS_FORK = hasattr(os, "fork")


def serve_one(handler: type, payload: bytes = b"", server_class: type = servers.TCPServer
              ) -> tuple[Any, bytes]:
    """Run one request through a synchronous server; returns (server, reply)."""
    with server_class((HOST, 0), handler) as server:
        with connect(server.server_address) as client:
            client.sendall(payload)
            server.handle_request()
            reply = recv_all(client)
    return server, reply


# ------------------------------------------------------------------------ BaseRequestHandler
class FakeServer:
    def __init__(self) -> None:
        self.calls: list[str] = []


def lifecycle_handler(fail_in: str | None = None) -> type:
    class Handler(servers.BaseRequestHandler):
        def setup(self) -> None:
            self.server.calls.append(("setup", self.request, self.client_address))
            if fail_in == "setup":
                raise ValueError("setup")

        def handle(self) -> None:
            self.server.calls.append("handle")
            if fail_in == "handle":
                raise ValueError("handle")

        def finish(self) -> None:
            self.server.calls.append("finish")

    return Handler


def test_handler_constructor_does_the_whole_request() -> None:
    server = FakeServer()
    handler = lifecycle_handler()("the request", ("peer", 1), server)
    assert server.calls == [("setup", "the request", ("peer", 1)), "handle", "finish"]
    assert handler.request == "the request"
    assert handler.client_address == ("peer", 1)
    assert handler.server is server


def test_finish_is_skipped_when_setup_raises() -> None:
    server = FakeServer()
    with pytest.raises(ValueError, match="setup"):
        lifecycle_handler("setup")("r", "a", server)
    assert server.calls == [("setup", "r", "a")]


def test_finish_runs_and_the_error_propagates_when_handle_raises() -> None:
    server = FakeServer()
    with pytest.raises(ValueError, match="handle"):
        lifecycle_handler("handle")("r", "a", server)
    assert server.calls == [("setup", "r", "a"), "handle", "finish"]


def test_base_handler_methods_are_no_ops() -> None:
    handler = servers.BaseRequestHandler(object(), ("a", 1), FakeServer())
    assert handler.setup() is None
    assert handler.handle() is None
    assert handler.finish() is None


def test_base_server_finish_request_accepts_a_non_socket_request() -> None:
    seen = []

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            seen.append((self.request, self.client_address, self.server))

    server = servers.BaseServer(("host", 8000), Handler)
    assert not hasattr(server, "socket"), "BaseServer.__init__ must not create a socket"
    server.finish_request("not a socket", ("client", 1))
    assert seen == [("not a socket", ("client", 1), server)]


# ------------------------------------------------------------------------ stream files
def test_stream_handler_defaults_give_buffered_rfile_and_unbuffered_wfile() -> None:
    seen: dict[str, Any] = {}

    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            seen["connection_is_request"] = self.connection is self.request
            seen["rfile"] = self.rfile
            seen["wfile"] = self.wfile
            seen["wfile_fileno"] = self.wfile.fileno()
            seen["request_fileno"] = self.request.fileno()
            seen["writable"] = self.wfile.writable()
            seen["line"] = self.rfile.readline()
            seen["written"] = self.wfile.write(b"12345")
            seen["written_view"] = self.wfile.write(memoryview(b"abcdef")[1:4])
            seen["written_array"] = self.wfile.write(bytearray(b"xy"))

    _, reply = serve_one(Handler, b"line one\nrest")
    assert reply == b"12345bcdxy"
    assert seen["connection_is_request"]
    assert isinstance(seen["rfile"], io.BufferedReader)
    assert isinstance(seen["wfile"], io.BufferedIOBase)
    assert seen["wfile_fileno"] == seen["request_fileno"]
    assert seen["writable"] is True
    assert seen["line"] == b"line one\n"
    assert (seen["written"], seen["written_view"], seen["written_array"]) == (5, 3, 2)
    assert seen["rfile"].closed and seen["wfile"].closed, "finish() closes both files"


def test_rbufsize_zero_gives_a_raw_socketio_rfile() -> None:
    seen = {}

    class Handler(servers.StreamRequestHandler):
        rbufsize = 0

        def handle(self) -> None:
            seen["rfile"] = type(self.rfile)
            seen["data"] = self.rfile.read(3)

    serve_one(Handler, b"abc")
    assert seen == {"rfile": socket.SocketIO, "data": b"abc"}


def test_wbufsize_nonzero_buffers_until_finish_flushes() -> None:
    seen = {}

    class Handler(servers.StreamRequestHandler):
        wbufsize = -1

        def handle(self) -> None:
            seen["wfile"] = type(self.wfile)
            self.wfile.write(b"buffered ")
            self.wfile.write(b"reply\n")

    _, reply = serve_one(Handler)
    assert seen["wfile"] is io.BufferedWriter
    assert reply == b"buffered reply\n"


@pytest.mark.threads
def test_unbuffered_wfile_sends_before_any_flush() -> None:
    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"question\n")  # the client answers only after reading it
            self.wfile.write(b"got " + self.rfile.readline())

    with servers.TCPServer((HOST, 0), Handler) as server:
        with connect(server.server_address) as client:
            done = threading.Event()

            def answer() -> None:
                try:
                    assert recv_line(client) == b"question\n"
                    client.sendall(b"answer\n")
                finally:
                    done.set()

            # If write() waited for a flush the handler would block in readline() forever.
            helper = threading.Thread(target=answer)
            helper.start()
            try:
                server.handle_request()
            finally:
                helper.join()
            assert done.is_set()
            assert recv_all(client) == b"got answer\n"


def test_closing_wfile_does_not_close_the_connection() -> None:
    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.close()
            self.request.sendall(b"still open\n")

    _, reply = serve_one(Handler)
    assert reply == b"still open\n"


# ------------------------------------------------------------------------ timeout, nagle
def test_handler_timeout_is_set_on_the_connection_and_raises_timeouterror() -> None:
    seen: dict[str, Any] = {}

    class Handler(servers.StreamRequestHandler):
        timeout = 0.05

        def handle(self) -> None:
            seen["timeout"] = self.connection.gettimeout()
            try:
                self.rfile.readline()
            except TimeoutError as exc:
                seen["error"] = exc

    with servers.TCPServer((HOST, 0), Handler) as server:
        with connect(server.server_address):  # says nothing
            server.handle_request()
    assert seen["timeout"] == 0.05
    assert isinstance(seen["error"], socket.timeout)


def test_timeout_error_escaping_handle_reaches_handle_error() -> None:
    errors = []

    class Server(servers.TCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            import sys
            errors.append(sys.exc_info()[0])

    class Handler(servers.StreamRequestHandler):
        timeout = 0.02

        def handle(self) -> None:
            self.rfile.readline()

    with Server((HOST, 0), Handler) as server:
        with connect(server.server_address) as client:
            server.handle_request()
            assert recv_all(client) == b""
    assert errors == [TimeoutError]


class KernelDefaultNagle(servers.TCPServer):
    tcp_nodelay = False  # the standard library's behaviour: the kernel's default


@pytest.mark.parametrize("disable,expected", [(False, 0), (True, 1)])
def test_disable_nagle_algorithm_sets_tcp_nodelay(disable: bool, expected: int) -> None:
    seen = []

    class Handler(servers.StreamRequestHandler):
        disable_nagle_algorithm = disable

        def handle(self) -> None:
            value = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            seen.append(1 if value else 0)

    serve_one(Handler, server_class=KernelDefaultNagle)
    assert seen == [expected]


def test_tcp_servers_set_tcp_nodelay_on_accepted_connections_by_default() -> None:
    seen = []

    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            seen.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    assert servers.TCPServer.tcp_nodelay is True
    serve_one(Handler)
    assert seen and seen[0] != 0


def test_stream_handler_works_on_a_socketpair_without_a_server() -> None:
    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline().upper())

    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"no server\n")
        Handler(ours, "pair", None)
        assert recv_line(theirs) == b"NO SERVER\n"
        assert ours.fileno() != -1, "the handler never closes the connection"


# ------------------------------------------------------------------------ blocking sockets
def blocking_report_handler(timeout: float | None) -> type:
    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            report = (self.connection.gettimeout(), os.get_blocking(self.connection.fileno()))
            self.wfile.write(repr(report).encode() + b"\n")

    Handler.timeout = timeout
    return Handler


MODES = [
    pytest.param(servers.TCPServer, id="sync"),
    pytest.param(servers.ThreadingTCPServer, id="threading", marks=pytest.mark.threads),
    pytest.param(getattr(servers, "ForkingTCPServer", None), id="forking",
                 marks=[pytest.mark.forking,
                        pytest.mark.skipif(not HAS_FORK, reason="needs os.fork")]),
]


@pytest.mark.parametrize("timeout,expected", [(None, (None, True)), (2.5, (2.5, False))])
@pytest.mark.parametrize("server_class", MODES)
def test_classic_handler_gets_a_blocking_connection_or_exactly_its_timeout(
        server_class: type, timeout: float | None, expected: tuple[Any, bool]) -> None:
    with server_class((HOST, 0), blocking_report_handler(timeout)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"report\n")
            server.handle_request()
            assert recv_line(client) == repr(expected).encode() + b"\n"


@pytest.mark.threads
@pytest.mark.parametrize("cls", [servers.TCPServer, servers.ThreadingTCPServer])
def test_connection_is_blocking_under_serve_forever_too(cls: type, serving: Any) -> None:
    with serving(cls((HOST, 0), blocking_report_handler(None)), poll_interval=0.01) as server:
        for _ in range(3):
            with connect(server.server_address) as client:
                client.sendall(b"report\n")
                assert recv_line(client) == b"(None, True)\n"


# ------------------------------------------------------------------------ signals
@pytest.mark.threads
@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
def test_large_write_interrupted_by_a_signal_still_sends_everything() -> None:
    size = 8 * 1024 * 1024
    interrupted = threading.Event()
    result: dict[str, Any] = {}

    class Handler(servers.StreamRequestHandler):
        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        def handle(self) -> None:
            result["sent1"] = self.wfile.write(b"write data\n")
            result["received"] = self.rfile.readline()
            result["sent2"] = self.wfile.write(b"\0" * size)

    def on_signal(signum: int, frame: Any) -> None:
        interrupted.set()

    main = threading.get_ident()
    previous = signal.signal(signal.SIGUSR1, on_signal)
    try:
        with servers.TCPServer((HOST, 0), Handler) as server:
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.settimeout(20)

            def run_client() -> None:
                with client, client.makefile("rb") as reader:
                    client.connect(server.server_address)
                    result["response1"] = reader.readline()
                    client.sendall(b"client response\n")
                    reader.read(100)
                    # The handler is now stuck in send(): both buffers are tiny and full.
                    for _ in range(100):
                        signal.pthread_kill(main, signal.SIGUSR1)
                        if interrupted.wait(0.5):
                            break
                    result["received2"] = len(reader.read())

            background = threading.Thread(target=run_client)
            background.start()
            try:
                server.handle_request()
            finally:
                background.join()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert interrupted.is_set()
    assert result["response1"] == b"write data\n"
    assert result["sent1"] == len(b"write data\n")
    assert result["received"] == b"client response\n"
    assert result["sent2"] == size
    assert result["received2"] == size - 100


# ------------------------------------------------------------------------ datagrams
def test_datagram_handler_files_and_attributes() -> None:
    seen: dict[str, Any] = {}

    class Handler(servers.DatagramRequestHandler):
        def handle(self) -> None:
            seen["packet"] = self.packet
            seen["socket"] = self.socket
            seen["rfile"] = type(self.rfile)
            seen["wfile"] = type(self.wfile)
            seen["lines"] = self.rfile.readlines()
            self.wfile.write(b"part one, ")
            self.wfile.write(b"part two")

    with servers.UDPServer((HOST, 0), Handler) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"a\nb\n", server.server_address)
            server.handle_request()
            assert client.recv(100) == b"part one, part two"
            assert seen["socket"] is server.socket
    assert seen["packet"] == b"a\nb\n"
    assert seen["rfile"] is io.BytesIO and seen["wfile"] is io.BytesIO
    assert seen["lines"] == [b"a\n", b"b\n"]


@pytest.mark.parametrize("async_handler", [False, True], ids=["def", "async"])
def test_datagram_handler_always_replies_even_with_nothing_written(async_handler: bool
                                                                    ) -> None:
    if async_handler:
        class Handler(servers.DatagramRequestHandler):
            async def handle(self) -> None:
                pass
    else:
        class Handler(servers.DatagramRequestHandler):  # type: ignore[no-redef]
            def handle(self) -> None:
                pass

    with servers.UDPServer((HOST, 0), Handler) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"anything", server.server_address)
            server.handle_request()
            data, address = client.recvfrom(100)
            assert data == b""
            assert address == server.server_address


def test_datagram_finish_can_be_overridden_to_send_nothing() -> None:
    class Handler(servers.DatagramRequestHandler):
        def finish(self) -> None:
            pass

    with servers.UDPServer((HOST, 0), Handler) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"quiet", server.server_address)
            server.handle_request()
            client.sendto(b"probe", client.getsockname())  # the next datagram is our own
            assert client.recv(100) == b"probe"
