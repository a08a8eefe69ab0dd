"""The route of a request through the overridable hooks, and what happens on every error path.

Standard order: get_request -> verify_request -> process_request -> finish_request -> handler
(setup, handle, finish) -> shutdown_request -> close_request; handle_error inside the `except`
block for an Exception; SystemExit/KeyboardInterrupt are not handled.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import Any

import pytest

import servers
from conftest import connect, recv_all, recv_line

HOST = "127.0.0.1"
HAS_FORK = hasattr(os, "fork")


class Recorder:
    """Mix-in recording each hook the server calls, in order (thread-safe)."""

    calls: list[str]

    def record(self, name: str) -> None:
        with self._lock:
            self.calls.append(name)

    def get_request(self) -> Any:
        self.record("get_request")
        return super().get_request()  # type: ignore[misc]

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.record("verify_request")
        return super().verify_request(request, client_address)  # type: ignore[misc]

    def process_request(self, request: Any, client_address: Any) -> None:
        self.record("process_request")
        super().process_request(request, client_address)  # type: ignore[misc]

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.record("finish_request")
        super().finish_request(request, client_address)  # type: ignore[misc]

    def shutdown_request(self, request: Any) -> None:
        self.record("shutdown_request")
        super().shutdown_request(request)  # type: ignore[misc]

    def close_request(self, request: Any) -> None:
        self.record("close_request")
        super().close_request(request)  # type: ignore[misc]

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.record(f"handle_error:{type(sys.exc_info()[1]).__name__}")
        self.error_address = client_address


def recording(base: type, handler_base: type = servers.StreamRequestHandler,
              fail_in: str | None = None, exc: type[BaseException] = ValueError) -> Any:
    """A server class over `base` and a handler that record hooks; `fail_in` names the
    handler method or server hook that raises `exc`."""

    class Handler(handler_base):  # type: ignore[misc,valid-type]
        def setup(self) -> None:
            self.server.record("setup")
            if fail_in == "setup":
                raise exc("setup failed")
            super().setup()

        def handle(self) -> None:
            self.server.record("handle")
            if fail_in == "handle":
                raise exc("handle failed")
            self.wfile.write(b"ok\n")

        def finish(self) -> None:
            self.server.record("finish")
            super().finish()
            if fail_in == "finish":
                raise exc("finish failed")

    class Server(Recorder, base):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.calls = []
            self._lock = threading.Lock()
            super().__init__(*args, **kwargs)

        def verify_request(self, request: Any, client_address: Any) -> bool:
            verdict = super().verify_request(request, client_address)
            if fail_in == "verify_request":
                raise exc("verify failed")
            if fail_in == "refuse":
                return False
            return verdict

    Server.Handler = Handler  # type: ignore[attr-defined]
    return Server


HAPPY = ["get_request", "verify_request", "process_request", "finish_request",
         "setup", "handle", "finish", "shutdown_request", "close_request"]


# ------------------------------------------------------------------------ order of hooks
def test_sync_tcp_request_passes_every_hook_in_order() -> None:
    Server = recording(servers.TCPServer)
    with Server((HOST, 0), Server.Handler) as server:
        with connect(server.server_address) as client:
            server.handle_request()
            assert recv_all(client) == b"ok\n"
        assert server.calls == HAPPY


def test_sync_udp_request_passes_every_hook_in_order() -> None:
    Server = recording(servers.UDPServer, servers.DatagramRequestHandler)
    with Server((HOST, 0), Server.Handler) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"x", server.server_address)
            server.handle_request()
            assert client.recv(100) == b"ok\n"
        assert server.calls == HAPPY


def test_sync_unix_stream_request_passes_every_hook_in_order(unix_path: str) -> None:
    Server = recording(servers.UnixStreamServer)
    with Server(unix_path, Server.Handler) as server:
        with connect(server.server_address) as client:
            server.handle_request()
            assert recv_all(client) == b"ok\n"
        assert server.calls == HAPPY


@pytest.mark.threads
def test_threading_request_runs_the_same_hooks_with_the_tail_in_a_thread() -> None:
    Server = recording(servers.ThreadingTCPServer)
    with Server((HOST, 0), Server.Handler) as server:
        with connect(server.server_address) as client:
            server.handle_request()
            assert recv_all(client) == b"ok\n"
        server.server_close()  # joins the request thread
        assert server.calls == HAPPY


@pytest.mark.threads
def test_serve_forever_passes_every_hook_in_order(serving: Any) -> None:
    Server = recording(servers.TCPServer)
    with serving(Server((HOST, 0), Server.Handler), poll_interval=0.01) as server:
        with connect(server.server_address) as client:
            assert recv_all(client) == b"ok\n"
        with connect(server.server_address) as client:
            assert recv_all(client) == b"ok\n"
    assert server.calls == HAPPY * 2


@pytest.mark.forking
@pytest.mark.skipif(not HAS_FORK, reason="needs os.fork")
def test_forking_parent_only_closes_and_child_shuts_down_the_request() -> None:
    read_end, write_end = os.pipe()

    class Server(servers.ForkingTCPServer):
        def record(self, name: str) -> None:
            os.write(write_end, f"{os.getpid()}:{name}\n".encode())

        def verify_request(self, request: Any, client_address: Any) -> bool:
            self.record("verify_request")
            return super().verify_request(request, client_address)

        def process_request(self, request: Any, client_address: Any) -> None:
            self.record("process_request")
            super().process_request(request, client_address)

        def finish_request(self, request: Any, client_address: Any) -> None:
            self.record("finish_request")
            super().finish_request(request, client_address)

        def shutdown_request(self, request: Any) -> None:
            self.record("shutdown_request")
            super().shutdown_request(request)

        def close_request(self, request: Any) -> None:
            self.record("close_request")
            super().close_request(request)

    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            self.server.record("handle")
            self.wfile.write(b"ok\n")

    try:
        with Server((HOST, 0), Handler) as server:
            with connect(server.server_address) as client:
                server.handle_request()
                assert recv_line(client) == b"ok\n"
            server.server_close()  # waits for the child
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as reader:
            read_end = -1
            lines = reader.read().decode().split()
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    parent = [name for pid, name in (line.split(":") for line in lines)
              if int(pid) == os.getpid()]
    child = [name for pid, name in (line.split(":") for line in lines)
             if int(pid) != os.getpid()]
    assert parent == ["verify_request", "process_request", "close_request"]
    assert child == ["finish_request", "handle", "shutdown_request", "close_request"]


# ------------------------------------------------------------------------ verify_request
def test_refused_request_is_shut_down_exactly_once_and_never_handled() -> None:
    Server = recording(servers.TCPServer, fail_in="refuse")
    with Server((HOST, 0), Server.Handler) as server:
        with connect(server.server_address) as client:
            server.handle_request()
            assert recv_all(client) == b"", "a refused client must see the connection close"
        assert server.calls == ["get_request", "verify_request", "shutdown_request",
                                "close_request"]


@pytest.mark.threads
def test_refusing_one_request_keeps_the_server_serving(serving: Any) -> None:
    class Server(servers.TCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            return request.recv(1, socket.MSG_PEEK) != b"x"

    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    with serving(Server((HOST, 0), Handler), poll_interval=0.01) as server:
        with connect(server.server_address) as client:
            client.sendall(b"x\n")
            assert recv_all(client) == b""
        with connect(server.server_address) as client:
            client.sendall(b"y\n")
            assert recv_line(client) == b"y\n"


# ------------------------------------------------------------------------ get_request errors
def test_oserror_from_get_request_is_silent() -> None:
    class Server(servers.TCPServer):
        failures = 0

        def get_request(self) -> Any:
            request, address = super().get_request()
            request.close()
            self.failures += 1
            raise ConnectionAbortedError("handshake failed")

        def handle_error(self, request: Any, client_address: Any) -> None:
            raise AssertionError("handle_error must not be called for get_request errors")

        def shutdown_request(self, request: Any) -> None:
            raise AssertionError("there is no request to shut down")

    with Server((HOST, 0), servers.StreamRequestHandler) as server:
        with connect(server.server_address):
            assert server.handle_request() is None
        assert server.failures == 1


def test_oserror_from_get_request_leaves_the_server_serving() -> None:
    class Server(servers.TCPServer):
        fail_next = True

        def get_request(self) -> Any:
            request, address = super().get_request()
            if self.fail_next:
                self.fail_next = False
                request.close()
                raise OSError("one bad accept")
            return request, address

    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"served\n")

    with Server((HOST, 0), Handler) as server:
        with connect(server.server_address) as first, connect(server.server_address) as second:
            server.handle_request()  # the failed accept
            server.handle_request()
            assert recv_all(first) == b""
            assert recv_all(second) == b"served\n"


def test_non_oserror_from_get_request_propagates_from_handle_request() -> None:
    class Server(servers.TCPServer):
        def get_request(self) -> Any:
            request, address = super().get_request()
            request.close()
            raise RuntimeError("a bug in get_request")

    with Server((HOST, 0), servers.StreamRequestHandler) as server:
        with connect(server.server_address):
            with pytest.raises(RuntimeError, match="a bug in get_request"):
                server.handle_request()


# ------------------------------------------------------------------------ handle_error
@pytest.mark.parametrize("fail_in,expected", [
    ("setup", ["setup", "handle_error:ValueError", "shutdown_request", "close_request"]),
    ("handle", ["setup", "handle", "finish", "handle_error:ValueError", "shutdown_request",
                "close_request"]),
    ("finish", ["setup", "handle", "finish", "handle_error:ValueError", "shutdown_request",
                "close_request"]),
])
def test_handler_exception_goes_to_handle_error_then_request_is_shut_down(
        fail_in: str, expected: list[str]) -> None:
    Server = recording(servers.TCPServer, fail_in=fail_in)
    with Server((HOST, 0), Server.Handler) as server:
        with connect(server.server_address) as client:
            server.handle_request()
            recv_all(client)  # EOF: the request was closed
            assert server.error_address == client.getsockname()
        assert server.calls[:4] == ["get_request", "verify_request", "process_request",
                                    "finish_request"]
        assert server.calls[4:] == expected


def test_verify_request_exception_goes_to_handle_error_and_request_is_closed() -> None:
    Server = recording(servers.TCPServer, fail_in="verify_request")
    with Server((HOST, 0), Server.Handler) as server:
        with connect(server.server_address) as client:
            assert server.handle_request() is None
            assert recv_all(client) == b""
            assert server.error_address == client.getsockname()
        assert server.calls == ["get_request", "verify_request", "handle_error:ValueError",
                                "shutdown_request", "close_request"]


@pytest.mark.threads
@pytest.mark.parametrize("fail_in", ["setup", "handle", "finish", "verify_request"])
def test_server_keeps_serving_after_an_error_in_user_code(fail_in: str, serving: Any) -> None:
    failing = threading.Event()

    Server = recording(servers.TCPServer)

    class Flaky(Server):  # type: ignore[misc,valid-type]
        def verify_request(self, request: Any, client_address: Any) -> bool:
            if fail_in == "verify_request" and not failing.is_set():
                failing.set()
                raise ValueError("verify failed")
            return True

    class Handler(Server.Handler):  # type: ignore[misc,name-defined]
        def setup(self) -> None:
            if fail_in == "setup" and not failing.is_set():
                failing.set()
                raise ValueError("setup failed")
            super().setup()

        def handle(self) -> None:
            if fail_in == "handle" and not failing.is_set():
                failing.set()
                raise ValueError("handle failed")
            super().handle()

        def finish(self) -> None:
            super().finish()
            if fail_in == "finish" and not failing.is_set():
                failing.set()
                raise ValueError("finish failed")

    with serving(Flaky((HOST, 0), Handler), poll_interval=0.01) as server:
        with connect(server.server_address) as client:
            first = recv_all(client)
        with connect(server.server_address) as client:
            assert recv_all(client) == b"ok\n"
    assert failing.is_set()
    assert first in (b"", b"ok\n")  # "finish" fails after the reply was written
    assert server.calls.count("handle_error:ValueError") == 1


def test_handle_error_runs_inside_the_except_block_so_bare_raise_reraises() -> None:
    class Server(servers.TCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            self.seen = (client_address, sys.exc_info()[1])
            self.close_request(request)
            raise

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            raise KeyError("from the handler")

    with Server((HOST, 0), Handler) as server:
        with connect(server.server_address) as client:
            with pytest.raises(KeyError, match="from the handler") as info:
                server.handle_request()
            assert server.seen == (client.getsockname(), info.value)


def test_handle_error_reraise_ends_serve_forever() -> None:
    class Server(servers.TCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            self.close_request(request)
            raise

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            raise LookupError("fatal for this server")

    with Server((HOST, 0), Handler) as server:
        with connect(server.server_address):
            with pytest.raises(LookupError):
                server.serve_forever(poll_interval=0.01)
        server.shutdown()  # the loop is gone; shutdown() must not wait for it


def test_default_handle_error_prints_the_standard_report(capsys: Any) -> None:
    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            raise ValueError("boom 1234")

    with servers.TCPServer((HOST, 0), Handler) as server:
        with connect(server.server_address) as client:
            server.handle_request()
            address = client.getsockname()
            assert recv_all(client) == b""
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == "-" * 40
    assert lines[1] == f"Exception occurred during processing of request from {address}"
    assert lines[2] == "Traceback (most recent call last):"
    assert "ValueError: boom 1234" in lines
    assert lines[-1] == "-" * 40
    assert lines.index("ValueError: boom 1234") == len(lines) - 2


# ------------------------------------------------------------------------ SystemExit & co
@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_base_exception_from_sync_handler_leaves_handle_request(exc: type) -> None:
    Server = recording(servers.TCPServer, fail_in="handle", exc=exc)
    with Server((HOST, 0), Server.Handler) as server:
        with connect(server.server_address) as client:
            with pytest.raises(exc):
                server.handle_request()
            assert recv_all(client) == b"", "the request must still be shut down"
        assert server.calls == ["get_request", "verify_request", "process_request",
                                "finish_request", "setup", "handle", "finish",
                                "shutdown_request", "close_request"]
        assert not any(call.startswith("handle_error") for call in server.calls)


def test_sync_server_serves_again_after_systemexit_left_handle_request() -> None:
    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            if line == b"exit\n":
                raise SystemExit(3)
            self.wfile.write(line)

    with servers.TCPServer((HOST, 0), Handler) as server:
        with connect(server.server_address) as client:
            client.sendall(b"exit\n")
            with pytest.raises(SystemExit):
                server.handle_request()
        with connect(server.server_address) as client:
            client.sendall(b"again\n")
            server.handle_request()
            assert recv_line(client) == b"again\n"


def test_systemexit_from_sync_handler_leaves_serve_forever_and_releases_shutdown() -> None:
    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            raise SystemExit(0)

    with servers.TCPServer((HOST, 0), Handler) as server:
        with connect(server.server_address) as client:
            with pytest.raises(SystemExit):
                server.serve_forever(poll_interval=0.01)
            assert recv_all(client) == b""
        server.shutdown()  # returns at once: the loop has ended


@pytest.mark.threads
def test_systemexit_in_a_request_thread_reaches_threading_excepthook() -> None:
    caught: list[Any] = []
    shut = threading.Event()

    class Server(servers.ThreadingTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            raise AssertionError("SystemExit must not reach handle_error")

        def shutdown_request(self, request: Any) -> None:
            super().shutdown_request(request)
            shut.set()

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            raise SystemExit(5)

    old_hook = threading.excepthook
    threading.excepthook = caught.append
    try:
        with Server((HOST, 0), Handler) as server:
            with connect(server.server_address) as client:
                server.handle_request()  # returns at once: the request runs in a thread
                assert recv_all(client) == b""
    finally:
        threading.excepthook = old_hook
    assert shut.is_set()
    assert len(caught) == 1 and caught[0].exc_type is SystemExit


@pytest.mark.threads
def test_exception_in_a_request_thread_goes_to_handle_error_with_its_address() -> None:
    errors: list[Any] = []

    class Server(servers.ThreadingTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append((client_address, sys.exc_info()[0]))

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            raise ValueError("in a thread")

    with Server((HOST, 0), Handler) as server:
        with connect(server.server_address) as client:
            server.handle_request()
            assert recv_all(client) == b""
            address = client.getsockname()
        server.server_close()
    assert errors == [(address, ValueError)]


@pytest.mark.forking
@pytest.mark.skipif(not HAS_FORK, reason="needs os.fork")
@pytest.mark.parametrize("exc,handled", [(ValueError, True), (SystemExit, False)])
def test_forked_child_exits_with_status_1_when_the_handler_raises(
        exc: type, handled: bool, tmp_path: Any) -> None:
    log = tmp_path / "log"

    class Server(servers.ForkingTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            with open(log, "a") as f:
                f.write("error handled\n")

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            with open(log, "a") as f:
                f.write("handler called\n")
            raise exc("from the child")

    with Server((HOST, 0), Handler) as server:
        with connect(server.server_address) as client:
            server.handle_request()  # returns in the parent; a SystemExit stays in the child
            assert recv_all(client) == b""
        (pid,) = server.active_children
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1
    assert log.read_text() == "handler called\n" + "error handled\n" * handled


@pytest.mark.forking
@pytest.mark.skipif(not HAS_FORK, reason="needs os.fork")
def test_forked_child_exits_with_status_0_after_a_good_request() -> None:
    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"fine\n")

    with servers.ForkingTCPServer((HOST, 0), Handler) as server:
        with connect(server.server_address) as client:
            server.handle_request()
            assert recv_all(client) == b"fine\n"
        (pid,) = server.active_children
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ------------------------------------------------------------------------ async handlers
def test_async_handler_exception_goes_to_handle_error_inside_except() -> None:
    seen = []

    class Server(servers.TCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            seen.append((client_address, type(sys.exc_info()[1])))

    class Handler(servers.StreamRequestHandler):
        async def handle(self) -> None:
            await self.rfile.readline()
            raise ValueError("async failure")

    with Server((HOST, 0), Handler) as server:
        with connect(server.server_address) as client:
            client.sendall(b"go\n")
            assert server.handle_request() is None
            assert recv_all(client) == b"", "the failed request must be closed"
            address = client.getsockname()
        with connect(server.server_address) as client:  # and the server still serves
            client.sendall(b"again\n")
            server.handle_request()
            recv_all(client)
            second = client.getsockname()
    assert seen == [(address, ValueError), (second, ValueError)]


def test_systemexit_from_an_async_handler_leaves_handle_request() -> None:
    class Handler(servers.StreamRequestHandler):
        async def handle(self) -> None:
            raise SystemExit(2)

    with servers.TCPServer((HOST, 0), Handler) as server:
        with connect(server.server_address) as client:
            with pytest.raises(SystemExit):
                server.handle_request()
            assert recv_all(client) == b""
