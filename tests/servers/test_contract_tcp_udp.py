"""TCPServer, UDPServer and the Unix servers: construction, binding, addresses, socket options,
and what the request objects are."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import pytest

import servers
from conftest import recv_line

HOST = "127.0.0.1"
HAS_UNIX = hasattr(socket, "AF_UNIX")
needs_unix = pytest.mark.skipif(not HAS_UNIX, reason="needs AF_UNIX")


def has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="needs an IPv6 loopback")


class Echo(servers.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class DatagramEcho(servers.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def stream_exchange(server: Any, payload: bytes = b"hello\n") -> bytes:
    family = server.socket.family
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(server.server_address)
        client.sendall(payload)
        server.handle_request()
        return recv_line(client)


# ------------------------------------------------------------------------ construction
def test_constructor_binds_and_listens_and_records_the_real_port() -> None:
    with servers.TCPServer((HOST, 0), Echo) as server:
        assert server.server_address == server.socket.getsockname()
        assert server.server_address[0] == HOST and server.server_address[1] > 0
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert server.socket.family == socket.AF_INET
        assert server.socket.type == socket.SOCK_STREAM
        assert server.RequestHandlerClass is Echo
        assert stream_exchange(server) == b"hello\n"


def test_udp_constructor_binds_without_listening() -> None:
    with servers.UDPServer((HOST, 0), DatagramEcho) as server:
        assert server.server_address == server.socket.getsockname()
        assert server.socket.type == socket.SOCK_DGRAM
        assert server.server_address[1] > 0


def test_bind_and_activate_false_creates_an_unbound_socket_for_manual_setup() -> None:
    server = servers.TCPServer((HOST, 0), Echo, bind_and_activate=False)
    try:
        assert server.socket.fileno() != -1, "the socket is created even without binding"
        assert server.socket.getsockname() == ("0.0.0.0", 0)
        assert server.server_address == (HOST, 0)
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.server_bind()
        assert server.server_address == server.socket.getsockname()
        assert server.server_address[1] != 0
        server.server_activate()
        assert stream_exchange(server, b"manual\n") == b"manual\n"
    finally:
        server.server_close()


def test_socket_timeout_set_before_manual_bind_is_kept() -> None:
    server = servers.TCPServer((HOST, 0), Echo, bind_and_activate=False)
    try:
        server.socket.settimeout(3)
        server.server_bind()
        server.server_activate()
        assert stream_exchange(server) == b"hello\n"
        assert server.socket.gettimeout() == 3
    finally:
        server.server_close()


@needs_unix
def test_class_attributes_are_read_when_the_server_is_built(unix_path: str) -> None:
    class Server(servers.TCPServer):
        pass

    # http.server's test() assigns the family on the class just before building the server
    Server.address_family = socket.AF_UNIX
    Server.request_queue_size = 1
    with Server(unix_path, Echo) as server:
        assert server.socket.family == socket.AF_UNIX
        assert server.server_address == unix_path
        assert stream_exchange(server) == b"hello\n"


def test_bind_failure_raises_the_original_overflowerror_and_leaks_nothing() -> None:
    for _ in range(200):
        with pytest.raises(OverflowError):
            servers.TCPServer((HOST, -1), Echo)
    # the autouse leak check verifies that no descriptor was left open


def test_address_in_use_raises_the_original_oserror_and_leaks_nothing() -> None:
    with servers.TCPServer((HOST, 0), Echo) as first:
        for _ in range(200):
            with pytest.raises(OSError) as info:
                servers.TCPServer(first.server_address, Echo)
            assert info.value.errno == errno.EADDRINUSE


def test_failing_server_activate_closes_the_socket_and_reraises() -> None:
    class Server(servers.TCPServer):
        def server_activate(self) -> None:
            self.seen_socket = self.socket
            raise PermissionError("no listening today")

    created = []

    class Tracking(Server):
        def server_close(self) -> None:
            created.append(self.socket)
            super().server_close()

    with pytest.raises(PermissionError, match="no listening today"):
        Tracking((HOST, 0), Echo)
    assert len(created) == 1 and created[0].fileno() == -1


def test_server_close_closes_the_listening_socket() -> None:
    server = servers.TCPServer((HOST, 0), Echo)
    address = server.server_address
    server.server_close()
    assert server.socket.fileno() == -1
    with socket.socket() as client, pytest.raises(ConnectionRefusedError):
        client.connect(address)


def test_server_close_on_a_server_that_never_served() -> None:
    server = servers.ThreadingTCPServer((HOST, 0), lambda *args: None)
    server.server_close()
    assert server.socket.fileno() == -1


# ------------------------------------------------------------------------ IPv6
@needs_ipv6
def test_ipv6_literal_works_with_plain_tcpserver_and_gives_a_4_tuple() -> None:
    with servers.TCPServer(("::1", 0), Echo) as server:
        assert server.socket.family == socket.AF_INET6
        assert len(server.server_address) == 4
        assert server.server_address[0] == "::1"
        assert server.server_address == server.socket.getsockname()
        assert stream_exchange(server, b"six\n") == b"six\n"


@needs_ipv6
def test_ipv6_literal_works_with_plain_udpserver() -> None:
    with servers.UDPServer(("::1", 0), DatagramEcho) as server:
        assert server.socket.family == socket.AF_INET6
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"six", server.server_address[:2])
            server.handle_request()
            assert client.recv(100) == b"six"


@needs_ipv6
def test_ipv6_subclass_with_address_family_keeps_working() -> None:
    class Server6(servers.TCPServer):
        address_family = socket.AF_INET6

    with Server6(("::1", 0), Echo) as server:
        assert server.socket.family == socket.AF_INET6
        assert stream_exchange(server, b"v6\n") == b"v6\n"


def test_ipv4_address_does_not_change_the_address_family() -> None:
    with servers.TCPServer((HOST, 0), Echo) as server:
        assert server.address_family == socket.AF_INET


# ------------------------------------------------------------------------ socket options
@pytest.mark.parametrize("cls", [servers.TCPServer, servers.UDPServer])
def test_reuse_options_are_off_by_default(cls: type) -> None:
    with cls((HOST, 0), Echo) as server:
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        if hasattr(socket, "SO_REUSEPORT"):
            assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0


@pytest.mark.parametrize("value", [True, 1, 2])
@pytest.mark.parametrize("cls", [servers.TCPServer, servers.UDPServer])
def test_allow_reuse_address_accepts_truthy_values(cls: type, value: Any) -> None:
    class Server(cls):  # type: ignore[misc,valid-type]
        allow_reuse_address = value

    with Server((HOST, 0), Echo) as server:
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")
@pytest.mark.parametrize("cls", [servers.TCPServer, servers.UDPServer])
def test_allow_reuse_port_sets_so_reuseport_so_two_servers_share_a_port(cls: type) -> None:
    class Server(cls):  # type: ignore[misc,valid-type]
        allow_reuse_port = True

    with Server((HOST, 0), Echo) as first:
        assert first.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
        with Server(first.server_address, Echo) as second:
            assert second.server_address == first.server_address


def test_allow_reuse_address_lets_a_new_server_bind_over_time_wait() -> None:
    class Server(servers.TCPServer):
        allow_reuse_address = True

    with Server((HOST, 0), Echo) as first:
        address = first.server_address
        assert stream_exchange(first) == b"hello\n"  # the server closes first: TIME_WAIT
    with Server(address, Echo) as second:
        assert stream_exchange(second, b"again\n") == b"again\n"


# ------------------------------------------------------------------------ requests
def test_tcp_request_is_the_connected_socket_and_address_is_the_peer() -> None:
    seen: dict[str, Any] = {}

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            seen["request"] = self.request
            seen["address"] = self.client_address
            seen["server"] = self.server
            seen["peer"] = self.request.getpeername()

    with servers.TCPServer((HOST, 0), Handler) as server:
        with socket.create_connection(server.server_address, timeout=10) as client:
            server.handle_request()
            assert client.recv(1) == b""
            assert seen["address"] == client.getsockname() == seen["peer"]
        assert isinstance(seen["request"], socket.socket)
        assert seen["request"].fileno() == -1, "the server closes the request"
        assert seen["server"] is server


def test_tcp_shutdown_request_shuts_the_write_side_then_closes() -> None:
    calls = []

    class Server(servers.TCPServer):
        def close_request(self, request: Any) -> None:
            calls.append(("close", request.fileno() != -1))
            super().close_request(request)

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(b"bye")

    with Server((HOST, 0), Handler) as server:
        with socket.create_connection(server.server_address, timeout=10) as client:
            server.handle_request()
            assert client.recv(10) == b"bye"
            assert client.recv(10) == b""
    assert calls == [("close", True)]


def test_tcp_shutdown_request_ignores_errors_from_a_gone_peer() -> None:
    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            self.request.close()  # shutdown(SHUT_WR) will now fail with EBADF

    with servers.TCPServer((HOST, 0), Handler) as server:
        with socket.create_connection(server.server_address, timeout=10):
            assert server.handle_request() is None


def test_udp_request_is_data_and_the_shared_server_socket() -> None:
    seen: dict[str, Any] = {}

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            seen["request"] = self.request
            seen["address"] = self.client_address

    with servers.UDPServer((HOST, 0), Handler) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind((HOST, 0))
            client.sendto(b"payload", server.server_address)
            server.handle_request()
            data, sock = seen["request"]
            assert data == b"payload"
            assert sock is server.socket
            assert sock.fileno() != -1, "a request must not close the server's socket"
            assert seen["address"] == client.getsockname()


def test_udp_datagram_longer_than_max_packet_size_is_truncated() -> None:
    seen = []

    class Server(servers.UDPServer):
        max_packet_size = 16

    class Handler(servers.DatagramRequestHandler):
        def handle(self) -> None:
            seen.append(self.packet)
            self.wfile.write(b"%d" % len(self.packet))

    with Server((HOST, 0), Handler) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"x" * 100, server.server_address)
            server.handle_request()
            assert client.recv(100) == b"16"
    assert seen == [b"x" * 16]


def test_udp_default_max_packet_size_takes_8192_bytes() -> None:
    seen = []

    class Handler(servers.DatagramRequestHandler):
        def handle(self) -> None:
            seen.append(len(self.packet))

    with servers.UDPServer((HOST, 0), Handler) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"y" * 9000, server.server_address)
            server.handle_request()
            client.recv(100)
    assert seen == [8192]


def test_udp_server_serves_many_datagrams_on_one_socket() -> None:
    with servers.UDPServer((HOST, 0), DatagramEcho) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            for n in range(5):
                client.sendto(b"n%d" % n, server.server_address)
                server.handle_request()
                assert client.recv(100) == b"n%d" % n


def test_udp_shutdown_and_close_request_leave_the_socket_open() -> None:
    with servers.UDPServer((HOST, 0), DatagramEcho) as server:
        request = (b"", server.socket)
        server.shutdown_request(request)
        server.close_request(request)
        assert server.socket.fileno() != -1


# ------------------------------------------------------------------------ Unix sockets
@needs_unix
def test_unix_stream_server_address_is_the_path(unix_path: str) -> None:
    with servers.UnixStreamServer(unix_path, Echo) as server:
        assert server.server_address == unix_path == server.socket.getsockname()
        assert server.socket.family == socket.AF_UNIX
        assert stream_exchange(server, b"unix\n") == b"unix\n"


@needs_unix
def test_unix_datagram_server_replies_to_a_bound_client(unix_path: str) -> None:
    with servers.UnixDatagramServer(unix_path, DatagramEcho) as server:
        assert server.server_address == unix_path
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.bind(unix_path + ".client")
            client.sendto(b"dgram", unix_path)
            server.handle_request()
            assert client.recv(100) == b"dgram"


@needs_unix
def test_unix_server_on_a_path_in_use_raises_eaddrinuse_and_leaks_nothing(
        unix_path: str) -> None:
    with servers.UnixStreamServer(unix_path, Echo):
        for _ in range(20):
            with pytest.raises(OSError) as info:
                servers.UnixStreamServer(unix_path, Echo)
            assert info.value.errno == errno.EADDRINUSE
        assert os.path.exists(unix_path), "a failed bind must not remove a live server's file"


@needs_unix
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="abstract sockets are Linux-only")
def test_unix_stream_server_on_an_abstract_address() -> None:
    name = b"\0servers-test-%d" % os.getpid()
    with servers.UnixStreamServer(name, Echo) as server:
        assert server.server_address == name
        assert stream_exchange(server, b"abstract\n") == b"abstract\n"
