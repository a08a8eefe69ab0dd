"""A real HAProxy speaks PROXY v1 and v2 to a server of ours: the fixture of tests/haproxy.py
works end to end, and servers.proxy understands what HAProxy really sends.

The handler here reads the header itself (a classic handler peeking its socket); wiring the
header into the server's own request stages is tested where that is built."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import pytest

import servers
from conftest import connect, recv_line
from haproxy import HAProxy, load_balancer, read_proxy_header, requires_haproxy
from servers.proxy import ProxyInfo, TLVType, is_trusted

__all__ = ["load_balancer"]  # the fixture, imported so that pytest finds it here

pytestmark = requires_haproxy


class HeaderReadingHandler(servers.BaseRequestHandler):
    """Reads the PROXY header, then one line, and answers "ok <line>"."""

    server: RecordingServer

    def handle(self) -> None:
        info, length = read_proxy_header(self.request, accept=self.server.accept)
        self.server.headers.append((info, length))
        line = recv_line(self.request)
        self.request.sendall(b"ok " + line)


class RecordingServer(servers.TCPServer):
    timeout = 10.0  # handle_request() never waits forever

    def __init__(self, host: str, accept: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), HeaderReadingHandler)
        self.accept = accept
        self.headers: list[tuple[ProxyInfo, int]] = []


def through(balancer: HAProxy, server: RecordingServer, line: bytes) -> tuple[bytes, Any]:
    """Send `line` through `balancer` to `server`, serve that one request; (reply, client's
    own address)."""
    with connect(balancer.address[:2]) as client:
        client.sendall(line)
        server.handle_request()
        return recv_line(client), client.getsockname()


@pytest.mark.parametrize("send_proxy", ["v1", "v2"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_haproxy_sends_the_real_client_address_in_both_versions(
        load_balancer: Callable[..., HAProxy], send_proxy: str, host: str) -> None:
    if ":" in host and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with RecordingServer(host, accept=send_proxy) as server:
        balancer = load_balancer([server.server_address], send_proxy=send_proxy, host=host)
        reply, client_address = through(balancer, server, b"hello\n")
        assert reply == b"ok hello\n"  # the bytes after the header reached the handler intact
        ((info, length),) = server.headers
        assert info.version == int(send_proxy[1])
        assert (info.command, info.family) == ("PROXY", server.address_family)
        assert info.source == client_address  # the client, not the balancer
        assert info.destination == balancer.address  # the frontend the client connected to
        assert info.peer != client_address and is_trusted(info.peer)  # the balancer itself
        assert info.client_address == client_address
        assert length == (len(b"PROXY TCP4 %s %s %d %d\r\n" % (
            host.encode(), host.encode(), client_address[1], balancer.address[1]))
            if send_proxy == "v1" else 16 + (12 if host == "127.0.0.1" else 36))


def test_haproxy_v2_tlvs_crc32c_and_unique_id_are_read(
        load_balancer: Callable[..., HAProxy]) -> None:
    with RecordingServer("127.0.0.1", accept="v2") as server:
        balancer = load_balancer([server.server_address], proxy_v2_options=["crc32c",
                                                                            "unique-id"],
                                 frontend_lines=["unique-id-format conn-%ci-%cp"])
        reply, client_address = through(balancer, server, b"one\n")
        assert reply == b"ok one\n"
        ((info, _),) = server.headers
        assert TLVType.CRC32C in info.tlvs  # and it matched, or parsing would have failed
        assert info.unique_id == b"conn-127.0.0.1-%d" % client_address[1]


def test_haproxy_spreads_connections_and_each_header_names_its_own_client(
        load_balancer: Callable[..., HAProxy]) -> None:
    with RecordingServer("127.0.0.1", "v2") as first, RecordingServer("127.0.0.1", "v2") as second:
        balancer = load_balancer([first.server_address, second.server_address])
        clients = [through(balancer, server, b"n%d\n" % index)[1]
                   for index, server in enumerate([first, second, first])]
        assert [info.source for info, _ in first.headers] == [clients[0], clients[2]]
        assert [info.source for info, _ in second.headers] == [clients[1]]


@pytest.mark.parametrize("graceful", [False, True])
def test_fixture_stops_haproxy_and_its_workers(tmp_path: Any, graceful: bool) -> None:
    with RecordingServer("127.0.0.1", "v2") as server:
        balancer = HAProxy([server.server_address], tmp_path)
        with balancer:
            pids = balancer.pids()
            assert len(pids) == 2 and "Loading success" in balancer.log()  # master + a worker
            through(balancer, server, b"served\n")
            balancer.stop(graceful=graceful)
        assert balancer.pids() == [] and not [pid for pid in pids if running(pid)]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(balancer.address[:2], timeout=10)
        assert balancer.stop() is None  # idempotent
        with pytest.raises(RuntimeError, match="starts once"):
            balancer.start()


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie has ended: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_haproxy_that_cannot_start_is_reported_with_its_log(tmp_path: Any) -> None:
    balancer = HAProxy([("127.0.0.1", 1)], tmp_path, backend_lines=["no-such-keyword 1"])
    with pytest.raises(RuntimeError, match=r"(?s)did not become ready.*no-such-keyword"):
        balancer.start(timeout=10)
    assert balancer.pid is None
