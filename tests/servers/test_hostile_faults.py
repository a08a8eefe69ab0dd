"""Connection faults (reset mid-request, EPIPE/ECONNRESET while writing, half-close, a client
vanishing mid-response, SIGPIPE) and user-code faults (exceptions in setup, handle, finish,
verify_request, service_actions), in every mode: the fault stays with its request, no exception
escapes the loop, the next client is served, nothing leaks (the autouse `no_leaks` fixture).
Helpers: `test_hostile_support.py`."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import servers
from test_hostile_support import (
    ClientProcess, Reply, client, in_thread, needs_fork, on_loop, on_reactor, pump,
    send_pumping, server_records)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIG = 256 * 1024 * 1024  # far more than loopback buffers hold: the client is gone first


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Errors:
    """A server mixin recording handle_error() calls: (client_address, exception type)."""

    errors: list[Any]

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.errors.append((client_address, type(sys.exc_info()[1])))


def recording(base: type) -> type:
    return type(f"Recording{base.__name__}", (Errors, base), {"errors": []})


# ------------------------------------------------------------------------------ handlers
class AsyncEcho(servers.StreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.rfile:
            self.wfile.write(line)


class ClassicEcho(servers.StreamRequestHandler):
    timeout = 10

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class AsyncBig(servers.StreamRequestHandler):
    async def handle(self) -> None:
        await self.rfile.readline()
        block = b"b" * 65536
        for _ in range(BIG // len(block)):
            self.wfile.write(block)
            await self.wfile.drain()


class ClassicBig(servers.StreamRequestHandler):
    timeout = 10

    def handle(self) -> None:
        self.rfile.readline()
        block = b"b" * 65536
        for _ in range(BIG // len(block)):
            self.wfile.write(block)


class AsyncSummary(servers.StreamRequestHandler):
    """Read everything until the client's EOF, then answer with 1 MiB and a summary."""

    async def handle(self) -> None:
        data = await self.rfile.read()
        for _ in range(16):
            self.wfile.write(b"r" * 65536)
            await self.wfile.drain()
        self.wfile.write(b"\n%d lines\n" % data.count(b"\n"))


class ClassicSummary(servers.StreamRequestHandler):
    timeout = 10

    def handle(self) -> None:
        data = self.rfile.read()
        for _ in range(16):
            self.wfile.write(b"r" * 65536)
        self.wfile.write(b"\n%d lines\n" % data.count(b"\n"))


HALF_CLOSE_REPLY = b"r" * (16 * 65536) + b"\n100 lines\n"


# ------------------------------------------------------------------------------ reset mid-request
def test_reactor_reset_mid_request_ends_only_that_request(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="servers")
    with on_reactor(AsyncEcho, recording(servers.TCPServer)) as (server, r, _clock):
        victim = client(server.server_address)
        bystander = client(server.server_address)
        pump(r, lambda: len(r.requests) == 2)
        victim.sendall(b"half a li")
        pump(r, lambda: any((e.bytes_in or 0) == 9 for e in r.requests))
        reset(victim)
        pump(r, lambda: len(r.requests) == 1)
        bystander.sendall(b"still here\n")
        reply = Reply(bystander)
        pump(r, lambda: reply.has(b"\n"))
        assert bytes(reply.data) == b"still here\n"
        bystander.close()
    assert server.errors == []
    ended = [rec.getMessage() for rec in server_records(caplog, logging.INFO)]
    assert len(ended) == 1 and "ended" in ended[0], ended


@pytest.mark.threads
@pytest.mark.parametrize("base,handler", [
    (servers.TCPServer, ClassicEcho),
    (servers.ThreadingTCPServer, ClassicEcho),
], ids=["sync", "threading-classic"])
def test_reset_mid_request_goes_to_handle_error_and_the_next_client_is_served(
        base: type, handler: type) -> None:
    server_class = recording(base)
    with in_thread(handler, server_class) as server:
        victim = client(server.server_address)
        victim.sendall(b"one\n")
        assert victim.recv(100) == b"one\n"  # the handler is inside the request now
        victim.sendall(b"half a li")
        address = victim.getsockname()
        reset(victim)
        with client(server.server_address) as next_client:
            next_client.sendall(b"next\n")
            assert next_client.recv(100) == b"next\n"
        for _ in range(500):  # the victim's handler may still be ending in its thread
            if on_loop(server, lambda: len(server.reactor.requests)) <= 1 and server.errors:
                break
    assert server.errors == [(address, ConnectionResetError)]


@pytest.mark.threads
def test_async_handler_in_a_thread_logs_a_reset_as_on_the_reactor(
        caplog: pytest.LogCaptureFixture) -> None:
    server_class = recording(servers.ThreadingTCPServer)
    with caplog.at_level(logging.INFO, logger="servers"), \
            in_thread(AsyncEcho, server_class) as server:
        victim = client(server.server_address)
        victim.sendall(b"one\n")
        assert victim.recv(100) == b"one\n"
        victim.sendall(b"half a li")
        reset(victim)
        with client(server.server_address) as next_client:
            next_client.sendall(b"next\n")
            assert next_client.recv(100) == b"next\n"
        for _ in range(500):  # the victim's handler may still be ending in its thread
            if on_loop(server, lambda: len(server.reactor.requests)) == 0:
                break
    assert server.errors == []  # a client's reset is not a server error
    ended = [rec.getMessage() for rec in server_records(caplog, logging.INFO)]
    assert len(ended) == 1 and "ended" in ended[0], ended


@needs_fork
@pytest.mark.forking
@pytest.mark.slow
def test_forking_reset_mid_request_leaves_the_server_serving() -> None:
    clients = """
        import struct
        victim = connect()
        victim.sendall(b"one\\n")
        assert recv_line(victim) == b"one\\n"
        victim.sendall(b"half a li")
        victim.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        victim.close()
        survivor = connect()
        survivor.sendall(b"next\\n")
        survivor.shutdown(socket.SHUT_WR)
        report(recv_all(survivor).decode())
    """
    with on_reactor(ClassicEcho, servers.ForkingTCPServer) as (server, r, _clock):
        with ClientProcess(clients, server.server_address) as proc:
            assert proc.finish(r) == ["next\n"]


# ------------------------------------------------------------------------------ dying while written to
@pytest.mark.parametrize("how", ["reset", "close"])
def test_reactor_client_vanishing_mid_response_ends_that_request(
        caplog: pytest.LogCaptureFixture, how: str) -> None:
    caplog.set_level(logging.INFO, logger="servers")
    with on_reactor(AsyncBig, recording(servers.TCPServer)) as (server, r, _clock):
        vanishing = client(server.server_address)
        vanishing.sendall(b"go\n")
        pump(r, lambda: len(r.requests) == 1)
        entry = r.requests[0]
        reply = Reply(vanishing)
        pump(r, lambda: reply.at_least(65536))  # the reply is under way
        (reset if how == "reset" else socket.socket.close)(vanishing)
        pump(r, lambda: not r.requests)
        assert (entry.bytes_out or 0) < BIG
        with client(server.server_address) as next_client:
            next_client.sendall(b"go\n")
            reply = Reply(next_client)
            pump(r, lambda: reply.at_least(100))
    assert server.errors == []
    ended = [rec.getMessage() for rec in server_records(caplog, logging.INFO)]
    assert any("ended" in message for message in ended), ended
    assert not server_records(caplog, logging.WARNING)


@pytest.mark.threads
@pytest.mark.parametrize("handler", [ClassicBig, AsyncBig], ids=["classic", "async"])
@pytest.mark.parametrize("how", ["reset", "close"])
def test_threading_client_vanishing_mid_response(handler: type, how: str) -> None:
    with in_thread(handler, recording(servers.ThreadingTCPServer)) as server:
        vanishing = client(server.server_address)
        vanishing.sendall(b"go\n")
        assert len(vanishing.recv(65536)) > 0
        address = vanishing.getsockname()
        (reset if how == "reset" else socket.socket.close)(vanishing)
        for _ in range(1000):  # one probe per loop turn, until the thread has finished
            if on_loop(server, lambda: len(server.reactor.requests)) == 0:
                break
        assert on_loop(server, lambda: len(server.reactor.requests)) == 0
        with client(server.server_address) as next_client:  # served, then vanishes too
            next_client.sendall(b"go\n")
            assert len(next_client.recv(100)) > 0
            next_address = next_client.getsockname()
    if handler is AsyncBig:
        # async handlers log a vanished client in every mode (INFO), as on the reactor
        assert server.errors == []
        return
    # Classic handlers report it as the standard library does.
    assert address in [error[0] for error in server.errors]
    assert {error[0] for error in server.errors} <= {address, next_address}
    assert all(issubclass(error[1], ConnectionError) for error in server.errors)


# ------------------------------------------------------------------------------ half-close
def test_reactor_half_closed_client_still_reads_the_whole_reply() -> None:
    with on_reactor(AsyncSummary) as (server, r, _clock):
        with client(server.server_address) as half:
            send_pumping(r, half, b"".join(b"line %d\n" % i for i in range(100)))
            half.shutdown(socket.SHUT_WR)
            reply = Reply(half)
            pump(r, reply.ended)
            assert bytes(reply.data) == HALF_CLOSE_REPLY and reply.error is None


@pytest.mark.threads
@pytest.mark.parametrize("base,handler", [
    (servers.TCPServer, ClassicSummary),
    (servers.ThreadingTCPServer, ClassicSummary),
    (servers.ThreadingTCPServer, AsyncSummary),
], ids=["sync", "threading-classic", "threading-async"])
def test_half_closed_client_still_reads_the_whole_reply(base: type, handler: type) -> None:
    with in_thread(handler, base) as server:
        with client(server.server_address) as half:
            half.sendall(b"".join(b"line %d\n" % i for i in range(100)))
            half.shutdown(socket.SHUT_WR)
            data = bytearray()
            while chunk := half.recv(1 << 20):
                data += chunk
            assert bytes(data) == HALF_CLOSE_REPLY


@needs_fork
@pytest.mark.forking
@pytest.mark.slow
def test_forking_half_closed_client_still_reads_the_whole_reply() -> None:
    clients = """
        half = connect()
        half.sendall(b"".join(b"line %d\\n" % i for i in range(100)))
        half.shutdown(socket.SHUT_WR)
        data = recv_all(half)
        report([len(data), data[-11:].decode()])
    """
    with on_reactor(AsyncSummary, servers.ForkingTCPServer) as (server, r, _clock):
        with ClientProcess(clients, server.server_address) as proc:
            assert proc.finish(r) == [[len(HALF_CLOSE_REPLY), "\n100 lines\n"]]


# ------------------------------------------------------------------------------ SIGPIPE
SIGPIPE_SERVER = textwrap.dedent("""
    import os, signal, socket, sys, threading
    sys.path.insert(0, sys.argv[1])
    if sys.argv[3] == "default":
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as a program piping to `head` does
    import reactor, servers

    class AsyncWriter(servers.StreamRequestHandler):
        async def handle(self):
            await self.rfile.readline()
            await self.rfile.readline()  # EOF: the client has closed
            for _ in range(64):
                self.wfile.write(b"x" * 65536)
                await self.wfile.drain()

    class ClassicWriter(servers.StreamRequestHandler):
        def handle(self):
            self.rfile.readline()
            self.rfile.readline()
            for _ in range(64):
                self.wfile.write(b"x" * 65536)

    mode = sys.argv[2]
    base = servers.ThreadingTCPServer if mode == "threading" else servers.TCPServer
    handler = AsyncWriter if mode == "reactor" else ClassicWriter
    server = base(("127.0.0.1", 0), handler)
    def say(text):  # one write(): lines from request threads never interleave
        os.write(1, text.encode() + b"\\n")
    server.handle_error = lambda request, address: say("handled " + sys.exc_info()[0].__name__)
    say(str(server.server_address[1]))
    for _ in range(3):  # each client: a line, then it closes before the replies
        server.handle_request()
    say("alive")
    server.server_close()
""")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["reactor", "sync", "threading"])
@pytest.mark.parametrize("disposition", ["python", "default"])
def test_epipe_never_kills_the_server_process(mode: str, disposition: str) -> None:
    with subprocess.Popen([sys.executable, "-c", SIGPIPE_SERVER, ROOT, mode, disposition],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline() or 0)
            assert port, proc.communicate(timeout=10)[1]
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(b"go\n")
                # closed with nothing unread: the server's first write gets a RST back, the
                # following ones EPIPE (and SIGPIPE, where it is not ignored)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode != -signal.SIGPIPE, "the server process was killed by SIGPIPE"
    assert proc.returncode == 0, (proc.returncode, err)
    assert "alive" in out.splitlines(), out


# ------------------------------------------------------------------------------ user-code faults
class Boom(Exception):
    pass


def faulty(style: str, phase: str) -> type:
    """A handler echoing one line whose `phase` raises Boom (after the reply when phase is
    finish, so the client can see the request ran)."""
    if style == "async":
        class AsyncFaulty(servers.StreamRequestHandler):
            async def setup(self) -> None:
                super().setup()
                if phase == "setup":
                    raise Boom(phase)

            async def handle(self) -> None:
                line = await self.rfile.readline()
                if phase == "handle":
                    raise Boom(phase)
                self.wfile.write(line)

            async def finish(self) -> None:
                super().finish()
                if phase == "finish":
                    raise Boom(phase)
        return AsyncFaulty

    class ClassicFaulty(servers.StreamRequestHandler):
        timeout = 10

        def setup(self) -> None:
            super().setup()
            if phase == "setup":
                raise Boom(phase)

        def handle(self) -> None:
            line = self.rfile.readline()
            if phase == "handle":
                raise Boom(phase)
            self.wfile.write(line)

        def finish(self) -> None:
            super().finish()
            if phase == "finish":
                raise Boom(phase)
    return ClassicFaulty


class ErrorsToClient(Errors):
    """Also tells the client (works in a forked child) and refuses nothing by default."""

    refuse = False

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.refuse:
            raise Boom("verify_request")
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        super().handle_error(request, client_address)
        if request is not None:
            with contextlib.suppress(OSError):
                request.setblocking(True)
                request.sendall(b"error %s\n" % str(sys.exc_info()[1]).encode())


PHASES = ["setup", "handle", "finish", "verify_request"]


def expected_reply(phase: str) -> bytes:
    return b"hello\nerror finish\n" if phase == "finish" else b"error %s\n" % phase.encode()


@pytest.mark.parametrize("style", ["async", "classic"])
@pytest.mark.parametrize("phase", PHASES)
def test_reactor_user_code_faults_reach_handle_error(style: str, phase: str) -> None:
    server_class = type("S", (ErrorsToClient, servers.TCPServer),
                        {"errors": [], "refuse": phase == "verify_request"})
    with on_reactor(faulty(style, phase), server_class) as (server, r, _clock):
        victims = [client(server.server_address) for _ in range(3)]
        for sock in victims:
            sock.sendall(b"hello\n")
        replies = [Reply(sock) for sock in victims]
        pump(r, lambda: all(reply.ended() for reply in replies))  # each one closed
        assert [bytes(reply.data) for reply in replies] == [expected_reply(phase)] * 3
        assert server.errors == [(sock.getsockname(), Boom) for sock in victims]
        for sock in victims:
            sock.close()
        server.refuse = False
        if phase == "verify_request":
            with client(server.server_address) as fine:
                fine.sendall(b"fine\n")
                reply = Reply(fine)
                pump(r, lambda: reply.has(b"\n"))
                assert bytes(reply.data) == b"fine\n"


@pytest.mark.threads
@pytest.mark.parametrize("style", ["async", "classic"])
@pytest.mark.parametrize("phase", PHASES)
def test_threading_user_code_faults_reach_handle_error(style: str, phase: str) -> None:
    server_class = type("S", (ErrorsToClient, servers.ThreadingTCPServer),
                        {"errors": [], "refuse": phase == "verify_request"})
    with in_thread(faulty(style, phase), server_class) as server:
        for _ in range(3):
            with client(server.server_address) as victim:
                victim.sendall(b"hello\n")
                data = bytearray()
                while chunk := victim.recv(100):
                    data += chunk
                assert bytes(data) == expected_reply(phase)
                address = victim.getsockname()
            assert server.errors[-1] == (address, Boom)
    assert len(server.errors) == 3


@needs_fork
@pytest.mark.forking
@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES)
def test_forking_user_code_faults_reach_handle_error(phase: str) -> None:
    server_class = type("S", (ErrorsToClient, servers.ForkingTCPServer),
                        {"errors": [], "refuse": phase == "verify_request"})
    clients = """
        replies = []
        for _ in range(3):
            sock = connect()
            sock.sendall(b"hello\\n")
            replies.append(recv_all(sock).decode())
            sock.close()
        report(replies)
    """
    with on_reactor(faulty("classic", phase), server_class) as (server, r, _clock):
        with ClientProcess(clients, server.server_address) as proc:
            assert proc.finish(r) == [[expected_reply(phase).decode()] * 3]
    if phase == "verify_request":  # the parent's hook: its errors are seen here
        assert [error[1] for error in server.errors] == [Boom] * 3


@pytest.mark.threads
def test_service_actions_fault_reaches_handle_error_and_serving_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    class Server(Errors, servers.TCPServer):
        errors: list[Any] = []

        def service_actions(self) -> None:
            calls.append(None)
            if len(calls) <= 3:
                raise Boom("service_actions")

    with in_thread(AsyncEcho, Server) as server:
        for i in range(3):
            with client(server.server_address) as sock:
                sock.sendall(b"line %d\n" % i)
                assert sock.recv(100) == b"line %d\n" % i
        for _ in range(500):
            if on_loop(server, lambda: len(calls)) > 3:
                break
    assert server.errors[:3] == [(None, Boom)] * 3
    assert len(calls) > 3
