"""PROXY protocol on stream servers, over real sockets: the header is read on the reactor before
the handler runs, in every mode (plain server with a classic handler, with an async handler on
the reactor, threads, children), for TCP over IPv4 and IPv6 and for Unix sockets; the handler
sees the real client (`client_address`, `address_string()`, `self.proxy`); every bad header
ends its own connection alone with one log line; PROXY then TLS; a real HAProxy in front.

How these tests run: as in the hostile suite, the test thread drives the reactor (`pump`, with
a `FakeClock` for timeouts), so forking tests fork with no other thread alive and a 2-second
timeout costs no wall-clock time. Clients share that thread: they only send what the kernel
buffers, and read once the loop has answered. Handlers answer with one JSON line saying what
they saw, so a child reports exactly as a thread does. Headers are built with the encoder of
test_proxy_header.py (written from the spec, independent of the parser). The file runs past
400 lines because it is one matrix (modes x families x header forms) and its helpers.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import logging
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import reactor
import reactor.testing
import servers
from conftest import ServerThread, open_fds, recv_all, recv_line
from haproxy import HAProxy, load_balancer, requires_haproxy
from reactor import Stage
from test_hostile_support import (Reply, client, needs_fork, needs_unix, on_reactor, pump,
                                  readable, server_records)
from test_proxy_header import inet4, inet6, tlv, unix, v2

__all__ = ["load_balancer"]  # the fixture, imported so that pytest finds it here

HOST4, HOST6 = "127.0.0.1", "::1"
CLIENT4, FRONTEND4 = ("203.0.113.7", 51000), ("198.51.100.1", 443)  # what headers say
CLIENT6, FRONTEND6 = ("2001:db8::7", 51001, 0, 0), ("2001:db8::1", 8443, 0, 0)
CLIENT_UNIX, FRONTEND_UNIX = "/run/client.sock", "/run/balancer.sock"
OTHER4 = ("192.0.2.99", 40000)  # the second client, served while the first one waits
REQUEST = b"hello \x00\xff server\r\n"  # bytes a text-mode decode would spoil
TLVS = (tlv(0x01, b"h2") + tlv(0x02, b"app.example") + tlv(0x05, b"conn-42")
        + tlv(0xE0, b"custom"))
CERTS = Path(__file__).resolve().parent.parent / "certs"


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind((HOST6, 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="needs an IPv6 loopback")


# ------------------------------------------------------------------------------ headers
def v1_header(source: tuple[Any, ...], destination: tuple[Any, ...]) -> bytes:
    protocol = b"TCP6" if ":" in source[0] else b"TCP4"
    return b"PROXY %s %s %s %d %d\r\n" % (protocol, source[0].encode(),
                                          destination[0].encode(), source[1], destination[1])


def v2_header(source: Any, destination: Any, tlvs: bytes = b"", crc: bool = False) -> bytes:
    if isinstance(source, str):
        return v2(1, 0x31, unix(source.encode(), destination.encode()), tlvs, with_crc=crc)
    if ":" in source[0]:
        return v2(1, 0x21, inet6(source[0], destination[0], source[1], destination[1]), tlvs,
                  with_crc=crc)
    return v2(1, 0x11, inet4(source[0], destination[0], source[1], destination[1]), tlvs,
              with_crc=crc)


def as_json(value: Any) -> Any:
    """`value` as it comes back through a JSON report (tuples become lists)."""
    return json.loads(json.dumps(value))


# ------------------------------------------------------------------------------ handlers
def report(handler: Any, line: bytes) -> bytes:
    """What a handler saw, as one JSON line: its client_address, the bytes it read after the
    header, self.proxy and self.tls."""
    info, tls = handler.proxy, handler.tls
    return json.dumps({
        "client_address": handler.client_address,
        "line": line.decode("latin-1"),
        "proxy": None if info is None else {
            "version": info.version, "command": info.command, "source": info.source,
            "destination": info.destination, "peer": info.peer,
            "tlvs": {str(kind): value.hex() for kind, value in info.tlvs.items()}},
        "tls": None if tls is None else tls.version(),
        # the request table as the handler sees it (meaningful on the loop's own thread)
        "table": [[entry.id, entry.state] for entry in handler.server.reactor.requests],
    }).encode() + b"\n"


class ClassicReport(servers.StreamRequestHandler):
    """Reads its request line from the socket itself (no rfile), answers with `report()`."""

    timeout = 10  # a bug fails the test instead of hanging it

    def handle(self) -> None:
        self.request.sendall(report(self, recv_line(self.request)))


class AsyncReport(servers.StreamRequestHandler):
    """Reads its request line through the async rfile, answers with `report()`."""

    timeout = 10

    async def handle(self) -> None:
        self.wfile.write(report(self, await self.rfile.readline()))


class HTTPReport(http.server.BaseHTTPRequestHandler):
    """http.server's own handler: the log line it writes (to stderr, captured here) and
    address_string() go back in the response body."""

    timeout = 10

    def do_GET(self) -> None:
        log = io.StringIO()
        with contextlib.redirect_stderr(log):
            self.send_response(200)  # logs the request, as every http.server handler does
        body = json.dumps({"log": log.getvalue(), "address_string": self.address_string(),
                           "client_address": self.client_address}).encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# ------------------------------------------------------------------------------ modes
MODES: dict[str, tuple[str, type]] = {  # mode -> (class name prefix, handler)
    "classic": ("", ClassicReport),
    "async": ("", AsyncReport),
    "threading": ("Threading", ClassicReport),
    "threading-async": ("Threading", AsyncReport),  # the coroutine driven in the thread
    "forking": ("Forking", ClassicReport),
}
MODE_PARAMS = [
    "classic", "async",
    pytest.param("threading", marks=pytest.mark.threads),
    pytest.param("forking", marks=[pytest.mark.forking, needs_fork]),
]
ALL_MODE_PARAMS = [*MODE_PARAMS, pytest.param("threading-async", marks=pytest.mark.threads)]
FAMILY_PARAMS = ["ipv4", pytest.param("ipv6", marks=needs_ipv6),
                 pytest.param("unix", marks=needs_unix)]
V2_FULL = v2_header(CLIENT4, FRONTEND4, TLVS, crc=True)  # TLVs after a checked CRC32C
CRC_VALUE = V2_FULL[31:35]  # after the prefix (16), the addresses (12), the TLV's type+length
HEADERS = {  # (family, version) -> (header, source, destination, TLVs as reported)
    ("ipv4", "v1"): (v1_header(CLIENT4, FRONTEND4), CLIENT4, FRONTEND4, {}),
    ("ipv4", "v2"): (V2_FULL, CLIENT4, FRONTEND4,
                     {"3": CRC_VALUE.hex(), "1": b"h2".hex(), "2": b"app.example".hex(),
                      "5": b"conn-42".hex(), "224": b"custom".hex()}),
    ("ipv6", "v1"): (v1_header(CLIENT6, FRONTEND6), CLIENT6, FRONTEND6, {}),
    ("ipv6", "v2"): (v2_header(CLIENT6, FRONTEND6), CLIENT6, FRONTEND6, {}),
    ("unix", "v1"): (v1_header(CLIENT4, FRONTEND4), CLIENT4, FRONTEND4, {}),
    ("unix", "v2"): (v2_header(CLIENT_UNIX, FRONTEND_UNIX, tlv(0x05, b"u")), CLIENT_UNIX,
                     FRONTEND_UNIX, {"5": b"u".hex()}),
}


@contextlib.contextmanager
def proxied(mode: str, family: str = "ipv4", unix_path: str | None = None,
            handler: type | None = None, **attrs: Any
            ) -> Iterator[tuple[Any, reactor.Reactor, Any]]:
    """A server of `mode` and `family` with `proxy_protocol="any"` unless `attrs` say
    otherwise, on a reactor the test drives (see test_hostile_support.on_reactor)."""
    prefix, default_handler = MODES[mode]
    base = "UnixStreamServer" if family == "unix" else "TCPServer"
    address = {"ipv4": (HOST4, 0), "ipv6": (HOST6, 0), "unix": unix_path}[family]
    attrs.setdefault("proxy_protocol", "any")
    with on_reactor(handler or default_handler, getattr(servers, prefix + base), address,
                    **attrs) as (server, r, clock):
        yield server, r, clock


def connect(server: Any, source_host: str | None = None) -> socket.socket:
    address = server.server_address
    if isinstance(address, str):
        return client(address)
    sock = socket.create_connection(address[:2], timeout=10,
                                    source_address=source_host and (source_host, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def peer_of(sock: socket.socket) -> Any:
    """The address the server's socket reports for this client (`getpeername()` there)."""
    return sock.getsockname() if sock.family != socket.AF_UNIX else ""


def ended(r: reactor.Reactor, sock: socket.socket) -> bytes:
    """Run the loop until the server has closed `sock`; what it sent before."""
    reply = Reply(sock)
    pump(r, reply.ended)
    return bytes(reply.data)


def exchange(r: reactor.Reactor, sock: socket.socket, data: bytes) -> dict[str, Any]:
    """Send `data`, run the loop until the handler has answered and closed; its report."""
    sock.sendall(data)
    answer = ended(r, sock)
    assert answer.endswith(b"\n"), f"no report from the handler: {answer!r}"
    result: dict[str, Any] = json.loads(answer)
    return result


def awaiting_header(r: reactor.Reactor) -> reactor.RequestEntry:
    """The one entry whose PROXY header is awaited (run the loop until it is there)."""
    pump(r, lambda: any(entry.stage is Stage.PROXY_HEADER for entry in r.requests))
    (entry,) = [entry for entry in r.requests if entry.stage is Stage.PROXY_HEADER]
    return entry


def assert_waits_quietly(r: reactor.Reactor, entry: reactor.RequestEntry) -> None:
    """Bytes just sent on `entry`'s connection (all of them header) arrive, the server takes
    them all, and then waits for more without spinning: idle turns run nothing."""
    assert select.select([entry.request], [], [], 10)[0], "the bytes sent never arrived"
    pump(r, lambda: not readable(entry.request))  # taken, not left to wake the loop again
    idle = [r.run_once(0) for _ in range(20)]
    assert idle == [0] * 20, f"the loop spins while a PROXY header is incomplete: {idle}"
    assert entry in r.requests and entry.state == "proxy-header"


def serve_other_client(r: reactor.Reactor, server: Any) -> None:
    """A second client is served from start to end (the loop is not blocked)."""
    with connect(server) as other:
        got = exchange(r, other, v1_header(OTHER4, FRONTEND4) + b"other\n")
    assert got["client_address"] == list(OTHER4) and got["line"] == "other\n"
    pump(r, lambda: len(r.requests) == 1)  # its thread or child has been collected too


def check_report(got: dict[str, Any], sock: socket.socket, version: str, source: Any,
                 destination: Any, tlvs: dict[str, str]) -> None:
    assert got["line"] == REQUEST.decode("latin-1")  # the bytes after the header, intact
    assert got["client_address"] == as_json(source)
    assert got["proxy"] == as_json({"version": int(version[1]), "command": "PROXY",
                                    "source": source, "destination": destination,
                                    "peer": peer_of(sock), "tlvs": tlvs})


# ------------------------------------------------------------------ the handler's view
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("family", FAMILY_PARAMS)
@pytest.mark.parametrize("mode", ALL_MODE_PARAMS)
def test_the_handler_sees_the_real_client_and_the_bytes_after_the_header(
        mode: str, family: str, version: str, unix_path: str) -> None:
    header, source, destination, tlvs = HEADERS[family, version]
    with proxied(mode, family, unix_path) as (server, r, _clock):
        with connect(server) as sock:
            got = exchange(r, sock, header + REQUEST)  # one segment: header and request
            check_report(got, sock, version, source, destination, tlvs)
            assert got["tls"] is None


# offsets where a piece ends: in and after the signature, after the command byte, the family
# byte, inside and after the length, inside the addresses
V2_CUTS = [1, 12, 13, 14, 15, 16, 17, 20, 27]
# after "P", "PROXY", "PROXY ", "PROXY TCP4", "PROXY TCP4 ", then inside addresses and ports
V1_CUTS = [1, 5, 6, 10, 11, 17, 35, 40]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("family", ["ipv4", pytest.param("unix", marks=needs_unix)])
@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_a_header_split_at_awkward_offsets_is_awaited_without_blocking_or_spinning(
        mode: str, family: str, version: str, unix_path: str) -> None:
    header, source, destination, tlvs = HEADERS[family, version]
    # Then two more cuts: v1's CR and LF land in pieces of their own (one piece ends between
    # them), and the header's last byte travels with the request.
    cuts = [cut for cut in (V1_CUTS if version == "v1" else V2_CUTS) if cut < len(header) - 2]
    cuts += [len(header) - 2, len(header) - 1]
    pieces = [header[start:end] for start, end in zip([0, *cuts], cuts)]
    with proxied(mode, family, unix_path) as (server, r, _clock):
        with connect(server) as sock:
            entry = awaiting_header(r)
            for piece in pieces:
                sock.sendall(piece)
                assert_waits_quietly(r, entry)
                serve_other_client(r, server)
                assert entry.state == "proxy-header"
            got = exchange(r, sock, header[cuts[-1]:] + REQUEST)
            check_report(got, sock, version, source, destination, tlvs)


@pytest.mark.parametrize("header", [v2(0, 0x00, b"", tlv(0x05, b"health")),
                                    v2(0, 0x11, inet4("10.9.9.9", "10.0.0.1", 1, 2)),
                                    b"PROXY UNKNOWN\r\n",
                                    b"PROXY UNKNOWN 10.9.9.9 10.0.0.1 1 2\r\n"],
                         ids=["v2-local", "v2-local-addresses-ignored", "v1-unknown",
                              "v1-unknown-addresses-ignored"])
@pytest.mark.parametrize("family", ["ipv4", pytest.param("unix", marks=needs_unix)])
@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_local_and_unknown_keep_the_sockets_own_peer_address(
        mode: str, family: str, header: bytes, unix_path: str) -> None:
    with proxied(mode, family, unix_path) as (server, r, _clock):
        with connect(server) as sock:
            got = exchange(r, sock, header + REQUEST)
            assert got["line"] == REQUEST.decode("latin-1")
            assert got["client_address"] == as_json(peer_of(sock))
            assert got["proxy"]["command"] == "LOCAL"
            assert got["proxy"]["source"] is None and got["proxy"]["destination"] is None
            assert got["proxy"]["peer"] == as_json(peer_of(sock))
            assert got["proxy"]["version"] == (2 if header.startswith(b"\r\n") else 1)


@pytest.mark.parametrize("mode", ["classic", pytest.param("threading", marks=pytest.mark.threads),
                                  pytest.param("forking", marks=[pytest.mark.forking,
                                                                 needs_fork])])
def test_http_server_logs_and_address_string_show_the_real_client(mode: str) -> None:
    with proxied(mode, handler=HTTPReport) as (server, r, _clock):
        with connect(server) as sock:
            sock.sendall(v2_header(CLIENT4, FRONTEND4) + b"GET /page HTTP/1.0\r\n\r\n")
            head, _, body = ended(r, sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ")
    got = json.loads(body)
    assert got["client_address"] == list(CLIENT4) and got["address_string"] == CLIENT4[0]
    assert got["log"].startswith(f"{CLIENT4[0]} - - [")
    assert got["log"].endswith('"GET /page HTTP/1.0" 200 -\n')


def padded(size: int) -> bytes:
    """A v2 header of exactly `size` bytes: addresses, then one NOOP TLV as padding."""
    header = v2_header(CLIENT4, FRONTEND4, tlv(0x04, bytes(size - 16 - 12 - 3)))
    assert len(header) == size
    return header


@pytest.mark.parametrize("max_size", [4096, 64])
def test_a_v2_header_of_exactly_proxy_header_max_size_is_read_and_one_byte_more_refused(
        max_size: int, caplog: pytest.LogCaptureFixture) -> None:
    attrs: dict[str, Any] = {} if max_size == 4096 else {"proxy_header_max_size": max_size}
    with proxied("async", proxy_protocol="v2", **attrs) as (server, r, _clock):
        with connect(server) as sock:
            entry = awaiting_header(r)
            header = padded(max_size)
            for start in range(0, max_size - 1, 1000):  # in pieces, the last with the request
                sock.sendall(header[start:min(start + 1000, max_size - 1)])
                assert_waits_quietly(r, entry)
            got = exchange(r, sock, header[-1:] + REQUEST)
            assert got["client_address"] == list(CLIENT4) and got["proxy"]["tlvs"] == {}
            assert got["line"] == REQUEST.decode("latin-1")
        with connect(server) as sock:
            sock.sendall(padded(max_size + 1) + REQUEST)
            assert ended(r, sock) == b""
        (record,) = server_records(caplog)
        assert f"declares {max_size + 1} bytes, more than the {max_size} allowed " \
               "(proxy_header_max_size)" in record.getMessage()


def test_without_proxy_protocol_nothing_is_read_and_self_proxy_is_none() -> None:
    with proxied("classic", proxy_protocol=None) as (server, r, _clock):
        with connect(server) as sock:
            got = exchange(r, sock, v1_header(CLIENT4, FRONTEND4))
            assert got["line"] == v1_header(CLIENT4, FRONTEND4).decode()  # just bytes
            assert got["proxy"] is None and got["client_address"] == list(peer_of(sock))


@pytest.mark.parametrize("handler", [ClassicReport, AsyncReport])
def test_handle_request_serves_one_proxied_request(handler: type) -> None:
    server_class = type("Once", (servers.TCPServer,), {"proxy_protocol": "v1", "timeout": 10})
    with server_class((HOST4, 0), handler) as server, connect(server) as sock:
        sock.sendall(v1_header(CLIENT4, FRONTEND4) + REQUEST)
        assert server.handle_request() is None  # the header, then the handler, then back
        got = json.loads(recv_all(sock))
        assert got["client_address"] == list(CLIENT4) and got["proxy"]["version"] == 1
        assert not server.reactor.requests


# ------------------------------------------------------------------ which versions
@pytest.mark.parametrize("setting,header,refusal", [
    ("any", v1_header(CLIENT4, FRONTEND4), None),
    ("any", v2_header(CLIENT4, FRONTEND4), None),
    ("v1", v1_header(CLIENT4, FRONTEND4), None),
    ("v2", v2_header(CLIENT4, FRONTEND4), None),
    ("v1", v2_header(CLIENT4, FRONTEND4), "starts like a PROXY v2 header, but only v1 is"),
    ("v2", v1_header(CLIENT4, FRONTEND4), "starts like a PROXY v1 header, but only v2 is"),
])
@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_proxy_protocol_setting_accepts_its_versions_and_refuses_the_other(
        mode: str, setting: str, header: bytes, refusal: str | None,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="servers")
    with proxied(mode, proxy_protocol=setting) as (server, r, _clock):
        with connect(server) as sock:
            if refusal is None:
                assert exchange(r, sock, header + REQUEST)["client_address"] == list(CLIENT4)
                assert not server_records(caplog, logging.INFO)
            else:
                sock.sendall(header + REQUEST)
                assert ended(r, sock) == b""
                (record,) = server_records(caplog, logging.INFO)
                assert refusal in record.getMessage()


# ------------------------------------------------------------------ refusals
def _corrupted(header: bytes) -> bytes:
    return header[:-1] + bytes([header[-1] ^ 0x01])  # a TLV byte after the CRC32C changes


# kind -> (what the bad client sends, what the log line says, its level)
REFUSALS: dict[str, tuple[bytes, str, int]] = {
    "untrusted": (V2_FULL + REQUEST, "PROXY header expected from an untrusted peer (not in "
                  "proxy_trusted)", logging.WARNING),
    "missing": (b"GET / HTTP/1.0\r\n\r\n", "bad PROXY header: not a PROXY protocol header: the "
                "connection starts with b'GET / HTTP/1.0\\r\\n'", logging.WARNING),
    "tls-hello-first": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                        "not a PROXY protocol header: the connection starts with b'\\x16\\x03",
                        logging.WARNING),
    "malformed-v1": (b"PROXY TCP4 203.0.113.7 198.51.100.1 99999 443\r\n" + REQUEST,
                     "PROXY v1 port must be 0-65535 without leading zeros, not b'99999'",
                     logging.WARNING),
    "bad-crc32c": (_corrupted(V2_FULL) + REQUEST, "PROXY v2 CRC32C does not match the header",
                   logging.WARNING),
    # only the 16-byte prefix: refused once the length is read, without waiting for the rest
    "oversized": (V2_FULL[:14] + struct.pack("!H", 4096 - 16 + 1), "PROXY v2 header declares "
                  "4097 bytes, more than the 4096 allowed (proxy_header_max_size)",
                  logging.WARNING),
    "closed-early": (V2_FULL[:20], "connection closed before its PROXY header was complete",
                     logging.INFO),
}


@pytest.mark.parametrize("kind", REFUSALS)
@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_a_bad_connection_is_closed_alone_with_one_log_line(
        mode: str, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="servers")
    data, message, level = REFUSALS[kind]
    untrusted = kind == "untrusted"  # the good client then comes from 127.0.0.2
    trusted = "127.0.0.2/32" if untrusted else servers.TCPServer.proxy_trusted
    with proxied(mode, proxy_trusted=trusted) as (server, r, _clock):
        fds = open_fds()
        with connect(server, "127.0.0.2" if untrusted else None) as good:
            waiting = awaiting_header(r)
            good.sendall(V2_FULL[:20])  # in the middle of its header meanwhile
            assert_waits_quietly(r, waiting)
            with connect(server, HOST4) as bad:
                bad.sendall(data)
                if kind == "closed-early":
                    bad.shutdown(socket.SHUT_WR)
                assert ended(r, bad) == b""  # closed; the handler never ran
                bad_address = bad.getsockname()
            (record,) = server_records(caplog, logging.INFO)
            assert record.levelno == level
            assert record.getMessage().startswith(
                f"HostileServer({server.server_address!r}): closing connection from "
                f"{bad_address!r}: ")
            assert message in record.getMessage()
            assert waiting in r.requests and waiting.state == "proxy-header"
            got = exchange(r, good, V2_FULL[20:] + REQUEST)
            assert got["client_address"] == list(CLIENT4)
            assert got["proxy"]["peer"] == list(good.getsockname())
        pump(r, lambda: not r.requests)
        assert open_fds() == fds
    assert len(server_records(caplog, logging.INFO)) == 1


@pytest.mark.parametrize("family", [pytest.param("ipv6", marks=needs_ipv6),
                                    pytest.param("unix", marks=needs_unix)])
def test_refusals_on_ipv6_and_unix_sockets_name_the_peer(
        family: str, unix_path: str, caplog: pytest.LogCaptureFixture) -> None:
    with proxied("async", family, unix_path) as (server, r, _clock):
        with connect(server) as bad:
            bad.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert ended(r, bad) == b""
            (record,) = server_records(caplog)
            assert f"closing connection from {peer_of(bad)}: bad PROXY header: not a " \
                   "PROXY protocol header" in record.getMessage()


@needs_unix
def test_unix_socket_peers_are_trusted_whatever_proxy_trusted_says(unix_path: str) -> None:
    with proxied("classic", "unix", unix_path, proxy_trusted=[]) as (server, r, _clock):
        with connect(server) as sock:
            assert exchange(r, sock, V2_FULL + REQUEST)["client_address"] == list(CLIENT4)


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_a_header_that_does_not_complete_in_time_is_closed_and_others_are_served(
        mode: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="servers")
    with proxied(mode, proxy_header_timeout=2.0) as (server, r, clock):
        fds = open_fds()
        with connect(server) as slow:
            entry = awaiting_header(r)
            slow.sendall(V2_FULL[:20])
            assert_waits_quietly(r, entry)
            clock.advance(1.9)
            serve_other_client(r, server)
            r.run_once(0)
            assert entry in r.requests and not readable(slow), "closed before its time"
            clock.advance(0.2)
            assert ended(r, slow) == b""
            (record,) = server_records(caplog, logging.INFO)
            assert record.getMessage().endswith(f"closing connection from "
                                                f"{slow.getsockname()!r}: no complete PROXY "
                                                "header within proxy_header_timeout=2.0s")
        assert not r.requests and open_fds() == fds


@pytest.mark.threads
def test_proxy_header_timeout_on_the_real_clock_under_serve_forever() -> None:
    class Server(servers.ThreadingTCPServer):
        proxy_protocol = "v2"
        proxy_header_timeout = 0.2

    with ServerThread(Server((HOST4, 0), ClassicReport), poll_interval=30) as server:
        started = time.monotonic()  # before the connection exists: its accept comes later
        with connect(server) as slow:
            slow.sendall(V2_FULL[:15])
            with connect(server) as other:  # served while the slow one waits
                other.sendall(v2_header(OTHER4, FRONTEND4) + b"other\n")
                assert json.loads(recv_all(other))["client_address"] == list(OTHER4)
            assert recv_all(slow) == b""  # closed by the server, not by our 10 s timeout
            assert 0.2 <= time.monotonic() - started < 5


# ------------------------------------------------------------------ the request table
class ClassicHeld(ClassicReport):
    """Reports, then holds the request until the client sends one more line."""

    def handle(self) -> None:
        super().handle()
        recv_line(self.request)


class AsyncHeld(AsyncReport):
    async def handle(self) -> None:
        await super().handle()
        await self.rfile.readline()


HELD_STATE = {"async": "reading", "threading": "in-thread", "forking": "in-child"}
@pytest.mark.parametrize("mode", [*MODE_PARAMS[:3], pytest.param(
    "forking", marks=[pytest.mark.forking, needs_fork])])
def test_the_entry_awaiting_a_header_is_the_one_that_runs_the_request(mode: str) -> None:
    held = AsyncHeld if mode == "async" else ClassicHeld
    with proxied(mode, handler=held) as (server, r, _clock):
        with connect(server) as sock:
            entry = awaiting_header(r)
            assert [(e.id, e.state) for e in r.requests] == [(entry.id, "proxy-header")]
            assert repr(entry).startswith(f"<RequestEntry #{entry.id} PROXY_HEADER fd=")
            sock.sendall(V2_FULL[:30])
            assert_waits_quietly(r, entry)
            # a classic handler runs on this very thread: it gets its last line at once
            sock.sendall(V2_FULL[30:] + REQUEST + (b"done\n" if mode == "classic" else b""))
            reply = Reply(sock)
            pump(r, lambda: reply.has(b"\n"))
            got = json.loads(bytes(reply.data))
            assert got["client_address"] == list(CLIENT4)
            if mode in ("classic", "async"):  # the handler ran on the loop's thread
                assert got["table"] == [[entry.id, "handling"]]
            if mode != "classic":
                assert list(r.requests) == [entry]  # the same entry, adopted
                assert entry.state == HELD_STATE[mode] and entry.client_address == CLIENT4
                sock.sendall(b"done\n")
            assert ended(r, sock) == b""
        pump(r, lambda: not r.requests)  # a thread or child ends after its socket's close
        assert entry.stage is Stage.CLOSED


def test_proxy_header_then_read_ahead_are_stages_of_one_entry() -> None:
    with proxied("classic", read_ahead=b"\n") as (server, r, _clock):
        with connect(server) as sock:
            entry = awaiting_header(r)
            sock.sendall(V2_FULL + REQUEST[:5])  # the header, and part of the request
            pump(r, lambda: entry.state == "reading-ahead")
            assert list(r.requests) == [entry] and entry.client_address == CLIENT4
            got = exchange(r, sock, REQUEST[5:])
            assert got["line"] == REQUEST.decode("latin-1")
            assert got["table"] == [[entry.id, "handling"]]


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_a_connection_awaiting_its_header_counts_toward_max_connections(mode: str) -> None:
    with proxied(mode, max_connections=1) as (server, r, _clock):
        with connect(server) as first, connect(server) as second:
            entry = awaiting_header(r)  # `second` waits in the kernel's backlog meanwhile
            second.sendall(v1_header(OTHER4, FRONTEND4) + b"second\n")
            for _ in range(20):
                r.run_once(0)
            assert list(r.requests) == [entry] and not readable(second), "accepted anyway"
            assert exchange(r, first, V2_FULL + REQUEST)["client_address"] == list(CLIENT4)
            got = json.loads(ended(r, second))  # accepted once the first one ended
            assert got["client_address"] == list(OTHER4) and got["line"] == "second\n"


# ------------------------------------------------------------------ PROXY, then TLS
@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context): the test CA's localhost certificate."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(CERTS / "server.pem", CERTS / "server.key")
    client_context = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    return server_context, client_context


def tls_exchange(r: reactor.Reactor, sock: socket.socket, context: ssl.SSLContext,
                 data: bytes, turns: int = 2000) -> bytes:
    """Handshake on `sock` (the loop runs meanwhile), send `data`, and return everything the
    server sent until it closed."""
    tls = context.wrap_socket(sock, server_hostname="localhost", do_handshake_on_connect=False)
    tls.setblocking(False)
    answer = bytearray()
    try:
        for _ in range(turns):
            try:
                tls.do_handshake()
                break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                r.run_once(0.01)
        else:
            raise AssertionError("the TLS handshake did not complete")
        tls.sendall(data)
        for _ in range(turns):
            try:
                chunk = tls.recv(65536)
            except ssl.SSLWantReadError:
                r.run_once(0.01)
                continue
            if not chunk:
                return bytes(answer)
            answer += chunk
        raise AssertionError(f"the server did not close; it sent {bytes(answer)!r}")
    finally:
        tls.close()


@pytest.mark.parametrize("family", ["ipv4", pytest.param("unix", marks=needs_unix)])
@pytest.mark.parametrize("mode", ALL_MODE_PARAMS)
def test_proxy_header_in_clear_then_tls_on_the_same_connection(
        mode: str, family: str, unix_path: str,
        tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls_contexts
    with proxied(mode, family, unix_path, proxy_protocol="v2",
                 ssl_context=server_context) as (server, r, _clock):
        with connect(server) as sock:
            peer = peer_of(sock)
            entry = awaiting_header(r)
            sock.sendall(V2_FULL[:20])
            assert_waits_quietly(r, entry)
            # The rest of the header, then the ClientHello: both are in the server's socket
            # when the loop next runs (tls_exchange runs it only after sending the hello).
            sock.sendall(V2_FULL[20:])
            got = json.loads(tls_exchange(r, sock, client_context, REQUEST))
        assert got["tls"] == "TLSv1.3" and got["line"] == REQUEST.decode("latin-1")
        assert got["client_address"] == list(CLIENT4)
        assert got["proxy"]["source"] == list(CLIENT4) and got["proxy"]["peer"] == as_json(peer)


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize("attrs,message", [
    ({"proxy_protocol": "v3"}, "proxy_protocol must be None, 'v1', 'v2' or 'any', not 'v3'"),
    ({"proxy_protocol": True}, "proxy_protocol must be None, 'v1', 'v2' or 'any', not True"),
    ({"proxy_trusted": ["10.0.0.0/8", "10.0.0.300/8"]},
     "proxy_trusted: '10.0.0.300/8' is not a network such as '10.0.0.0/8'"),
    ({"proxy_trusted": "192.168.1.1/24"},
     "proxy_trusted: '192.168.1.1/24' is not a network such as '10.0.0.0/8' "
     "(192.168.1.1/24 has host bits set)"),
    ({"proxy_trusted": [None]}, "proxy_trusted: None is not a network such as '10.0.0.0/8'"),
], ids=["v3", "bool", "bad-address", "host-bits", "not-a-string"])
@pytest.mark.parametrize("start", ["serve_forever", "handle_request", "register"])
def test_an_invalid_setting_is_refused_when_serving_starts(
        attrs: dict[str, Any], message: str, start: str) -> None:
    server_class = type("Configured", (servers.TCPServer,), attrs)
    with server_class((HOST4, 0), ClassicReport) as server, reactor.Reactor() as r:
        with pytest.raises(ValueError) as raised:
            if start == "register":
                r.register(server)
            else:
                getattr(server, start)()
        assert str(raised.value).startswith(message)
        assert server.reactor is None or server not in server.reactor.servers  # not serving


@pytest.mark.parametrize("attr,value,message", [
    ("proxy_protocol", "v3", "invalid setting (proxy_protocol='v3', proxy_header_max_size=4096)"
     ": accept must be one of ('v1', 'v2', 'any'), not 'v3'"),
    ("proxy_header_max_size", 8, "invalid setting (proxy_protocol='v2', "
     "proxy_header_max_size=8): max_size must be at least 16 bytes, not 8"),
    ("proxy_trusted", ["bogus"], "invalid setting: proxy_trusted: 'bogus' is not a network"),
])
def test_a_setting_made_invalid_while_serving_ends_each_connection_with_one_log_line(
        attr: str, value: Any, message: str, caplog: pytest.LogCaptureFixture) -> None:
    # Attributes are read at each accept (docs/proxy.md): a bad one must not stop the loop.
    with proxied("async", proxy_protocol="v2") as (server, r, _clock):
        fds = open_fds()
        setattr(server, attr, value)
        with connect(server) as sock:
            sock.sendall(V2_FULL + REQUEST)
            assert ended(r, sock) == b""
        (record,) = server_records(caplog)
        assert record.levelno == logging.ERROR and message in record.getMessage()
        pump(r, lambda: not r.requests)
        assert open_fds() == fds
        delattr(server, attr)  # the class's valid value again: serving goes on
        with connect(server) as sock:
            assert exchange(r, sock, V2_FULL + REQUEST)["client_address"] == list(CLIENT4)


@pytest.mark.parametrize("value", [15, "4096", None])
def test_an_invalid_proxy_header_max_size_is_refused_when_serving_starts(value: Any) -> None:
    server_class = type("Configured", (servers.TCPServer,),
                        {"proxy_protocol": "v2", "proxy_header_max_size": value})
    with server_class((HOST4, 0), ClassicReport) as server, reactor.Reactor() as r:
        with pytest.raises(ValueError, match="proxy_header_max_size must be an int of at "
                                             "least 16"):
            r.register(server)


def test_a_server_refused_by_one_reactor_can_then_be_registered_on_another() -> None:
    server_class = type("Configured", (servers.TCPServer,), {"proxy_protocol": "v3"})
    with server_class((HOST4, 0), ClassicReport) as server, reactor.Reactor() as first, \
            reactor.Reactor() as second:
        with pytest.raises(ValueError, match="proxy_protocol must be"):
            first.register(server)
        assert server.reactor is None, "still tied to the reactor that refused it"
        server.proxy_protocol = "v2"
        second.register(server)
        with connect(server) as sock:
            assert exchange(second, sock, V2_FULL + REQUEST)["client_address"] == list(CLIENT4)


# ------------------------------------------------------------------ shutdown
@pytest.mark.parametrize("stage", ["proxy-header", "reading-ahead", "handshaking"])
def test_a_connection_still_in_a_stage_when_a_drain_times_out_is_closed_once(
        stage: str, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="servers")
    clock = reactor.testing.FakeClock()
    attrs = {"proxy_protocol": "v2", "shutdown_timeout": 1.0, "proxy_header_timeout": 5.0,
             "ssl_handshake_timeout": 5.0, "read_ahead_timeout": 5.0}
    leaving_class = type("Leaving", (servers.TCPServer,), {
        **attrs, "ssl_context": tls_contexts[0] if stage == "handshaking" else None,
        "read_ahead": b"\n" if stage == "reading-ahead" else None})
    staying_class = type("Staying", (servers.TCPServer,), attrs)
    with reactor.Reactor(clock=clock) as r, leaving_class((HOST4, 0), ClassicReport) as leaving, \
            staying_class((HOST4, 0), AsyncReport) as staying:
        r.register(leaving)
        r.register(staying)  # a shared reactor: it goes on serving after `leaving` drained
        with connect(leaving) as stalled:
            entry = awaiting_header(r)
            if stage != "proxy-header":  # the header, then no ClientHello or no whole line
                stalled.sendall(V2_FULL + (b"part" if stage == "reading-ahead" else b""))
                pump(r, lambda: entry.state == stage)
            leaving.begin_shutdown()  # what server.shutdown() and Reactor.shutdown() start
            clock.advance(1.1)
            assert ended(r, stalled) == b""
        assert leaving not in r.servers and not r.requests
        clock.advance(5)  # past the stage's own deadline
        r.run_once(0)
        with connect(staying) as sock:
            assert exchange(r, sock, V2_FULL + REQUEST)["client_address"] == list(CLIENT4)
    (record,) = server_records(caplog, logging.INFO)  # the drain's line, nothing after it
    assert "shutdown_timeout=1.0s passed with 1 request in flight" in record.getMessage()


# ------------------------------------------------------------------ a real HAProxy
@requires_haproxy
@pytest.mark.threads
@pytest.mark.parametrize("send_proxy", ["v1", "v2"])
@pytest.mark.parametrize("server_class,handler", [
    (servers.ThreadingTCPServer, ClassicReport), (servers.TCPServer, AsyncReport),
    pytest.param(getattr(servers, "ThreadingUnixStreamServer", None), ClassicReport,
                 marks=needs_unix)], ids=["threading-classic", "plain-async", "threading-unix"])
def test_behind_haproxy_handlers_see_the_real_client_addresses(
        load_balancer: Callable[..., HAProxy], send_proxy: str, server_class: Any,
        handler: type, unix_path: str) -> None:
    behind = type("BehindHAProxy", (server_class,), {"proxy_protocol": send_proxy})
    address = unix_path if server_class.address_family != socket.AF_INET else (HOST4, 0)
    with ServerThread(behind(address, handler)) as server:
        balancer = load_balancer([server.server_address], send_proxy=send_proxy)
        for _ in range(3):
            with socket.create_connection(balancer.address[:2], timeout=10) as sock:
                sock.sendall(REQUEST)
                got = json.loads(recv_all(sock))
                client_address = list(sock.getsockname())
            assert got["client_address"] == client_address
            assert got["line"] == REQUEST.decode("latin-1")
            info = got["proxy"]
            assert (info["version"], info["command"]) == (int(send_proxy[1]), "PROXY")
            assert info["source"] == client_address
            assert info["destination"] == list(balancer.address[:2])
            if isinstance(address, str):
                assert info["peer"] == ""  # HAProxy, over an unnamed Unix socket
            else:
                assert info["peer"][0] == HOST4 and info["peer"] != client_address  # HAProxy
