"""Every server class of the standard library's contract, in every mode, serves real requests.

The matrix: {TCP, UDP, Unix stream, Unix datagram} x {synchronous, ThreadingMixIn, ForkingMixIn}
x {classic `def handle`, `async def handle`}, driven by `handle_request()` from the main thread
(no thread needed: the client's request is queued in the kernel before the server looks), and
by `serve_forever()` (in a thread for sync/threading; in the main thread with the client in a
subprocess for forking, since forking while other threads run is unsafe).
"""

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
from conftest import recv_line

HAS_FORK = hasattr(os, "fork")
HAS_UNIX = hasattr(socket, "AF_UNIX")

forking = [pytest.mark.forking, pytest.mark.skipif(not HAS_FORK, reason="needs os.fork")]
unix = [pytest.mark.skipif(not HAS_UNIX, reason="needs AF_UNIX")]
threads = [pytest.mark.threads]


# ---------------------------------------------------------------------------------- helpers
def where() -> bytes:
    """Identify the process and thread running a handler."""
    return b"%d %d " % (os.getpid(), threading.get_ident())


class StreamEcho(servers.StreamRequestHandler):
    timeout = 10  # a forked child must never outlive a failed test

    def handle(self) -> None:
        line = self.rfile.readline()
        self.wfile.write(where() + line.upper())


class AsyncStreamEcho(servers.StreamRequestHandler):
    timeout = 10  # a forked child must never outlive a failed test

    async def handle(self) -> None:
        line = await self.rfile.readline()
        self.wfile.write(where() + line.upper())


class DatagramEcho(servers.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(where() + self.rfile.readline().upper())


class AsyncDatagramEcho(servers.DatagramRequestHandler):
    async def handle(self) -> None:
        self.wfile.write(where() + self.rfile.readline().upper())


def Recording(name: str) -> type:
    """The named server class, remembering which thread runs serve_forever()."""
    base = getattr(servers, name)

    def serve_forever(self: Any, poll_interval: float = 0.5) -> None:
        self.serving_ident = threading.get_ident()
        base.serve_forever(self, poll_interval)

    return type(name, (base,), {"serve_forever": serve_forever})


# (class name, transport, mode)
CASES = [
    pytest.param("TCPServer", "tcp", "sync", id="TCPServer"),
    pytest.param("ThreadingTCPServer", "tcp", "thread", id="ThreadingTCPServer", marks=threads),
    pytest.param("ForkingTCPServer", "tcp", "fork", id="ForkingTCPServer", marks=forking),
    pytest.param("UDPServer", "udp", "sync", id="UDPServer"),
    pytest.param("ThreadingUDPServer", "udp", "thread", id="ThreadingUDPServer", marks=threads),
    pytest.param("ForkingUDPServer", "udp", "fork", id="ForkingUDPServer", marks=forking),
    pytest.param("UnixStreamServer", "unix-stream", "sync", id="UnixStreamServer", marks=unix),
    pytest.param("ThreadingUnixStreamServer", "unix-stream", "thread",
                 id="ThreadingUnixStreamServer", marks=unix + threads),
    pytest.param("ForkingUnixStreamServer", "unix-stream", "fork",
                 id="ForkingUnixStreamServer", marks=unix + forking),
    pytest.param("UnixDatagramServer", "unix-dgram", "sync", id="UnixDatagramServer",
                 marks=unix),
    pytest.param("ThreadingUnixDatagramServer", "unix-dgram", "thread",
                 id="ThreadingUnixDatagramServer", marks=unix + threads),
    pytest.param("ForkingUnixDatagramServer", "unix-dgram", "fork",
                 id="ForkingUnixDatagramServer", marks=unix + forking),
]


def make_server(name: str, transport: str, unix_path: str, async_handler: bool) -> object:
    stream = transport in ("tcp", "unix-stream")
    if stream:
        handler = AsyncStreamEcho if async_handler else StreamEcho
    else:
        handler = AsyncDatagramEcho if async_handler else DatagramEcho
    address = unix_path if transport.startswith("unix") else ("127.0.0.1", 0)
    server = Recording(name)(address, handler)
    assert server.server_address == server.socket.getsockname()
    return server


class Client:
    """One request-reply exchange over a fresh socket of the right kind."""

    def __init__(self, transport: str, address: object, unix_path: str, n: int = 0) -> None:
        self.transport = transport
        self.address = address
        if transport == "tcp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        elif transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        elif transport == "unix-stream":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(f"{unix_path}.client{n}")  # so that the reply has somewhere to go
        self.sock.settimeout(10)

    def send(self, payload: bytes) -> None:
        if self.transport in ("tcp", "unix-stream"):
            self.sock.connect(self.address)
            self.sock.sendall(payload)
        else:
            self.sock.sendto(payload, self.address)

    def reply(self) -> bytes:
        if self.transport in ("tcp", "unix-stream"):
            return recv_line(self.sock)
        return self.sock.recv(1000)

    def close(self) -> None:
        self.sock.close()


def check_reply(reply: bytes, payload: bytes, mode: str, serving_thread: int) -> None:
    pid, ident, rest = reply.split(b" ", 2)
    assert rest == payload.upper()
    if mode == "fork":
        assert int(pid) != os.getpid(), "a ForkingMixIn request must run in a child process"
    else:
        assert int(pid) == os.getpid()
        if mode == "thread":
            assert int(ident) != serving_thread, "a ThreadingMixIn request needs its own thread"
        else:
            assert int(ident) == serving_thread, "a synchronous server runs handlers inline"


# ---------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("async_handler", [False, True], ids=["def", "async"])
@pytest.mark.parametrize("name,transport,mode", CASES)
def test_handle_request_serves_one_request_per_call(name: str, transport: str, mode: str,
                                                    async_handler: bool,
                                                    unix_path: str) -> None:
    with make_server(name, transport, unix_path, async_handler) as server:
        for n in range(3):
            client = Client(transport, server.server_address, unix_path, n)
            try:
                payload = b"request %d\n" % n
                client.send(payload)
                assert server.handle_request() is None
                check_reply(client.reply(), payload, mode, threading.get_ident())
            finally:
                client.close()
        server.server_close()
        assert server.socket.fileno() == -1
        if mode == "fork":
            assert not server.active_children, "server_close() must wait for every child"


SERVE_FOREVER_CASES = [case for case in CASES if case.values[2] != "fork"]


@pytest.mark.threads
@pytest.mark.parametrize("async_handler", [False, True], ids=["def", "async"])
@pytest.mark.parametrize("name,transport,mode", SERVE_FOREVER_CASES)
def test_serve_forever_in_a_thread_serves_until_shutdown(name: str, transport: str, mode: str,
                                                         async_handler: bool, unix_path: str,
                                                         serving: type) -> None:
    server = make_server(name, transport, unix_path, async_handler)
    with serving(server, poll_interval=0.01) as server:
        for n in range(3):
            client = Client(transport, server.server_address, unix_path, n)
            try:
                payload = b"request %d\n" % n
                client.send(payload)
                check_reply(client.reply(), payload, mode, server.serving_ident)
            finally:
                client.close()
    assert server.socket.fileno() == -1


CLIENT_SCRIPT = textwrap.dedent("""
    import socket, sys
    kind, address, unix_path = sys.argv[1], sys.argv[2], sys.argv[3]
    if kind in ("tcp", "udp"):
        host, port = address.rsplit(":", 1)
        address = (host, int(port))
        family = socket.AF_INET
    else:
        family = socket.AF_UNIX
    stream = kind in ("tcp", "unix-stream")
    for n in range(3):
        with socket.socket(family, socket.SOCK_STREAM if stream else socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            payload = b"request %d\\n" % n
            if stream:
                s.connect(address)
                s.sendall(payload)
                reply = s.makefile("rb").readline()
            else:
                if family == socket.AF_UNIX:
                    s.bind(unix_path + ".client%d" % n)
                s.sendto(payload, address)
                reply = s.recv(1000)
            sys.stdout.write(reply.decode() if reply.endswith(b"\\n") else repr(reply) + "\\n")
""")


@pytest.mark.parametrize("name,transport,mode",
                         [case for case in CASES if case.values[2] == "fork"])
def test_forking_serve_forever_serves_a_client_process(name: str, transport: str, mode: str,
                                                       unix_path: str) -> None:
    server = make_server(name, transport, unix_path, async_handler=False)
    with server:
        address = server.server_address
        text = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else address
        client = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, transport, text,
                                   unix_path], stdout=subprocess.PIPE)
        try:
            def service_actions() -> None:
                type(server).service_actions(server)
                if client.poll() is not None:
                    server.shutdown()  # on the serving thread: returns at once
            server.service_actions = service_actions  # type: ignore[method-assign]
            server.serve_forever(poll_interval=0.02)
        finally:
            out, _ = client.communicate(timeout=20)
        assert client.returncode == 0
    lines = out.splitlines()
    assert len(lines) == 3
    for n, line in enumerate(lines):
        check_reply(line + b"\n", b"request %d\n" % n, mode, threading.get_ident())
    assert not server.active_children
