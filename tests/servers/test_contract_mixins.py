"""ThreadingMixIn and ForkingMixIn: one thread / one child per request, and what server_close(),
daemon_threads, block_on_close and the reaping of children promise."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

import servers
from conftest import connect, recv_line

HOST = "127.0.0.1"
HAS_FORK = hasattr(os, "fork")
needs_fork = pytest.mark.skipif(not HAS_FORK, reason="needs os.fork")


class Echo(servers.StreamRequestHandler):
    timeout = 10  # a forked child must never outlive a failed test

    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


# ------------------------------------------------------------------------ ThreadingMixIn
@pytest.mark.threads
def test_threading_process_request_returns_at_once_and_requests_overlap() -> None:
    first_waiting = threading.Event()
    second_done = threading.Event()

    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            if line == b"first\n":
                first_waiting.set()
                assert second_done.wait(10), "the second request never ran"
            else:
                assert first_waiting.wait(10)
                second_done.set()
            self.wfile.write(line)

    with servers.ThreadingTCPServer((HOST, 0), Handler) as server:
        with connect(server.server_address) as first, connect(server.server_address) as second:
            first.sendall(b"first\n")
            second.sendall(b"second\n")
            server.handle_request()  # must not wait for the first request to end
            server.handle_request()
            assert recv_line(second) == b"second\n"
            assert recv_line(first) == b"first\n"


@pytest.mark.threads
def test_each_request_gets_a_new_non_daemon_thread_by_default() -> None:
    seen: list[threading.Thread] = []

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            seen.append(threading.current_thread())

    with servers.ThreadingTCPServer((HOST, 0), Handler) as server:
        assert server.daemon_threads is False
        for _ in range(3):
            with connect(server.server_address) as client:
                server.handle_request()
                client.recv(1)  # EOF once the thread closed the request
    assert len({id(t) for t in seen}) == 3
    assert all(not t.daemon for t in seen)
    assert all(t is not threading.main_thread() for t in seen)


@pytest.mark.threads
def test_daemon_threads_makes_request_threads_daemonic() -> None:
    seen: list[bool] = []

    class Server(servers.ThreadingTCPServer):
        daemon_threads = True

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            seen.append(threading.current_thread().daemon)
            self.request.sendall(b"done\n")

    with Server((HOST, 0), Handler) as server:
        with connect(server.server_address) as client:
            server.handle_request()
            assert recv_line(client) == b"done\n"
    assert seen == [True]


@pytest.mark.threads
def test_server_close_waits_for_request_threads() -> None:
    release = threading.Event()
    finished = threading.Event()
    threads: list[threading.Thread] = []

    class Server(servers.ThreadingTCPServer):
        def server_close(self) -> None:
            release.set()  # the handler may end only once server_close() has begun
            super().server_close()

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            threads.append(threading.current_thread())
            release.wait(10)
            finished.set()

    server = Server((HOST, 0), Handler)
    with connect(server.server_address):
        server.handle_request()
        server.server_close()
        assert finished.is_set(), "server_close() returned before the request thread ended"
        assert not threads[0].is_alive()


@pytest.mark.threads
@pytest.mark.parametrize("attribute", ["block_on_close", "daemon_threads"])
def test_server_close_does_not_wait_when_told_not_to(attribute: str) -> None:
    release = threading.Event()
    threads: list[threading.Thread] = []

    class Server(servers.ThreadingTCPServer):
        pass

    setattr(Server, attribute, attribute == "daemon_threads")

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            threads.append(threading.current_thread())
            release.wait(20)  # released only after server_close() returned

    server = Server((HOST, 0), Handler)
    try:
        with connect(server.server_address):
            server.handle_request()
            server.server_close()  # would deadlock (until the timeout) if it joined
            assert server.socket.fileno() == -1
    finally:
        release.set()
        for thread in threads:
            thread.join()


@pytest.mark.threads
def test_threading_server_keeps_no_finished_threads() -> None:
    ran: list[threading.Thread] = []

    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            ran.append(threading.current_thread())

    with servers.ThreadingTCPServer((HOST, 0), Handler) as server:
        for _ in range(10):
            with connect(server.server_address) as client:
                server.handle_request()
                client.recv(1)
        assert server.request_dispatch.joinable < 10
        for thread in ran:
            thread.join()
        # One more turn of the loop handles the threads' completion notices.
        server.timeout = 0.01
        server.handle_request()
        assert server.request_dispatch.joinable == 0
        assert len(ran) == 10


@pytest.mark.threads
def test_threading_server_under_serve_forever_keeps_no_finished_threads(serving: Any) -> None:
    with serving(servers.ThreadingTCPServer((HOST, 0), Echo), poll_interval=0.01) as server:
        for n in range(10):
            with connect(server.server_address) as client:
                client.sendall(b"%d\n" % n)
                assert recv_line(client) == b"%d\n" % n
        assert server.request_dispatch.joinable < 10


@pytest.mark.threads
def test_process_request_thread_shuts_the_request_down_after_handle_error() -> None:
    calls = []

    class Server(servers.ThreadingTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            calls.append("handle_error")

        def shutdown_request(self, request: Any) -> None:
            calls.append("shutdown_request")
            super().shutdown_request(request)

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            raise ValueError("in a thread")

    with Server((HOST, 0), Handler) as server:
        with connect(server.server_address) as client:
            server.handle_request()
            assert client.recv(1) == b""
        server.server_close()
    assert calls == ["handle_error", "shutdown_request"]


@pytest.mark.threads
def test_process_request_thread_can_be_called_directly() -> None:
    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(b"direct\n")

    with servers.ThreadingTCPServer((HOST, 0), Handler) as server:
        with connect(server.server_address) as client:
            request, address = server.socket.accept()
            server.process_request_thread(request, address)
            assert request.fileno() == -1, "process_request_thread() shuts the request down"
            assert recv_line(client) == b"direct\n"


# ------------------------------------------------------------------------ ForkingMixIn
def wait_for_go(read_end: int, write_end: int) -> None:
    """In a forked child: wait for a byte from the test. The child closes its inherited copy
    of the write end first, so that it sees EOF (and ends) if the test fails and closes
    its own copy without writing."""
    os.close(write_end)
    os.read(read_end, 1)


def fork_own_child(code: int = 72) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(code)
    return pid


@pytest.mark.forking
@needs_fork
def test_forking_server_reaps_its_children_but_not_a_foreign_one() -> None:
    own = fork_own_child(72)
    try:
        with servers.ForkingTCPServer((HOST, 0), Echo) as server:
            assert server.active_children is None
            pids = []
            for n in range(3):
                with connect(server.server_address) as client:
                    client.sendall(b"%d\n" % n)
                    server.handle_request()
                    assert recv_line(client) == b"%d\n" % n
                pids.extend(server.active_children - set(pids))
            assert len(pids) == 3 and own not in pids
            server.collect_children()
            server.handle_timeout()
            server.service_actions()
            server.server_close()
            assert not server.active_children
            for pid in pids:
                with pytest.raises(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
    finally:
        _, status = os.waitpid(own, 0)
    assert os.waitstatus_to_exitcode(status) == 72


CLIENT = textwrap.dedent("""
    import socket, sys
    for n in range(3):
        with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as s:
            s.sendall(b"%d\\n" % n)
            print(s.makefile("rb").readline().decode().strip(), flush=True)
""")


@pytest.mark.forking
@needs_fork
def test_forking_serve_forever_reaps_children_but_not_a_foreign_one() -> None:
    own = fork_own_child(72)
    try:
        with servers.ForkingTCPServer((HOST, 0), Echo) as server:
            client = subprocess.Popen([sys.executable, "-c", CLIENT,
                                       str(server.server_address[1])], stdout=subprocess.PIPE)
            try:
                def service_actions() -> None:
                    servers.ForkingTCPServer.service_actions(server)
                    if client.poll() is not None:
                        server.shutdown()
                server.service_actions = service_actions  # type: ignore[method-assign]
                server.serve_forever(poll_interval=0.02)
            finally:
                out, _ = client.communicate(timeout=20)
        assert out.split() == [b"0", b"1", b"2"]
        assert not server.active_children
    finally:
        _, status = os.waitpid(own, 0)
    assert os.waitstatus_to_exitcode(status) == 72


@pytest.mark.forking
@needs_fork
def test_collect_children_blocking_waits_for_every_child() -> None:
    read_end, write_end = os.pipe()

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            wait_for_go(read_end, write_end)  # each child waits for the test's go

    try:
        with servers.ForkingTCPServer((HOST, 0), Handler) as server:
            for _ in range(3):
                with connect(server.server_address):
                    server.handle_request()
            server.collect_children()  # nobody has exited: reaps nothing, does not block
            assert len(server.active_children) == 3
            os.write(write_end, b"xxx")
            server.collect_children(blocking=True)
            assert not server.active_children
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.forking
@needs_fork
def test_forking_server_close_without_block_on_close_does_not_wait() -> None:
    read_end, write_end = os.pipe()

    class Server(servers.ForkingTCPServer):
        block_on_close = False

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            wait_for_go(read_end, write_end)  # until the test lets it go

    try:
        with Server((HOST, 0), Handler) as server:
            with connect(server.server_address):
                server.handle_request()
            (pid,) = server.active_children
            server.server_close()  # would hang on the blocked child if it waited
            os.write(write_end, b"x")
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.forking
@needs_fork
def test_parent_closes_its_copy_of_the_request_without_cutting_the_childs() -> None:
    read_end, write_end = os.pipe()

    class Handler(servers.StreamRequestHandler):
        def handle(self) -> None:
            wait_for_go(read_end, write_end)  # the parent has closed its copy by now
            self.wfile.write(b"child still connected\n")

    try:
        with servers.ForkingTCPServer((HOST, 0), Handler) as server:
            with connect(server.server_address) as client:
                server.handle_request()
                os.write(write_end, b"x")
                assert recv_line(client) == b"child still connected\n"
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.forking
@needs_fork
def test_forking_udp_server_replies_from_the_child() -> None:
    class Handler(servers.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"%d" % os.getpid())

    with servers.ForkingUDPServer((HOST, 0), Handler) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"who", server.server_address)
            server.handle_request()
            pid = int(client.recv(100))
            assert pid != os.getpid()
            assert pid in server.active_children
            assert server.socket.fileno() != -1, "the parent must keep the server socket"
