"""Shared helpers of the TLS suite (`test_tls_*.py`); this module has no tests.

Contexts come from the committed test certificates (`tests/certs`, see make.sh there). One
harness serves a handler in any mode and hands out TLS clients with the same surface:
- plain and threading servers run `serve_forever()` in a thread and the clients block in the
  test thread (a classic handler on a plain server blocks its loop, so its client cannot share
  that thread);
- forking servers run their loop on the test thread (3.12+ warns when forking with threads
  alive) and their clients are non-blocking, each operation pumping the loop until it can
  proceed; so do plain servers asked for `pumped=True`, with a fake clock the test moves.
  A client ends its connection with `shutdown()`, which a forked child that inherited a copy
  of the client's descriptor cannot hold back.
Handlers report what they saw through `Notes`, a pipe that works from threads and children.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import reactor
import servers
from reactor.testing import FakeClock
from test_hostile_support import client as plain_client
from test_hostile_support import in_thread, on_loop, on_reactor, pipe_log

HOST = "127.0.0.1"
CERTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "certs")
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
needs_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX")
SERVER_CLASSES: dict[tuple[str, str], type] = {
    ("plain", "tcp"): servers.TCPServer,
    ("threading", "tcp"): servers.ThreadingTCPServer,
    ("forking", "tcp"): servers.ForkingTCPServer,
    ("plain", "unix"): servers.UnixStreamServer,
    ("threading", "unix"): servers.ThreadingUnixStreamServer,
    ("forking", "unix"): servers.ForkingUnixStreamServer,
}
_MARKS: dict[str, list[Any]] = {"plain": [pytest.mark.threads],  # (its serving thread)
                                "threading": [pytest.mark.threads],
                                "forking": [pytest.mark.forking, needs_fork],
                                "tcp": [], "unix": [needs_unix]}
# Parameter sets for pytest.mark.parametrize, marked by mode and family:
MODES = [pytest.param(mode, marks=_MARKS[mode], id=mode)
         for mode in ("plain", "threading", "forking")]
FAMILIES = [pytest.param(family, marks=_MARKS[family], id=family)
            for family in ("tcp", "unix")]
# Every (mode, kind) pair; CONCURRENT leaves out a classic handler on a plain server, which
# serves one connection at a time by design (its loop runs the handler).
EVERY_MODE = [pytest.param(mode, kind, marks=_MARKS[mode], id=f"{mode}-{kind}")
              for mode in ("plain", "threading", "forking") for kind in ("def", "async")]
CONCURRENT = [param for param in EVERY_MODE if param.values != ("plain", "def")]


def cert(name: str) -> tuple[str, str]:
    return os.path.join(CERTS, name + ".pem"), os.path.join(CERTS, name + ".key")


def server_context(name: str = "server", *, client_certs: ssl.VerifyMode = ssl.CERT_NONE,
                   alpn: list[str] | None = None) -> ssl.SSLContext:
    """A server context with the certificate `name` (server: localhost/127.0.0.1/::1;
    other: other.test); `client_certs` asks for client certificates from the test CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert(name))
    if client_certs != ssl.CERT_NONE:
        context.verify_mode = client_certs
        context.load_verify_locations(os.path.join(CERTS, "ca.pem"))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def client_context(cert_name: str | None = None, *, version: ssl.TLSVersion | None = None,
                   alpn: list[str] | None = None) -> ssl.SSLContext:
    """A client context trusting the test CA (hostnames checked), presenting the client
    certificate `cert_name` if given, pinned to `version` if given."""
    context = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))
    if cert_name is not None:
        context.load_cert_chain(*cert(cert_name))
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def subject_cn(peer_cert: dict[str, Any] | None) -> str | None:
    """The commonName of a decoded certificate (`getpeercert()`), or None."""
    for rdn in (peer_cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


# ------------------------------------------------------------------------------ notes
class Notes:
    """JSON values written through a pipe by handlers and server hooks in this process, its
    threads or its forked children; `collect()` returns every value written so far."""

    def __init__(self) -> None:
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        self.values: list[Any] = []
        self._partial = b""

    def add(self, value: Any) -> None:
        os.write(self.wfd, json.dumps(value).encode() + b"\n")  # < PIPE_BUF: atomic

    def collect(self) -> list[Any]:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.rfd, 65536):
                self._partial += chunk
        *lines, self._partial = self._partial.split(b"\n")
        self.values.extend(json.loads(line) for line in lines)
        return self.values

    def close(self) -> None:
        if self.rfd >= 0:
            os.close(self.rfd)
            os.close(self.wfd)
            self.rfd = self.wfd = -1


def noting_handle_error(server: Any, request: Any, client_address: Any) -> None:
    """A `handle_error` that notes the exception (a test asserts there is none)."""
    import sys
    server.notes.add({"handle_error": repr(sys.exc_info()[1])})


# ------------------------------------------------------------------------------ clients
def connected(address: Any) -> socket.socket:
    """A plain connection to `address`; a socket passed instead is taken as it is (a test
    that needs options set before connecting connects it itself)."""
    if isinstance(address, socket.socket):
        return address
    return plain_client(address)


class BlockingClient:
    """A blocking TLS client (its handshake done), for servers served by another thread."""

    def __init__(self, address: Any, context: ssl.SSLContext | None = None,
                 server_hostname: str = "localhost", handshake: bool = True) -> None:
        raw = connected(address)
        self.tls = (context or client_context()).wrap_socket(
            raw, server_hostname=server_hostname, do_handshake_on_connect=False,
            suppress_ragged_eofs=False)  # EOF without close_notify raises: tests see it
        if handshake:
            self.do_handshake()

    def do_handshake(self) -> None:
        self.tls.do_handshake()

    def sendall(self, data: bytes) -> None:
        self.tls.sendall(data)

    def recv(self, size: int = 65536) -> bytes:
        return self.tls.recv(size)

    def unwrap(self) -> socket.socket:
        """Send close_notify and wait for the server's; returns the plain socket."""
        plain: socket.socket = self.tls.unwrap()
        return plain

    def close(self) -> None:
        """Close without close_notify (Python's `SSLSocket.close()` never sends it)."""
        with contextlib.suppress(OSError):
            self.tls.shutdown(socket.SHUT_RDWR)
        self.tls.close()


class PumpedClient(BlockingClient):
    """A non-blocking TLS client driven from the thread that runs the server's reactor: each
    operation tries, and runs loop turns (woken early when this socket is ready) until it can
    proceed, so the loop keeps accepting and reaping meanwhile."""

    def __init__(self, r: reactor.Reactor, address: Any, context: ssl.SSLContext | None = None,
                 server_hostname: str = "localhost", handshake: bool = True,
                 turns: int = 2000) -> None:
        self.r = r
        self.turns = turns
        raw = connected(address)
        raw.setblocking(False)
        self.tls = (context or client_context()).wrap_socket(
            raw, server_hostname=server_hostname, do_handshake_on_connect=False,
            suppress_ragged_eofs=False)
        if handshake:
            self.do_handshake()

    def _retry(self, operation: Callable[[], Any]) -> Any:
        fd = self.tls.fileno()
        for _ in range(self.turns):
            try:
                return operation()
            except ssl.SSLWantWriteError:
                self.wait(fd, writable=True)
            except (ssl.SSLWantReadError, BlockingIOError):
                self.wait(fd, writable=False)
        raise AssertionError("the TLS client could not proceed within its turn budget")

    def wait(self, fd: int, writable: bool) -> None:
        """One loop turn, woken early when `fd` is ready."""
        r = self.r
        (r.add_writer if writable else r.add_reader)(fd, lambda: None)
        try:
            r.run_once(0.05)
        finally:
            r.forget(fd)

    def do_handshake(self) -> None:
        self._retry(self.tls.do_handshake)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._retry(lambda: self.tls.send(view)):]

    def recv(self, size: int = 65536) -> bytes:
        data: bytes = self._retry(lambda: self.tls.recv(size))
        return data

    def unwrap(self) -> socket.socket:
        plain: socket.socket = self._retry(self.tls.unwrap)
        return plain


class StagedClient(BlockingClient):
    """A blocking TLS client over memory BIOs (`SSLContext.wrap_bio`) whose `hello()` sends
    the ClientHello alone: the rest of the handshake waits for `do_handshake()`, however
    fast the server answers from another thread."""

    def __init__(self, address: Any, context: ssl.SSLContext | None = None,
                 server_hostname: str = "localhost") -> None:
        self.raw = plain_client(address)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = (context or client_context()).wrap_bio(
            self.incoming, self.outgoing, server_hostname=server_hostname)

    def _run(self, operation: Callable[[], Any]) -> Any:
        while True:
            try:
                result = operation()
            except ssl.SSLWantReadError:
                self._flush()
                data = self.raw.recv(65536)
                if data:
                    self.incoming.write(data)
                else:
                    self.incoming.write_eof()
                continue
            self._flush()
            return result

    def _flush(self) -> None:
        if data := self.outgoing.read():
            self.raw.sendall(data)

    def hello(self) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.obj.do_handshake()
        self._flush()

    def do_handshake(self) -> None:
        self._run(self.obj.do_handshake)

    def sendall(self, data: bytes) -> None:
        self._run(lambda: self.obj.write(data))

    def recv(self, size: int = 65536) -> bytes:
        data: bytes = self._run(lambda: self.obj.read(size))  # b"" after close_notify
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.raw.shutdown(socket.SHUT_RDWR)
        self.raw.close()


def recv_line(c: BlockingClient) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = c.recv(1)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def recv_exactly(c: BlockingClient, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = c.recv(min(65536, size - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def recv_all(c: BlockingClient) -> bytes:
    """Read until a clean TLS end (close_notify); a close without it raises SSLEOFError."""
    data = bytearray()
    while chunk := c.recv(65536):
        data += chunk
    return bytes(data)


def refused(c: BlockingClient) -> bool:
    """True when the server ends the connection without answering (an alert, a reset, or an
    end of stream); the client first asks for something."""
    try:
        c.sendall(b"info\n")
        return c.recv(100) == b""
    except (ssl.SSLError, ConnectionError):
        return True


# ------------------------------------------------------------------------------ harness
class Served:
    """A server being served in some mode, and how to reach it."""

    def __init__(self, server: Any, mode: str, r: reactor.Reactor | None = None,
                 clock: FakeClock | None = None) -> None:
        self.server = server
        self.mode = mode
        self.r = r
        self.clock = clock

    @property
    def address(self) -> Any:
        return self.server.server_address

    @property
    def loop(self) -> reactor.Reactor:
        """The reactor the test thread runs (pumped servers only)."""
        assert self.r is not None, "this server runs in another thread"
        return self.r

    @property
    def fake_clock(self) -> FakeClock:
        """The reactor's clock, moved by the test (pumped servers only)."""
        assert self.clock is not None, "this server runs in another thread"
        return self.clock

    def connect(self, context: ssl.SSLContext | None = None, server_hostname: str = "localhost",
                handshake: bool = True) -> BlockingClient:
        if self.r is not None:
            return PumpedClient(self.r, self.address, context, server_hostname, handshake)
        return BlockingClient(self.address, context, server_hostname, handshake)

    def raw(self) -> socket.socket:
        """A plain connection (a client that never starts its handshake)."""
        return plain_client(self.address)

    def wait_eof(self, sock: socket.socket) -> bytes:
        """Read a plain socket until the server closes it (pumping the loop if it is ours);
        returns what came before the end."""
        data = bytearray()
        if self.r is not None:
            sock.setblocking(False)
        for _ in range(3000):
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                assert self.r is not None
                self.r.run_once(0.01)
                continue
            except ConnectionResetError:
                return bytes(data)
            if not chunk:
                return bytes(data)
            data += chunk
        raise AssertionError("the server did not close the connection")

    def until(self, condition: Callable[[], Any], turns: int = 2000) -> None:
        """Wait until `condition()` holds: pumping the loop when the test thread runs it,
        else evaluating it on the serving thread between loop turns (a round trip each)."""
        for _ in range(turns):
            if self.r is not None:
                if condition():
                    return
                self.r.run_once(0.01)
            elif on_loop(self.server, condition):
                return
        raise AssertionError("the condition was not reached within the turn budget")

    def table(self) -> list[tuple[int, str]]:
        """(id, state) of every entry in the server's request table, read on its loop."""
        def read() -> list[tuple[int, str]]:
            return [(entry.id, entry.state) for entry in self.server.reactor.requests]
        if self.r is not None or self.server.reactor.is_serving_thread():
            return read()  # (from the loop's thread: inside `until()`)
        table: list[tuple[int, str]] = on_loop(self.server, read)
        return table


def _signalling_attach(server: Any, r: reactor.Reactor) -> None:
    """`attach` that tells the test its server is on its loop (probes can reach it then)."""
    servers.BaseServer.attach(server, r)
    server.attached.set()


@contextlib.contextmanager
def serve(mode: str, family: str, handler: type, unix_path: str, *, pumped: bool = False,
          **attrs: Any) -> Iterator[Served]:
    """Serve `handler` with the (mode, family) server class subclassed with `attrs`. Forking
    servers (and plain ones when `pumped`) run on the test thread with a fake clock; the
    others in a serving thread. Also yields a `Notes` as `server.notes`."""
    server_class = SERVER_CLASSES[(mode, family)]
    address = unix_path if family == "unix" else (HOST, 0)
    notes = Notes()
    attrs = {"notes": notes, "handle_error": noting_handle_error, **attrs}
    try:
        if mode == "forking" or pumped:
            with on_reactor(handler, server_class, address, **attrs) as (server, r, clock):
                yield Served(server, mode, r, clock)
        else:
            attached = threading.Event()
            attrs["attach"] = _signalling_attach
            attrs["attached"] = attached
            with in_thread(handler, server_class, address, **attrs) as server:
                assert attached.wait(10), "serve_forever() did not start"
                yield Served(server, mode)
    finally:
        notes.close()


__all__ = ["pipe_log"]  # re-exported for the TLS tests
