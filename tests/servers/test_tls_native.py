"""Native TLS (`ssl_context`) on every stream server class and mode, with real sockets and
Python's ssl client (and the `openssl s_client` CLI as an external one).

The same handler code runs as `def handle()` and as `async def handle()`. Plain and threading
servers run in a serving thread with blocking clients; forking servers, and the plain servers
of the reactor-only tests (limits, the request table), run their loop on the test thread with
clients that pump it, the latter with a fake clock (see `test_tls_support.py`). Clients
disable `suppress_ragged_eofs`, so every clean end of stream they read proves the server sent
close_notify (a close without it raises `ssl.SSLEOFError`).

Issue 9, section 2: every bullet has a test here except the CLI flags (`--tls-cert`, not built
yet when this suite was written).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from typing import Any, cast

import pytest

import servers
from handlers.transport import tls_of
from test_hostile_support import listening
from test_tls_support import (
    CONCURRENT, EVERY_MODE, FAMILIES, HOST, MODES, BlockingClient, PumpedClient, StagedClient,
    client_context, needs_fork, pipe_log, recv_all, recv_line, refused, serve, server_context,
    subject_cn)

pytestmark = pytest.mark.timeout(30)


# ------------------------------------------------------------------------------ handlers
def describe(handler: Any) -> dict[str, Any]:
    """What a handler sees of its connection, as a test reads it back."""
    tls, request = handler.tls, handler.request
    return {
        "request": type(request).__name__, "tls": type(tls).__name__,
        "request_is_tls": tls is request,
        "blocking": request.gettimeout() is None,
        "version": tls.version(), "cipher": tls.cipher()[0],
        "alpn": tls.selected_alpn_protocol(), "peer": subject_cn(tls.getpeercert()),
        "pid": os.getpid(), "thread": threading.current_thread().name,
    }


def respond(handler: Any, line: bytes) -> bytes:
    """The echo protocol: b"info\\n" asks what the handler sees; any other line is echoed."""
    if line == b"info\n":
        return json.dumps(describe(handler)).encode() + b"\n"
    return b"echo: " + line


class EchoDef(servers.StreamRequestHandler):
    """Echo lines until b"bye\\n" (then the server closes) or end of stream (noted)."""

    def handle(self) -> None:
        for line in self.rfile:
            if line == b"bye\n":
                return
            self.wfile.write(respond(self, line))
        cast(Any, self.server).notes.add({"eof": True})


class EchoAsync(servers.StreamRequestHandler):
    """EchoDef's protocol as an async handler."""

    async def handle(self) -> None:
        async for line in self.rfile:
            if line == b"bye\n":
                return
            self.wfile.write(respond(self, line))
        cast(Any, self.server).notes.add({"eof": True})


ECHO = {"def": EchoDef, "async": EchoAsync}
VERSIONS = [pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
            pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3")]


def handler_errors(s: Any) -> list[Any]:
    return [note for note in s.server.notes.collect() if "handle_error" in note]


def echo(c: BlockingClient, text: bytes = b"ping\n") -> bytes:
    c.sendall(text)
    return recv_line(c)


def info(c: BlockingClient) -> dict[str, Any]:
    c.sendall(b"info\n")
    value: dict[str, Any] = json.loads(recv_line(c))
    return value


def bye(c: BlockingClient) -> None:
    """End the session; the server closes with close_notify (clean end of stream)."""
    c.sendall(b"bye\n")
    assert c.recv() == b""
    c.close()


def assert_worker(mode: str, seen: dict[str, Any]) -> None:
    """The handler ran where the mode says: the serving thread, a request thread, a child."""
    if mode == "forking":
        assert seen["pid"] != os.getpid()
    else:
        assert seen["pid"] == os.getpid()
        assert (seen["thread"] == "hostile-serve") == (mode == "plain"), seen["thread"]


# ------------------------------------------------------------------------------ basics
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode,kind", EVERY_MODE)
def test_echo_over_tls_12_and_13_in_every_mode(mode: str, kind: str, family: str,
                                                unix_path: str) -> None:
    """Round trips of pipelined lines, answered in order; `self.tls` tells the version, the
    cipher, ALPN and the client certificate; a classic handler's `request` is a blocking
    `SSLSocket`; the server's close sends close_notify."""
    context = server_context(client_certs=ssl.CERT_OPTIONAL, alpn=["h2", "echo/1"])
    lines = [b"line %d\n" % i for i in range(100)]
    seen = {}
    with pipe_log() as log, serve(mode, family, ECHO[kind], unix_path,
                                  ssl_context=context) as s:
        for version, client_cert in ((ssl.TLSVersion.TLSv1_3, "client"),
                                     (ssl.TLSVersion.TLSv1_2, None)):
            c = s.connect(client_context(client_cert, version=version, alpn=["echo/1"]))
            c.sendall(b"".join(lines) + b"info\n")  # pipelined: one write, 101 requests
            assert [recv_line(c) for _ in lines] == [b"echo: " + line for line in lines]
            seen[version.name] = json.loads(recv_line(c))
            assert c.tls.selected_alpn_protocol() == "echo/1"
            bye(c)
        assert handler_errors(s) == []
        assert log.collect() == []
    tls13, tls12 = seen["TLSv1_3"], seen["TLSv1_2"]
    assert (tls13["version"], tls12["version"]) == ("TLSv1.3", "TLSv1.2")
    assert (tls13["peer"], tls12["peer"]) == ("test client", None)
    for view in (tls13, tls12):
        assert view["request"] == view["tls"] == "SSLSocket"
        assert view["request_is_tls"] and view["alpn"] == "echo/1" and view["cipher"]
        if kind == "def":
            assert view["blocking"], "a classic handler gets a blocking SSLSocket"
        assert_worker(mode, view)


@pytest.mark.parametrize("cls", [servers.UDPServer, servers.UnixDatagramServer,
                                 servers.ThreadingUDPServer, servers.ForkingUDPServer])
def test_datagram_servers_refuse_ssl_context(cls: type, unix_path: str) -> None:
    address = unix_path if cls is servers.UnixDatagramServer else (HOST, 0)
    tls_class = type("TLSDatagram", (cls,), {"ssl_context": server_context()})
    with pytest.raises(ValueError, match="ssl_context.*DTLS.*stream server"):
        tls_class(address, servers.DatagramRequestHandler)
    assert not os.path.exists(unix_path), "nothing was bound"
    with cls(address, servers.DatagramRequestHandler) as server:
        assert server.ssl_context is None
        server.ssl_context = None  # harmless
        with pytest.raises(ValueError, match="ssl_context.*DTLS.*stream server"):
            server.ssl_context = server_context()
        assert server.ssl_context is None


# ------------------------------------------------------------------------------ rotation
@pytest.mark.parametrize("mode,kind", CONCURRENT)
def test_assigning_a_new_context_rotates_the_certificate_for_new_connections(
        mode: str, kind: str, unix_path: str) -> None:
    with serve(mode, "tcp", ECHO[kind], unix_path) as s:
        s.server.ssl_context = server_context("server")  # on the instance, before serving
        first = s.connect()
        assert subject_cn(first.tls.getpeercert()) == "localhost"
        assert echo(first, b"before\n") == b"echo: before\n"
        s.server.ssl_context = server_context("other")  # while serving, `first` still open
        second = s.connect(server_hostname="other.test")
        assert subject_cn(second.tls.getpeercert()) == "other.test"
        assert echo(second, b"new\n") == b"echo: new\n"
        assert echo(first, b"after\n") == b"echo: after\n"  # the open one keeps working
        assert subject_cn(first.tls.getpeercert()) == "localhost"
        bye(second)
        bye(first)
        assert handler_errors(s) == []


# ------------------------------------------------------------------------------ handshake bound
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_a_silent_client_is_cut_at_ssl_handshake_timeout_while_others_are_served(
        mode: str, family: str, unix_path: str) -> None:
    bound = 0.4
    with pipe_log() as log, serve(mode, family, EchoDef, unix_path, ssl_context=server_context(),
                                  ssl_handshake_timeout=bound) as s:
        started = time.monotonic()  # before the server can accept (and start its timer)
        silent = s.raw()  # connects, never sends a ClientHello
        good = s.connect()  # served meanwhile
        assert echo(good) == b"echo: ping\n"
        bye(good)
        assert log.collect() == [], "the silent client was still held while `good` was served"
        assert s.wait_eof(silent) == b""
        elapsed = time.monotonic() - started
        silent.close()
        lines = log.collect()
    assert bound <= elapsed < bound + 10, elapsed
    assert len(lines) == 1 and f"ssl_handshake_timeout={bound}" in lines[0], lines


# ------------------------------------------------------------------ what the context configures
@pytest.mark.parametrize("mode,kind", EVERY_MODE)
def test_sni_callback_switches_to_the_other_certificate(mode: str, kind: str,
                                                        unix_path: str) -> None:
    context, other = server_context("server"), server_context("other")
    asked: list[str | None] = []

    def pick(tls: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
        asked.append(server_name)  # (in a forked child this list is the child's copy)
        if server_name == "other.test":
            tls.context = other

    context.sni_callback = pick
    with serve(mode, "tcp", ECHO[kind], unix_path, ssl_context=context) as s:
        for name, expected in (("other.test", "other.test"), ("localhost", "localhost")):
            c = s.connect(server_hostname=name)  # the client checks the name it asked for
            assert subject_cn(c.tls.getpeercert()) == expected
            assert echo(c) == b"echo: ping\n"
            bye(c)
        assert handler_errors(s) == []
    assert asked == ([] if mode == "forking" else ["other.test", "localhost"])


@pytest.mark.parametrize("mode,kind", CONCURRENT)
def test_client_certificates_required_refuse_bad_clients_at_the_handshake(
        mode: str, kind: str, unix_path: str) -> None:
    context = server_context(client_certs=ssl.CERT_REQUIRED)
    with pipe_log() as log, serve(mode, "tcp", ECHO[kind], unix_path,
                                  ssl_context=context) as s:
        valid = s.connect(client_context("client"))
        assert info(valid)["peer"] == "test client"
        for bad in (None, "rogue-client"):  # no certificate; one from another CA
            intruder = s.connect(client_context(bad), handshake=False)
            try:
                intruder.do_handshake()  # TLS 1.3: the client's side may complete first
            except (ssl.SSLError, ConnectionError):
                pass
            else:
                assert refused(intruder)
            intruder.close()
        assert echo(valid) == b"echo: ping\n"  # unaffected
        bye(valid)
        later = s.connect(client_context("client"))
        assert info(later)["peer"] == "test client"
        bye(later)
        s.until(lambda: len(log.collect()) >= 2)
        lines = log.collect()
        assert handler_errors(s) == []
    assert len(lines) == 2, lines
    assert all(line.startswith("WARNING") and "TLS handshake" in line for line in lines), lines
    assert all("certificate" in line.lower() for line in lines), lines


@pytest.mark.parametrize("mode,kind", EVERY_MODE)
def test_a_client_closing_without_close_notify_is_end_of_file(mode: str, kind: str,
                                                              unix_path: str) -> None:
    with pipe_log() as log, serve(mode, "tcp", ECHO[kind], unix_path,
                                  ssl_context=server_context()) as s:
        c = s.connect()
        assert echo(c) == b"echo: ping\n"
        c.close()  # no close_notify: Python's SSLSocket.close() never sends it
        s.until(lambda: s.server.notes.collect())
        assert s.server.notes.collect() == [{"eof": True}]
        assert log.collect() == []  # no error line, no traceback (handle_error noted none)


@pytest.mark.parametrize("mode,kind", EVERY_MODE)
def test_a_client_unwrap_is_end_of_file_and_answered_with_close_notify(
        mode: str, kind: str, unix_path: str) -> None:
    with pipe_log() as log, serve(mode, "tcp", ECHO[kind], unix_path,
                                  ssl_context=server_context()) as s:
        c = s.connect()
        assert echo(c) == b"echo: ping\n"
        plain = c.unwrap()  # sends close_notify, returns once the server's has come
        assert tls_of(plain) is None or cast(ssl.SSLSocket, plain).version() is None
        c.close()
        s.until(lambda: s.server.notes.collect())
        assert s.server.notes.collect() == [{"eof": True}]
        assert log.collect() == []


class ShowTLSDef(servers.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(repr(self.tls).encode() + b"\n")


class ShowTLSAsync(servers.StreamRequestHandler):
    async def handle(self) -> None:
        self.wfile.write(repr(self.tls).encode() + b"\n")


@pytest.mark.parametrize("mode,kind", EVERY_MODE)
def test_tls_is_none_without_ssl_context(mode: str, kind: str, unix_path: str) -> None:
    handler = {"def": ShowTLSDef, "async": ShowTLSAsync}[kind]
    with serve(mode, "tcp", handler, unix_path) as s:
        with s.raw() as plain:
            assert s.wait_eof(plain) == b"None\n"


class BigDef(servers.StreamRequestHandler):
    size = 5 * 1024 * 1024

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(blob(self.size))


class BigAsync(servers.StreamRequestHandler):
    size = 5 * 1024 * 1024

    async def handle(self) -> None:
        await self.rfile.readline()
        data = memoryview(blob(self.size))
        for start in range(0, len(data), 65536):
            self.wfile.write(data[start:start + 65536])
            await self.wfile.drain()


def blob(size: int) -> bytes:
    return hashlib.sha256(b"seed").digest() * (size // 32)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("mode,kind", EVERY_MODE)
def test_a_5_mb_response_over_tls(mode: str, kind: str, version: ssl.TLSVersion,
                                  unix_path: str) -> None:
    handler: Any = {"def": BigDef, "async": BigAsync}[kind]
    with serve(mode, "tcp", handler, unix_path, ssl_context=server_context()) as s:
        c = s.connect(client_context(version=version))
        c.sendall(b"go\n")
        data = recv_all(c)  # ends cleanly: close_notify after the last byte
        c.close()
        assert len(data) == handler.size and data == blob(handler.size)
        assert handler_errors(s) == []


# ------------------------------------------------------------------------------ async API over TLS
class ApiAsync(servers.StreamRequestHandler):
    """readline, read(n) beyond max_buffer_size, read1 and `async for`, each answered."""

    timeout = 5.0  # a read left waiting by a bug ends in TimeoutError, not a hung test

    async def handle(self) -> None:
        size = int(await self.rfile.readline())
        body = await self.rfile.read(size)
        # The end of the body and this line came in one TLS record: the line is already
        # decrypted inside the TLS layer, and the client sends nothing more until answered.
        tail = await self.rfile.readline()
        digest = hashlib.sha256(body).hexdigest()[:16].encode()
        self.wfile.write(b"%d %s %s" % (len(body), digest, tail))
        first = await self.rfile.read1(100)
        self.wfile.write(b"read1 " + first + b"\n")
        count = 0
        async for line in self.rfile:
            if line == b"end\n":
                break
            count += 1
        self.wfile.write(b"lines %d\n" % count)
        self.wfile.write(b"exact " + await self.rfile.read(4) + b"\n")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_async_reader_api_over_tls(mode: str, family: str, version: ssl.TLSVersion,
                                   unix_path: str) -> None:
    body = os.urandom(300_000)  # above max_buffer_size (256 KiB): delivered whole
    assert len(body) > ApiAsync.max_buffer_size
    with pipe_log() as log, serve(mode, family, ApiAsync, unix_path,
                                  ssl_context=server_context()) as s:
        c = s.connect(client_context(version=version))
        c.sendall(b"%d\n" % len(body) + body + b"tail\n")
        digest = hashlib.sha256(body).hexdigest()[:16].encode()
        assert recv_line(c) == b"300000 %s tail\n" % digest
        c.sendall(b"xyz")
        assert recv_line(c) == b"read1 xyz\n"
        c.sendall(b"a\nb\nc\nend\n")
        assert recv_line(c) == b"lines 3\n"
        c.sendall(b"abcd")
        assert recv_all(c) == b"exact abcd\n"
        c.close()
        assert log.collect() == [] and handler_errors(s) == []


# ------------------------------------------------------------------------- limits on the reactor
# The reactor's TLS transport is where TLS changes how bytes move; these tests drive it on the
# test thread with a fake clock (threads and children read through a blocking SSLSocket, whose
# bounds are the socket timeouts of the plain-socket tests).
class Flood(servers.StreamRequestHandler):
    """Write 64 KiB chunks with drain() to a client that reads nothing."""

    write_timeout = 5.0
    buffered: list[int] = []
    outcome: list[str] = []

    async def handle(self) -> None:
        await self.rfile.readline()
        try:
            for _ in range(4096):
                self.wfile.write(b"y" * 65536)
                type(self).buffered.append(self.wfile.buffered)
                await self.wfile.drain()
        except TimeoutError:
            type(self).outcome.append("timeout")
            raise


class Stream(servers.StreamRequestHandler):
    """Send back whatever comes, as it comes (read1, write, drain): full duplex."""

    def setup(self) -> None:
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # writes wait
        super().setup()

    async def handle(self) -> None:
        while chunk := await self.rfile.read1(65536):
            self.wfile.write(chunk)
            await self.wfile.drain()


@pytest.mark.parametrize("version", VERSIONS)
def test_full_duplex_streaming_over_tls(version: ssl.TLSVersion, unix_path: str) -> None:
    """The client keeps sending while the echo comes back: the reactor reads records while
    a write of its own waits for the socket, and writes while reads wait."""
    data = os.urandom(4 * 1024 * 1024)
    with serve("plain", "tcp", Stream, unix_path, pumped=True,
               ssl_context=server_context()) as s:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        raw.settimeout(10)
        raw.connect(s.address)
        c = PumpedClient(s.loop, raw, client_context(version=version))
        tls, view, got = c.tls, memoryview(data), bytearray()
        for _ in range(20000):  # one client, one thread: no SSL object used by two threads
            progress = False
            try:  # send while the socket takes it; read only once it does not (the server's
                if not view:  # writes then wait for the socket while it reads, and back)
                    raise ssl.SSLWantWriteError
                view, progress = view[tls.send(view[:65536]):], True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    while chunk := tls.recv(65536):
                        got += chunk
                        progress = True
            if len(got) == len(data):
                break
            s.loop.run_once(0 if progress else 0.01)
        assert len(got) == len(data) and got == data
        c.unwrap()  # close_notify both ways: the handler's read1() gives b""
        c.close()


def test_drain_backpressure_and_write_timeout_over_tls(unix_path: str) -> None:
    class Handler(Flood):
        buffered: list[int] = []
        outcome: list[str] = []

    with pipe_log() as log, serve("plain", "tcp", Handler, unix_path, pumped=True,
                                  ssl_context=server_context()) as s:
        c = s.connect()
        c.sendall(b"go\n")  # then never reads
        s.until(lambda: s.table() and s.table()[0][1] == "writing")
        before = len(Handler.buffered)
        for _ in range(20):  # parked in drain(): the client reads nothing, nothing moves
            s.loop.run_once(0.001)
        assert len(Handler.buffered) == before and s.table()[0][1] == "writing"
        s.fake_clock.advance(Handler.write_timeout)  # drain() times out...
        s.until(lambda: Handler.outcome == ["timeout"])
        s.fake_clock.advance(Handler.write_timeout)  # ...and so does the final flush
        s.until(lambda: not s.loop.requests)
        c.close()
        lines = log.collect()
    assert max(Handler.buffered) <= Handler.write_high_water + 65536
    assert len(lines) == 1 and lines[0].startswith("INFO") and "ended" in lines[0], lines


def test_max_line_length_over_tls_closes_that_client_alone(unix_path: str) -> None:
    class Handler(EchoAsync):
        max_line_length = 1024

    with pipe_log() as log, serve("plain", "tcp", Handler, unix_path, pumped=True,
                                  ssl_context=server_context()) as s:
        good = s.connect()
        bad = s.connect()
        try:
            bad.sendall(b"q" * 100_000)
            assert bad.recv() == b""  # closed with close_notify
        except ConnectionError:
            pass  # closed with the rest of the line unread: a reset
        bad.close()
        assert echo(good) == b"echo: ping\n"
        bye(good)
        lines = log.collect()
    assert len(lines) == 1 and lines[0].startswith("WARNING"), lines
    assert "max_line_length" in lines[0]


@pytest.mark.parametrize("bound", ["request_timeout", "timeout"])
def test_a_trickling_client_is_cut_by_the_read_bound_over_tls(bound: str,
                                                              unix_path: str) -> None:
    """`request_timeout` bounds a request begun, `timeout` each read call: a client sending
    one byte (one TLS record) every 0.4 s keeps neither waiting past 1 s."""
    attrs = {"request_timeout": None, "idle_timeout": None, "timeout": None, bound: 1.0}
    handler = type("Handler", (EchoAsync,), attrs)
    with pipe_log() as log, serve("plain", "tcp", handler, unix_path, pumped=True,
                                  ssl_context=server_context()) as s:
        c = s.connect()
        entry = s.loop.requests[0]

        def trickle(byte: bytes) -> None:
            got = entry.bytes_in or 0
            c.sendall(byte)
            s.until(lambda: (entry.bytes_in or 0) > got)  # the reader has taken it
            s.fake_clock.advance(0.4)

        trickle(b"o")
        c.sendall(b"k\n")  # within the bound: served
        assert recv_line(c) == b"echo: ok\n"
        trickle(b"s")
        trickle(b"l")
        s.loop.run_once(0)
        assert entry in s.loop.requests  # 0.8 s into the read: still waiting
        trickle(b"o")  # 1.2 s: past the bound
        s.until(lambda: not s.loop.requests)
        assert c.recv() == b""  # cut, with close_notify
        c.close()
        lines = log.collect()
    assert len(lines) == 1 and lines[0].startswith("INFO") and f"{bound}=1.0" in lines[0], lines


# ------------------------------------------------------------------------------ the request table
def test_a_handshake_shows_in_the_table_counts_toward_max_connections_and_keeps_its_entry(
        unix_path: str) -> None:
    with pipe_log() as log, serve("plain", "tcp", EchoAsync, unix_path, pumped=True,
                                  ssl_context=server_context(), ssl_handshake_timeout=10.0,
                                  max_connections=1) as s:
        silent = s.raw()
        s.until(lambda: s.table())
        [(silent_id, state)] = s.table()
        assert state == "handshaking"
        assert not listening(s.server, s.loop), "a handshake counts toward max_connections"
        waiting = s.connect(handshake=False)  # queued in the backlog meanwhile
        with pytest.raises(ssl.SSLWantReadError):
            waiting.tls.do_handshake()  # its ClientHello is sent
        for _ in range(10):
            s.loop.run_once(0.001)
        assert s.table() == [(silent_id, "handshaking")]
        s.fake_clock.advance(10.0)  # the silent client's bound
        assert s.wait_eof(silent) == b""
        silent.close()
        s.until(lambda: s.table() and s.table()[0][0] != silent_id)  # accepting again
        [(entry_id, state)] = s.table()
        assert state == "handshaking"  # the server waits for the client's Finished
        waiting.do_handshake()
        assert echo(waiting) == b"echo: ping\n"
        assert s.table() == [(entry_id, "reading")]  # the same entry went on to run
        bye(waiting)
        lines = log.collect()
    assert len(lines) == 1 and "ssl_handshake_timeout=10.0" in lines[0], lines


class OneLine(servers.StreamRequestHandler):
    """Answer one line with the (id, state) of its own entry in the request table."""

    def handle(self) -> None:
        line = self.rfile.readline()
        [mine] = [(e.id, e.state) for e in cast(Any, self.server).reactor.requests
                  if e.request is self.request]
        self.wfile.write(json.dumps([line.decode(), mine]).encode() + b"\n")


def test_one_entry_goes_from_handshaking_through_reading_ahead_to_running(
        unix_path: str) -> None:
    """A classic handler with read_ahead on a TLS connection: the handshake, then the wait for
    the first record, then the handler, all on the same table entry."""
    with serve("plain", "tcp", OneLine, unix_path, pumped=True, ssl_context=server_context(),
               read_ahead=b"\n") as s:
        c = s.connect(handshake=False)
        with pytest.raises(ssl.SSLWantReadError):
            c.tls.do_handshake()
        s.until(lambda: s.table())
        [(entry_id, state)] = s.table()
        assert state == "handshaking"
        c.do_handshake()
        s.until(lambda: s.table()[0][1] != "handshaking")
        assert s.table() == [(entry_id, "reading-ahead")]  # no request yet: held off the loop
        c.sendall(b"hello\n")
        assert json.loads(recv_line(c)) == ["hello\n", [entry_id, "handling"]]
        assert c.recv() == b""
        c.close()


@pytest.mark.slow
@pytest.mark.threads
def test_shutdown_cancels_a_stalled_handshake_at_shutdown_timeout(unix_path: str) -> None:
    with pipe_log() as log, serve("plain", "tcp", EchoAsync, unix_path,
                                  ssl_context=server_context(), shutdown_timeout=0.3) as s:
        silent = s.raw()
        s.until(lambda: [state for _, state in s.table()] == ["handshaking"])
        started = time.monotonic()
        s.server.shutdown()
        elapsed = time.monotonic() - started
        assert s.wait_eof(silent) == b""
        silent.close()
        lines = log.collect()
    assert 0.3 <= elapsed < 10, elapsed
    assert len(lines) == 1 and "shutdown_timeout=0.3" in lines[0], lines


@pytest.mark.threads
def test_shutdown_drains_a_handshake_in_progress(unix_path: str) -> None:
    with pipe_log() as log, serve("plain", "tcp", EchoAsync, unix_path,
                                  ssl_context=server_context(), shutdown_timeout=20) as s:
        c = StagedClient(s.address)
        c.hello()  # the ClientHello, and no more until told
        s.until(lambda: [state for _, state in s.table()] == ["handshaking"])
        stopping = threading.Thread(target=s.server.shutdown)
        stopping.start()
        s.until(lambda: not listening(s.server))  # draining has begun
        c.do_handshake()
        assert echo(c) == b"echo: ping\n"
        bye(c)
        stopping.join(10)
        assert not stopping.is_alive()
        assert log.collect() == []


# ------------------------------------------------------------------------------ openssl s_client
OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is not installed")
@pytest.mark.parametrize("mode,kind", [
    pytest.param("plain", "async", marks=pytest.mark.threads, id="plain-async"),
    pytest.param("threading", "def", marks=pytest.mark.threads, id="threading-def"),
    pytest.param("forking", "async", marks=[pytest.mark.forking, needs_fork],
                 id="forking-async")])
def test_openssl_s_client_is_served(mode: str, kind: str, unix_path: str) -> None:
    """A real external TLS client: OpenSSL's s_client verifies the server, presents a client
    certificate, negotiates ALPN, and reads the echo until the server closes."""
    from test_tls_support import CERTS, cert
    context = server_context(client_certs=ssl.CERT_REQUIRED, alpn=["echo/1"])
    with serve(mode, "tcp", ECHO[kind], unix_path, ssl_context=context) as s:
        for version in ("-tls1_3", "-tls1_2"):
            client_cert, client_key = cert("client")
            proc = subprocess.Popen(
                [str(OPENSSL), "s_client", "-connect", "%s:%d" % s.address, "-servername",
                 "localhost", "-CAfile", os.path.join(CERTS, "ca.pem"), "-verify_return_error",
                 "-cert", client_cert, "-key", client_key, "-alpn", "echo/1", version,
                 "-brief", "-ign_eof", "-nocommands"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                assert proc.stdin is not None
                proc.stdin.write(b"hello\ninfo\nbye\n")
                proc.stdin.close()
                s.until(lambda: proc.poll() is not None)  # the server ends the session
                assert proc.stdout is not None and proc.stderr is not None
                out, err = proc.stdout.read(), proc.stderr.read()
            finally:
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == 0, err
            assert b"Verification: OK" in err, err
            first, second = out.splitlines()[:2]
            assert first == b"echo: hello"
            seen = json.loads(second)
            assert seen["peer"] == "test client" and seen["alpn"] == "echo/1"
            assert seen["version"] == {"-tls1_3": "TLSv1.3", "-tls1_2": "TLSv1.2"}[version]
        assert handler_errors(s) == []
