"""`from_socket()`: every server class serves a socket someone else bound (a service manager,
a supervisor, the caller), never binds or listens it again, serves the connections that were
already waiting, leaves the Unix socket file to whoever made it, and refuses a socket of the
wrong kind with a message that names the class to use."""

from __future__ import annotations

import os
import socket
import stat

import pytest

import servers
from conftest import connect, recv_line

HAS_UNIX = hasattr(socket, "AF_UNIX")
HAS_FORK = hasattr(os, "fork")
UNIX_ONLY = pytest.mark.skipif(not HAS_UNIX, reason="needs Unix sockets")


class Upper(servers.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline().upper())


class AsyncUpper(servers.StreamRequestHandler):
    async def handle(self) -> None:
        self.wfile.write((await self.rfile.readline()).upper())


class DatagramUpper(servers.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read().upper())


def class_names() -> list[object]:
    params: list[object] = []
    for family in ("TCP", "UDP", "UnixStream", "UnixDatagram"):
        for mode in ("", "Threading", "Forking"):
            name = f"{mode}{family}Server"
            marks = []
            if mode == "Threading":
                marks.append(pytest.mark.threads)
            if mode == "Forking":
                marks += [pytest.mark.forking,
                          pytest.mark.skipif(not HAS_FORK, reason="needs os.fork")]
            if "Unix" in family:
                marks.append(UNIX_ONLY)
            params.append(pytest.param(name, marks=marks, id=name))
    return params


def bound_socket(server_class: type, tmp_path: os.PathLike[str]) -> socket.socket:
    """A socket made and bound (and listening, for streams) the way a service manager does,
    outside any server."""
    datagram = issubclass(server_class, servers.UDPServer)
    kind = socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM
    if server_class.address_family == getattr(socket, "AF_UNIX", None):
        sock = socket.socket(socket.AF_UNIX, kind)
        sock.bind(os.path.join(tmp_path, "sock"))
    else:
        sock = socket.socket(socket.AF_INET, kind)
        sock.bind(("127.0.0.1", 0))
    if not datagram:
        sock.listen(16)
    os.set_blocking(sock.fileno(), False)  # O_NONBLOCK, as systemd passes them
    return sock


def datagram_client(server_address: object, tmp_path: os.PathLike[str],
                    number: int) -> socket.socket:
    if isinstance(server_address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(os.path.join(tmp_path, f"client{number}"))  # so that the reply can come back
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(10)
    return sock


@pytest.mark.parametrize("name", class_names())
def test_every_server_class_serves_requests_that_arrived_before_it_existed(
        name: str, tmp_path: os.PathLike[str]) -> None:
    server_class = getattr(servers, name)
    sock = bound_socket(server_class, tmp_path)
    address = sock.getsockname()
    datagram = issubclass(server_class, servers.UDPServer)
    # The clients connect and send before any server object exists: the kernel queues them.
    if datagram:
        clients = [datagram_client(address, tmp_path, n) for n in range(3)]
        for number, client in enumerate(clients):
            client.sendto(b"early %d" % number, address)
    else:
        clients = [connect(address) for _ in range(3)]
        for number, client in enumerate(clients):
            client.sendall(b"early %d\n" % number)
    handler = DatagramUpper if datagram else Upper
    try:
        with server_class.from_socket(sock, handler) as server:
            assert server.socket is sock and server.server_address == address
            for _ in clients:
                server.handle_request()
            for number, client in enumerate(clients):
                reply = client.recv(100) if datagram else recv_line(client)
                assert reply == b"EARLY %d" % number + (b"" if datagram else b"\n")
        assert sock.fileno() == -1, "server_close() closes the socket the server was given"
    finally:
        for client in clients:
            client.close()


def test_an_async_handler_runs_on_the_reactor_with_an_adopted_socket(
        tmp_path: os.PathLike[str]) -> None:
    sock = bound_socket(servers.TCPServer, tmp_path)
    with connect(sock.getsockname()) as client, \
            servers.TCPServer.from_socket(sock, AsyncUpper) as server:
        client.sendall(b"async\n")
        server.handle_request()
        assert recv_line(client) == b"ASYNC\n"


def test_the_socket_is_neither_bound_nor_listened_again() -> None:
    sock = socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET)
    try:
        sock.bind(("::1" if socket.has_ipv6 else "127.0.0.1", 0))
    except OSError:  # pragma: no cover - a host without IPv6 loopback
        sock.close()
        sock = socket.create_server(("127.0.0.1", 0), backlog=1)
    sock.listen(1)

    class Reuse(servers.TCPServer):
        allow_reuse_address = True
        request_queue_size = 1000  # would be the backlog if the server listened again

    with Reuse.from_socket(sock, Upper) as server:
        assert server.address_family == sock.family  # IPv6 taken from the socket
        assert server.server_address == sock.getsockname()
        assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        with connect(server.server_address) as client:
            client.sendall(b"v6\n")
            server.handle_request()
            assert recv_line(client) == b"V6\n"


def test_a_subclass_that_sets_itself_up_in_server_bind_works_like_http_server(
        tmp_path: os.PathLike[str]) -> None:
    class Named(servers.TCPServer):  # http.server.HTTPServer does this
        def server_bind(self) -> None:
            super().server_bind()
            self.server_port = self.server_address[1]

    sock = bound_socket(servers.TCPServer, tmp_path)
    with Named.from_socket(sock, Upper) as server:
        assert server.server_port == sock.getsockname()[1]


@UNIX_ONLY
@pytest.mark.parametrize("server_class", ["UnixStreamServer", "UnixDatagramServer"])
def test_a_unix_server_never_removes_the_socket_file_it_did_not_create(
        server_class: str, tmp_path: os.PathLike[str]) -> None:
    cls = getattr(servers, server_class)
    sock = bound_socket(cls, tmp_path)
    path = sock.getsockname()
    handler = DatagramUpper if issubclass(cls, servers.UDPServer) else Upper
    cls.from_socket(sock, handler).server_close()
    assert stat.S_ISSOCK(os.stat(path).st_mode), "the file belongs to whoever bound it"


def test_a_datagram_socket_passed_non_blocking_is_served_blocking(
        tmp_path: os.PathLike[str]) -> None:
    """Handlers reply on a datagram server's socket with sendto(), which must not fail with
    "would block"; service managers pass O_NONBLOCK sockets."""
    sock = bound_socket(servers.UDPServer, tmp_path)
    with servers.UDPServer.from_socket(sock, DatagramUpper) as server:
        assert os.get_blocking(server.socket.fileno())


WRONG_KINDS = [
    ("TCPServer", socket.AF_INET, socket.SOCK_DGRAM, "UDPServer"),
    ("UDPServer", socket.AF_INET, socket.SOCK_STREAM, "TCPServer"),
    ("ThreadingTCPServer", socket.AF_INET6, socket.SOCK_DGRAM, "UDPServer"),
]
if HAS_UNIX:
    WRONG_KINDS += [
        ("TCPServer", socket.AF_UNIX, socket.SOCK_STREAM, "UnixStreamServer"),
        ("UnixStreamServer", socket.AF_INET, socket.SOCK_STREAM, "TCPServer"),
        ("UnixStreamServer", socket.AF_UNIX, socket.SOCK_DGRAM, "UnixDatagramServer"),
        ("UnixDatagramServer", socket.AF_UNIX, socket.SOCK_STREAM, "UnixStreamServer"),
        ("UDPServer", socket.AF_UNIX, socket.SOCK_DGRAM, "UnixDatagramServer"),
    ]


@pytest.mark.parametrize(("name", "family", "kind", "use"), WRONG_KINDS,
                         ids=[f"{k[0]}-{k[1].name}-{k[2].name}" for k in WRONG_KINDS])
def test_a_socket_of_the_wrong_kind_is_refused_and_left_alone(
        name: str, family: socket.AddressFamily, kind: socket.SocketKind, use: str) -> None:
    with socket.socket(family, kind) as sock:
        with pytest.raises(TypeError) as caught:
            getattr(servers, name).from_socket(sock, Upper)
        assert f"{name} cannot serve {family.name}/{kind.name} sockets" in str(caught.value)
        assert f"use {use}.from_socket()" in str(caught.value)
        assert sock.fileno() >= 0 and sock.family == family, "the caller's socket is untouched"


def test_a_stream_socket_must_be_listening_and_a_datagram_socket_bound() -> None:
    with socket.socket() as stream, socket.socket(type=socket.SOCK_DGRAM) as datagram:
        stream.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match=r"is not listening: call its listen\(\) first"):
            servers.TCPServer.from_socket(stream, Upper)
        with pytest.raises(ValueError, match=r"is not bound: call its bind\(\) first"):
            servers.UDPServer.from_socket(datagram, DatagramUpper)
        assert stream.fileno() >= 0 and datagram.fileno() >= 0


def test_base_server_has_no_socket_to_serve() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        with pytest.raises(TypeError, match="BaseServer has no socket of its own"):
            servers.BaseServer.from_socket(sock, Upper)
