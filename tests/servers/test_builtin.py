"""servers.builtin: the ready-made handlers and the formatting helpers, with real sockets on a
reactor driven by hand (`run_once`), over every selector class."""

from __future__ import annotations

import datetime
import os
import select
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import reactor
import servers
from servers import builtin


# --------------------------------------------------------------------------- helpers
def turn_until(loop: reactor.Reactor, condition: Callable[[], bool], turns: int = 400) -> None:
    """Run loop turns until `condition()` holds (bounded)."""
    for _ in range(turns):
        if condition():
            return
        loop.run_once(0.05)
    raise AssertionError("the condition was not reached")


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def receive(loop: reactor.Reactor, sock: socket.socket, until: Callable[[bytes], bool]) -> bytes:
    """Turn the loop and read from `sock` until `until(data)` holds or the peer closes."""
    data = b""
    for _ in range(400):
        if until(data):
            return data
        turn_until(loop, lambda: readable(sock))
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"incomplete reply: {data!r}")


def until_eof(data: bytes) -> bool:
    return False


@pytest.fixture
def serve(loop: reactor.Reactor) -> Iterator[Callable[..., Any]]:
    """`serve(ServerClass, address, Handler)`: a server registered on `loop`, closed after."""
    made: list[Any] = []

    def start(server_class: type, address: Any, handler: type) -> Any:
        server = server_class(address, handler)
        made.append(server)
        loop.register(server)
        return server

    yield start
    for server in made:
        server.server_close()


def tcp_client(server: Any) -> socket.socket:
    client = socket.create_connection(server.server_address, timeout=10)
    return client


def udp_client() -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(10)
    return client


# --------------------------------------------------------------------------- stream handlers
def test_echo_returns_each_line_even_when_it_arrives_in_pieces(loop, serve) -> None:
    server = serve(servers.TCPServer, ("127.0.0.1", 0), builtin.Echo)
    with tcp_client(server) as client:
        client.sendall(b"hel")
        turn_until(loop, lambda: len(loop.requests) == 1)
        client.sendall(b"lo\nwor")
        assert receive(loop, client, lambda d: d.endswith(b"\n")) == b"hello\n"
        client.sendall(b"ld\n")
        assert receive(loop, client, lambda d: d.endswith(b"\n")) == b"world\n"
        client.shutdown(socket.SHUT_WR)
        assert receive(loop, client, until_eof) == b""
    turn_until(loop, lambda: not loop.requests)


def test_echo_over_a_unix_socket(loop, serve, unix_path) -> None:
    serve(servers.UnixStreamServer, unix_path, builtin.Echo)
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(unix_path)
        client.sendall(b"one\ntwo\n")
        client.shutdown(socket.SHUT_WR)
        assert receive(loop, client, until_eof) == b"one\ntwo\n"


def test_discard_reads_everything_and_sends_nothing(loop, serve) -> None:
    server = serve(servers.TCPServer, ("127.0.0.1", 0), builtin.Discard)
    with tcp_client(server) as client:
        client.sendall(b"x" * 100_000)
        turn_until(loop, lambda: bool(loop.requests)
                   and loop.requests[0].bytes_in == 100_000)
        client.shutdown(socket.SHUT_WR)
        assert receive(loop, client, until_eof) == b""
    turn_until(loop, lambda: not loop.requests)


def test_daytime_line_has_the_rfc_867_shape() -> None:
    moment = datetime.datetime(1982, 2, 22, 17, 37, 43, tzinfo=datetime.timezone.utc)
    assert builtin.daytime(moment) == "Monday, February 22, 1982 17:37:43 UTC\r\n"


def test_daytime_sends_one_line_then_closes(loop, serve) -> None:
    server = serve(servers.TCPServer, ("127.0.0.1", 0), builtin.Daytime)
    with tcp_client(server) as client:
        reply = receive(loop, client, until_eof)
    assert reply.endswith(b"\r\n") and reply.count(b"\n") == 1
    assert str(datetime.date.today().year).encode() in reply


def test_status_lists_every_request_on_its_reactor(loop, serve) -> None:
    echo = serve(servers.TCPServer, ("127.0.0.1", 0), builtin.Echo)
    status = serve(servers.TCPServer, ("127.0.0.1", 0), builtin.Status)
    with tcp_client(echo) as held, tcp_client(status) as asker:
        held.sendall(b"ping\n")
        assert receive(loop, held, lambda d: d.endswith(b"\n")) == b"ping\n"
        pid_line, *lines = receive(loop, asker, until_eof).decode().splitlines()
        assert pid_line == f"pid {os.getpid()}: 2 requests in flight"  # which worker answered
        assert lines[0].split() == ["ID", "SERVER", "CLIENT", "STATE", "AGE", "IN", "OUT"]
        rows = {line.split()[2]: line.split() for line in lines[1:]}
        held_port = held.getsockname()[1]
        row = rows[f"127.0.0.1:{held_port}"]
        assert row[1] == f"tcp://127.0.0.1:{echo.server_address[1]}"
        assert row[3] == "reading" and row[5:] == ["5", "5"]
        assert rows[f"127.0.0.1:{asker.getsockname()[1]}"][3] == "handling"
        assert len(lines) == 3
    turn_until(loop, lambda: not loop.requests)


@pytest.mark.threads
def test_status_off_the_reactor_says_where_to_run_it(loop, serve) -> None:
    server = serve(servers.ThreadingTCPServer, ("127.0.0.1", 0), builtin.Status)
    with tcp_client(server) as client:
        turn_until(loop, lambda: readable(client))
        reply = client.recv(1000)
    assert b"serve Status in reactor mode" in reply
    turn_until(loop, lambda: not loop.requests)


# --------------------------------------------------------------------------- datagram handlers
def test_each_stream_handler_names_its_datagram_counterpart() -> None:
    assert builtin.Echo.datagram_handler is builtin.DatagramEcho
    assert builtin.Discard.datagram_handler is builtin.DatagramDiscard
    assert builtin.Daytime.datagram_handler is builtin.DatagramDaytime
    assert builtin.Status.datagram_handler is builtin.DatagramStatus
    for name in builtin.__all__:
        value = getattr(builtin, name)
        if isinstance(value, type):
            assert value.handle_is_async, f"{name} should run on the reactor by default"


def test_datagram_echo_daytime_and_status_reply(loop, serve) -> None:
    echo = serve(servers.UDPServer, ("127.0.0.1", 0), builtin.DatagramEcho)
    day = serve(servers.UDPServer, ("127.0.0.1", 0), builtin.DatagramDaytime)
    status = serve(servers.UDPServer, ("127.0.0.1", 0), builtin.DatagramStatus)
    with udp_client() as client:
        for server, check in ((echo, lambda r: r == b"datagram"),
                              (day, lambda r: r.endswith(b"\r\n")),
                              (status, lambda r: r.startswith(b"pid ") and b"in flight" in r)):
            client.sendto(b"datagram", server.server_address)
            turn_until(loop, lambda: readable(client))
            assert check(client.recv(65536))


def test_datagram_discard_sends_no_reply(loop, serve) -> None:
    discard = serve(servers.UDPServer, ("127.0.0.1", 0), builtin.DatagramDiscard)
    echo = serve(servers.UDPServer, ("127.0.0.1", 0), builtin.DatagramEcho)
    with udp_client() as client:
        client.sendto(b"dropped", discard.server_address)
        client.sendto(b"marker", echo.server_address)  # served after the discarded one
        turn_until(loop, lambda: readable(client))
        assert client.recv(100) == b"marker"
        assert not readable(client)


def test_datagram_status_is_cut_to_fit_a_datagram(loop, serve, monkeypatch) -> None:
    monkeypatch.setattr(builtin, "MAX_DATAGRAM_REPLY_BYTES", 200)
    echo = serve(servers.TCPServer, ("127.0.0.1", 0), builtin.Echo)
    status = serve(servers.UDPServer, ("127.0.0.1", 0), builtin.DatagramStatus)
    held = [tcp_client(echo) for _ in range(5)]
    try:
        turn_until(loop, lambda: len(loop.requests) == 5)
        with udp_client() as client:
            client.sendto(b"?", status.server_address)
            turn_until(loop, lambda: readable(client))
            reply = client.recv(65536)
        assert len(reply) <= 200 and reply.endswith(b"(cut: too long for a datagram)\n")
    finally:
        for sock in held:
            sock.close()
    turn_until(loop, lambda: not loop.requests)


# --------------------------------------------------------------------------- formatting
@pytest.mark.parametrize(("address", "text"), [
    (("127.0.0.1", 80), "127.0.0.1:80"),
    (("::1", 80, 0, 0), "[::1]:80"),
    ("/tmp/x.sock", "/tmp/x.sock"),
    ("", "unnamed"),
    ("\0name", "@name"),
    (b"\0name", "@name"),
    (b"/tmp/y.sock", "/tmp/y.sock"),
    (None, "None"),
])
def test_format_address(address: Any, text: str) -> None:
    assert builtin.format_address(address) == text


def test_server_url_names_every_kind_with_its_real_port(unix_path) -> None:
    made = [servers.TCPServer(("127.0.0.1", 0), builtin.Echo),
            servers.UDPServer(("127.0.0.1", 0), builtin.DatagramEcho),
            servers.UnixStreamServer(unix_path, builtin.Echo),
            servers.UnixDatagramServer(unix_path + "g", builtin.DatagramEcho)]
    try:
        urls = [builtin.server_url(server) for server in made]
    finally:
        for server in made:
            server.server_close()
    assert urls[0] == f"tcp://127.0.0.1:{made[0].server_address[1]}"
    assert urls[1] == f"udp://127.0.0.1:{made[1].server_address[1]}"
    assert urls[2:] == [f"unix:{unix_path}", f"unixgram:{unix_path}g"]


def test_an_empty_table_is_just_the_header() -> None:
    assert builtin.format_request_table([]) == "ID  SERVER  CLIENT  STATE  AGE  IN  OUT\n"
