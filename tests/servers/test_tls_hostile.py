"""Hostile TLS clients (issue 9, section 3), each case in every mode: a plain server with an
async handler and with a classic handler (the reactor drives the handshake), a threading and a
forking server (the thread or child completes it). Each test shows that a well-behaved TLS
client is served while the bad one is stuck, that the bad connection ends at its bound with
one line on the "servers" logger, that memory stays bounded, and that nothing is left behind
(the autouse `no_leaks`, and `on_reactor`'s empty table and reaped children); a bound that
matters also gets a test showing the client is not cut without it.

The server's loop runs on the test thread (`on_reactor`), with a fake clock: on a plain server
the handshake deadline and the handler's timeouts are reactor timers, so a test moves time by
hand and shows the cut comes exactly at the bound. In threads and children the bounds are
socket timeouts, in real time, kept small. Every client runs in another process
(`ClientProcess`, with the TLS helpers of `TLS_PRELUDE`): a forking server's children would
inherit a client socket of the test process, and a client there can block freely. Records go
through a pipe (`pipe_log`), which children write too. The file is long because each case is a
whole scenario in four modes; the helpers are in `test_hostile_support.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import socket
import ssl
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

import reactor
import servers
from reactor.testing import FakeClock
from test_hostile_support import (
    HOST, ClientProcess, PipeLog, listening, needs_fork, on_reactor, pipe_log, pump, turns)

CERTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "certs")


def server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(CERTS, "server.pem"), os.path.join(CERTS, "server.key"))
    return context


SERVER_CONTEXT = server_context()
CHUNK = 65536
FLOOD = 50 * 1024 * 1024  # the response a stuck reader stops reading

# Client-side helpers, run after test_hostile_support.CLIENT_PRELUDE in the client process.
TLS_PRELUDE = textwrap.dedent(f"""
    import ssl, struct
    CONTEXT = ssl.create_default_context(cafile={os.path.join(CERTS, "ca.pem")!r})

    def tls_connect(address=None):
        sock = connect() if address is None else socket.create_connection(address, timeout=20)
        return CONTEXT.wrap_socket(sock, server_hostname="localhost")

    def probe(address=None):
        # A well-behaved TLS client: handshake, one line, its echo.
        with tls_connect(address) as tls:
            tls.sendall(b"probe\\n")
            return recv_line(tls).decode()

    def client_hello():
        # The first bytes a real TLS client sends.
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = CONTEXT.wrap_bio(incoming, outgoing, server_hostname="localhost")
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return outgoing.read()

    def still_open(sock):
        return not select.select([sock], [], [], 0)[0]

    def reset(sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
""")


def tls_clients(code: str, address: Any, **params: Any) -> ClientProcess:
    """A client process running `code` with the TLS helpers; `params` become globals."""
    values = "".join(f"{name} = {value!r}\n" for name, value in params.items())
    return ClientProcess(TLS_PRELUDE + values + textwrap.dedent(code), address)


# ------------------------------------------------------------------------------ handlers
class AsyncService(servers.StreamRequestHandler):
    """Echo one line; answer b"flood\\n" with 50 MB written with drain() (the queue after
    each write is recorded in `queued`)."""

    queued: list[int] = []

    async def handle(self) -> None:
        line = await self.rfile.readline()
        if line != b"flood\n":
            self.wfile.write(line)
            return
        block = b"f" * CHUNK
        for _ in range(FLOOD // CHUNK):
            self.wfile.write(block)
            type(self).queued.append(self.wfile.buffered)
            await self.wfile.drain()


class ClassicService(servers.StreamRequestHandler):
    """The same service written the standard library's way (blocking I/O on an SSLSocket)."""

    timeout = 5.0  # a bug blocks the test for this long, never forever

    def handle(self) -> None:
        line = self.rfile.readline()
        if line != b"flood\n":
            self.wfile.write(line)
            return
        block = b"f" * CHUNK
        for _ in range(FLOOD // CHUNK):
            self.wfile.write(block)


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    server_class: type
    handler: type
    on_loop: bool  # the reactor drives the handshake (its timers run on the fake clock)


PLAIN_ASYNC = Mode("plain-async", servers.TCPServer, AsyncService, True)
PLAIN_CLASSIC = Mode("plain-classic", servers.TCPServer, ClassicService, True)
THREADING = Mode("threading", servers.ThreadingTCPServer, ClassicService, False)
FORKING = Mode("forking", servers.ForkingTCPServer, AsyncService, False)


def modes(*only: Mode, real_time_is_slow: bool = False) -> list[Any]:
    """pytest params for the modes (all by default), with each one's markers."""
    params = []
    for mode in only or (PLAIN_ASYNC, PLAIN_CLASSIC, THREADING, FORKING):
        marks: list[Any] = []
        if mode.server_class is servers.ThreadingTCPServer:
            marks.append(pytest.mark.threads)
        if mode.server_class is servers.ForkingTCPServer:
            marks += [needs_fork, pytest.mark.forking, pytest.mark.slow]
        elif real_time_is_slow and not mode.on_loop:
            marks.append(pytest.mark.slow)
        params.append(pytest.param(mode, id=mode.name, marks=marks))
    return params


@dataclasses.dataclass
class Served:
    server: Any
    r: reactor.Reactor
    clock: FakeClock
    log: PipeLog

    def lines(self) -> list[str]:
        """Lines the "servers" logger wrote so far (children included): "LEVEL message"."""
        return list(self.log.collect())


@contextlib.contextmanager
def serving(mode: Mode, handler: type | None = None, server_class: type | None = None,
            **attrs: Any) -> Iterator[Served]:
    """A TLS server of `mode` on a fake-clock reactor driven by the test thread."""
    with pipe_log() as log, on_reactor(handler or mode.handler,
                                       server_class or mode.server_class,
                                       ssl_context=SERVER_CONTEXT, **attrs) as (server, r, clock):
        yield Served(server, r, clock, log)


def entry_of(r: reactor.Reactor, address: list[Any]) -> Any:
    """The table entry of the client connected from `address` (as a client reported it)."""
    return next(entry for entry in r.requests if list(entry.client_address) == address)


# ------------------------------------------------------------------------------ stalled handshakes
STALLED = """
    started = time.monotonic()
    bad = connect()
    if SEND == "half-hello":
        hello = client_hello()
        bad.sendall(hello[:len(hello) // 2])
    report(bad.getsockname())
    assert sys.stdin.readline() == "go\\n"
    report(probe())
    report(still_open(bad))
    data = recv_all(bad)
    report([data.hex(), time.monotonic() - started])
"""


@pytest.mark.parametrize("send", ["nothing", "half-hello"])
@pytest.mark.parametrize("mode", modes(real_time_is_slow=True))
def test_a_stalled_handshake_is_cut_at_ssl_handshake_timeout(mode: Mode, send: str) -> None:
    timeout = 30.0 if mode.on_loop else 1.0  # fake seconds on the loop, real ones elsewhere
    with serving(mode, ssl_handshake_timeout=timeout) as s, \
            tls_clients(STALLED, s.server.server_address, SEND=send) as proc:
        r = s.r
        bad_address = proc.wait_lines(r, 1)[0]
        pump(r, lambda: len(r.requests) == 1)
        bad = r.requests[0]
        assert list(bad.client_address) == bad_address
        if mode.on_loop:
            assert bad.stage is reactor.Stage.HANDSHAKING
        proc.send("go")
        assert proc.wait_lines(r, 3)[1:] == ["probe\n", True], "not served meanwhile"
        if mode.on_loop:
            s.clock.advance(timeout - 0.01)
            turns(r, 5)
            assert bad in r.requests, "cut before ssl_handshake_timeout"
            s.clock.advance(0.02)
        data, elapsed = proc.wait_lines(r, 4)[3]
        assert data == ""
        if not mode.on_loop:
            assert timeout <= elapsed < timeout + 5
        pump(r, lambda: not r.requests)
        proc.finish(r)
        lines = s.lines()
    assert len(lines) == 1 and lines[0].startswith("INFO "), lines
    assert f"ssl_handshake_timeout={timeout}" in lines[0]


NO_BOUND = """
    bad = connect()
    report(bad.getsockname())
    assert sys.stdin.readline() == "go\\n"
    report(probe())
    assert sys.stdin.readline() == "check\\n"
    report(not select.select([bad], [], [], WAIT)[0])  # not cut within WAIT seconds
    bad.close()
"""


@pytest.mark.parametrize("mode", modes(PLAIN_ASYNC, THREADING, real_time_is_slow=True))
def test_without_ssl_handshake_timeout_a_silent_client_is_not_cut(mode: Mode) -> None:
    wait = 0.0 if mode.on_loop else 2.0  # real seconds: twice the bound used above in threads
    with serving(mode, ssl_handshake_timeout=None) as s, \
            tls_clients(NO_BOUND, s.server.server_address, WAIT=wait) as proc:
        r = s.r
        proc.wait_lines(r, 1)
        pump(r, lambda: len(r.requests) == 1)
        bad = r.requests[0]
        proc.send("go")
        assert proc.wait_lines(r, 2)[1] == "probe\n"
        if mode.on_loop:
            s.clock.advance(1e6)  # days: no timer is due
            turns(r, 5)
            assert bad in r.requests and bad.stage is reactor.Stage.HANDSHAKING
        proc.send("check")
        assert proc.wait_lines(r, 3)[2] is True, "cut without a bound"
        proc.finish(r)  # the client leaves: only then does its handshake end
        pump(r, lambda: bad not in r.requests)
        lines = s.lines()
    assert len(lines) == 1 and lines[0].startswith("INFO ") and "ended" in lines[0], lines


# ------------------------------------------------------------------------------ not TLS at all
GARBAGE = {
    "plain-http": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "random-bytes": random.Random(9).randbytes(20000),  # more than the largest record
    # a record header announcing a handshake message, then noise of the announced length
    "garbage-record": b"\x16\x03\x01\x01\x00" + random.Random(3).randbytes(256),
}

NOT_TLS = """
    started = time.monotonic()
    bad = connect()
    try:
        bad.sendall(bytes.fromhex(PAYLOAD))
    except OSError:
        pass  # the server may close before it has read everything
    data = recv_all(bad)  # ConnectionResetError counts as the end too
    report([time.monotonic() - started, data[:1].hex()])
    report(probe())
"""


@pytest.mark.parametrize("payload", list(GARBAGE))
@pytest.mark.parametrize("mode", modes())
def test_plain_http_or_garbage_on_the_tls_port_ends_at_once_with_one_warning(
        mode: Mode, payload: str) -> None:
    with serving(mode, ssl_handshake_timeout=60.0) as s, \
            tls_clients(NOT_TLS, s.server.server_address,
                        PAYLOAD=GARBAGE[payload].hex()) as proc:
        r = s.r
        # The fake clock never moves: the end cannot come from a timer on the loop, and in
        # threads and children it must come long before the 60 s of real time.
        (elapsed, first_byte), answer = proc.finish(r)
        assert elapsed < 10 and first_byte in ("", "15")  # nothing, or a TLS alert record
        assert answer == "probe\n"
        pump(r, lambda: not r.requests)
        lines = s.lines()
    assert len(lines) == 1 and lines[0].startswith("WARNING "), lines
    assert "TLS handshake" in lines[0] and "failed" in lines[0]


# ------------------------------------------------------------------------------ reset mid-handshake
RESET = """
    bad = connect()
    bad.sendall(client_hello())
    answer = bad.recv(5)  # the server has answered: its handshake now waits for ours
    reset(bad)  # SO_LINGER 0: the close sends RST
    report(answer[:1].hex())
    report(probe())
"""


@pytest.mark.parametrize("mode", modes())
def test_a_reset_mid_handshake_ends_that_connection_with_one_info_line(mode: Mode) -> None:
    with serving(mode) as s, tls_clients(RESET, s.server.server_address) as proc:
        r = s.r
        assert proc.finish(r) == ["16", "probe\n"]  # a handshake record, then served
        pump(r, lambda: not r.requests)
        lines = s.lines()
    assert len(lines) == 1 and lines[0].startswith("INFO "), lines
    assert "TLS handshake" in lines[0] and "ended" in lines[0]
