"""Unix-domain socket files: a stale file left by a crashed run gets an error that says what to
do, `remove_stale_socket = True` cleans it up, `server_close()` removes the file the server
created (and only that one), and a live server's path is never taken over nor removed by a
second server. Helpers: `test_hostile_support.py`."""

from __future__ import annotations

import errno
import os
import socket
import stat
import pytest

import servers
from test_hostile_support import Reply, client, in_thread, needs_unix, on_reactor, pump

pytestmark = needs_unix

STREAM_CLASSES = [servers.UnixStreamServer, servers.ThreadingUnixStreamServer]
if hasattr(servers, "ForkingUnixStreamServer"):
    STREAM_CLASSES.append(servers.ForkingUnixStreamServer)
DGRAM_CLASSES = [servers.UnixDatagramServer, servers.ThreadingUnixDatagramServer]
ALL_CLASSES = STREAM_CLASSES + DGRAM_CLASSES


class AsyncEcho(servers.StreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.rfile:
            self.wfile.write(line)


class DatagramEcho(servers.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def handler_for(server_class: type) -> type:
    return DatagramEcho if issubclass(server_class, servers.UDPServer) else AsyncEcho


def leave_stale_file(path: str, kind: int) -> None:
    """What a crashed server leaves: a socket file nobody listens on."""
    sock = socket.socket(socket.AF_UNIX, kind)
    sock.bind(path)
    if kind == socket.SOCK_STREAM:
        sock.listen(1)
    sock.close()  # without unlinking the path
    assert stat.S_ISSOCK(os.stat(path).st_mode)


def kind_of(server_class: type) -> int:
    return socket.SOCK_DGRAM if issubclass(server_class, servers.UDPServer) else \
        socket.SOCK_STREAM


@pytest.mark.parametrize("server_class", ALL_CLASSES, ids=lambda c: c.__name__)
def test_a_stale_socket_file_gives_an_error_that_says_what_to_do(
        unix_path: str, server_class: type) -> None:
    leave_stale_file(unix_path, kind_of(server_class))
    inode = os.stat(unix_path).st_ino
    with pytest.raises(OSError) as caught:
        server_class(unix_path, handler_for(server_class))
    assert caught.value.errno == errno.EADDRINUSE
    message = str(caught.value)
    assert unix_path in message and "stale" in message
    assert "remove it" in message and "remove_stale_socket = True" in message
    assert os.stat(unix_path).st_ino == inode, "the file is not ours to remove unasked"


@pytest.mark.parametrize("server_class", ALL_CLASSES, ids=lambda c: c.__name__)
def test_remove_stale_socket_binds_over_a_stale_file_and_close_removes_it(
        unix_path: str, server_class: type) -> None:
    leave_stale_file(unix_path, kind_of(server_class))
    server_class = type("Cleaning", (server_class,), {"remove_stale_socket": True})
    server = server_class(unix_path, handler_for(server_class))
    try:
        assert stat.S_ISSOCK(os.stat(unix_path).st_mode)
        if kind_of(server_class) == socket.SOCK_STREAM:
            with client(unix_path) as sock:  # the new server is the one listening
                assert sock.getpeername() == unix_path
    finally:
        server.server_close()
    assert not os.path.exists(unix_path), "server_close() left the socket file"


def test_the_new_server_on_a_cleaned_path_serves(unix_path: str) -> None:
    leave_stale_file(unix_path, socket.SOCK_STREAM)
    with on_reactor(AsyncEcho, servers.UnixStreamServer, unix_path,
                    remove_stale_socket=True) as (server, r, _clock):
        with client(unix_path) as sock:
            sock.sendall(b"over the stale file\n")
            reply = Reply(sock)
            pump(r, lambda: reply.has(b"\n"))
            assert bytes(reply.data) == b"over the stale file\n"
    assert not os.path.exists(unix_path)


@pytest.mark.parametrize("server_class", ALL_CLASSES, ids=lambda c: c.__name__)
def test_server_close_removes_the_socket_file(unix_path: str, server_class: type) -> None:
    server = server_class(unix_path, handler_for(server_class))
    assert stat.S_ISSOCK(os.stat(unix_path).st_mode)
    server.server_close()
    assert not os.path.exists(unix_path)
    server.server_close()  # twice is harmless


@pytest.mark.threads
def test_a_served_stream_server_removes_its_file_after_shutdown(unix_path: str) -> None:
    with in_thread(AsyncEcho, servers.UnixStreamServer, unix_path) as server:
        with client(server.server_address) as sock:
            sock.sendall(b"hi\n")
            assert sock.recv(10) == b"hi\n"
    assert not os.path.exists(unix_path)


@pytest.mark.parametrize("cleaning", [False, True], ids=["plain", "remove_stale_socket"])
@pytest.mark.parametrize("server_class", ALL_CLASSES, ids=lambda c: c.__name__)
def test_a_live_servers_path_is_neither_taken_nor_removed_by_a_second_server(
        unix_path: str, server_class: type, cleaning: bool) -> None:
    first = server_class(unix_path, handler_for(server_class))
    try:
        inode = os.stat(unix_path).st_ino
        second_class = type("Second", (server_class,), {"remove_stale_socket": cleaning})
        with pytest.raises(OSError) as caught:
            second_class(unix_path, handler_for(server_class))
        assert caught.value.errno == errno.EADDRINUSE
        assert "in use by a running server" in str(caught.value)
        assert os.stat(unix_path).st_ino == inode, "the live server's file was replaced"
        if kind_of(server_class) == socket.SOCK_STREAM:
            with client(unix_path) as sock:  # the first server still owns it
                assert sock.getpeername() == unix_path
    finally:
        first.server_close()
    assert not os.path.exists(unix_path)


def test_server_close_leaves_a_file_that_replaced_its_own(unix_path: str) -> None:
    server = servers.UnixStreamServer(unix_path, AsyncEcho)
    try:
        os.unlink(unix_path)  # someone else took the path meanwhile
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(unix_path)
        other_inode = os.stat(unix_path).st_ino
    finally:
        server.server_close()
    try:
        assert os.stat(unix_path).st_ino == other_inode, "removed a file that was not ours"
    finally:
        other.close()


@pytest.mark.parametrize("server_class", [servers.UnixStreamServer, servers.UnixDatagramServer],
                         ids=lambda c: c.__name__)
def test_a_regular_file_in_the_way_is_reported_and_left_alone(
        unix_path: str, server_class: type) -> None:
    with open(unix_path, "w") as file:
        file.write("precious data")
    cleaning = type("Cleaning", (server_class,), {"remove_stale_socket": True})
    with pytest.raises(OSError) as caught:
        cleaning(unix_path, handler_for(server_class))
    assert caught.value.errno == errno.EADDRINUSE
    assert "not a socket" in str(caught.value)
    with open(unix_path) as file:
        assert file.read() == "precious data"


def test_a_failed_bind_leaks_no_descriptor(unix_path: str) -> None:
    """The autouse leak check verifies that the failed constructor closed its socket."""
    leave_stale_file(unix_path, socket.SOCK_STREAM)
    for _ in range(3):
        with pytest.raises(OSError):
            servers.UnixStreamServer(unix_path, AsyncEcho)
