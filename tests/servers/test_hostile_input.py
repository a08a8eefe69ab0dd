"""Valid input cut at random byte boundaries (seeded `random.Random`) gives exactly the right
replies, in every mode, including several clients interleaved on one reactor; garbage (invalid
UTF-8, NULs, stray CRs, a last line without its newline) is handled per request and never
disturbs other clients. Helpers: `test_hostile_support.py`."""

from __future__ import annotations

import hashlib
import random
import socket

import pytest

import servers
from test_hostile_support import (
    ClientProcess, Reply, client, in_thread, needs_fork, on_reactor, pump, send_pumping)


def answer(line: bytes) -> bytes:
    """The reply to one line: its length, digest and whether it is UTF-8."""
    body = line[:-1] if line.endswith(b"\n") else line
    try:
        body.decode("utf-8")
        kind = b"text"
    except UnicodeDecodeError:
        kind = b"binary"
    return b"%d %s %s\n" % (len(body), hashlib.sha1(body).hexdigest().encode(), kind)


class AsyncDigest(servers.StreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.rfile:
            self.wfile.write(answer(line))


class ClassicDigest(servers.StreamRequestHandler):
    timeout = 10

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(answer(line))


def make_lines(rng: random.Random, count: int, longest: int = 3000) -> list[bytes]:
    alphabet = bytes(b for b in range(256) if b != 0x0A)
    return [bytes(rng.choice(alphabet) for _ in range(rng.randint(0, longest))) + b"\n"
            for _ in range(count)]


def cut(rng: random.Random, data: bytes, largest: int = 700) -> list[bytes]:
    pieces, at = [], 0
    while at < len(data):
        size = rng.choice([1, 1, 2, 3, rng.randint(1, largest)])
        pieces.append(data[at:at + size])
        at += size
    return pieces


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reactor_random_chunking_gives_exact_replies(seed: int) -> None:
    rng = random.Random(seed)
    lines = make_lines(rng, 60)
    expected = b"".join(answer(line) for line in lines)
    with on_reactor(AsyncDigest) as (server, r, _clock):
        with client(server.server_address) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reply = Reply(sock)
            for piece in cut(rng, b"".join(lines)):
                send_pumping(r, sock, piece)
                for _ in range(rng.randint(0, 2)):  # the server sees partial lines
                    r.run_once(0)
            pump(r, lambda: reply.at_least(len(expected)))
            assert bytes(reply.data) == expected


def test_reactor_interleaved_clients_each_get_their_own_exact_replies() -> None:
    rng = random.Random(42)
    with on_reactor(AsyncDigest, request_queue_size=16) as (server, r, _clock):
        socks = [client(server.server_address) for _ in range(8)]
        lines = [make_lines(rng, 20, 500) for _ in socks]
        streams = [b"".join(own) for own in lines]
        expected = [b"".join(answer(line) for line in own) for own in lines]
        queues = [cut(rng, stream, 300) for stream in streams]
        replies = [Reply(sock) for sock in socks]
        while any(queues):
            i = rng.choice([i for i, queue in enumerate(queues) if queue])
            send_pumping(r, socks[i], queues[i].pop(0))
            r.run_once(0)
        pump(r, lambda: all([reply.at_least(len(want))  # a list: poll every reply
                             for reply, want in zip(replies, expected)]))
        assert [bytes(reply.data) for reply in replies] == expected
        for sock in socks:
            sock.close()


@pytest.mark.threads
@pytest.mark.parametrize("base,handler", [
    (servers.TCPServer, ClassicDigest),
    (servers.ThreadingTCPServer, ClassicDigest),
    (servers.ThreadingTCPServer, AsyncDigest),
], ids=["sync", "threading-classic", "threading-async"])
def test_random_chunking_gives_exact_replies(base: type, handler: type) -> None:
    rng = random.Random(7)
    lines = make_lines(rng, 60)
    expected = b"".join(answer(line) for line in lines)
    with in_thread(handler, base) as server:
        with client(server.server_address) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for piece in cut(rng, b"".join(lines)):
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
            data = bytearray()
            while chunk := sock.recv(65536):
                data += chunk
            assert bytes(data) == expected


@needs_fork
@pytest.mark.forking
@pytest.mark.slow
def test_forking_random_chunking_gives_exact_replies() -> None:
    clients = """
        import hashlib, random
        rng = random.Random(11)
        alphabet = bytes(b for b in range(256) if b != 0x0A)
        lines = [bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 3000))) + b"\\n"
                 for _ in range(60)]
        data = b"".join(lines)
        sock = connect()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        at = 0
        while at < len(data):
            size = rng.choice([1, 1, 2, 3, rng.randint(1, 700)])
            sock.sendall(data[at:at + size])
            at += size
        sock.shutdown(socket.SHUT_WR)
        replies = recv_all(sock).splitlines()
        digests = [hashlib.sha1(line[:-1]).hexdigest() for line in lines]
        report([len(replies), all(reply.split()[1].decode() == digest
                                  for reply, digest in zip(replies, digests))])
    """
    with on_reactor(AsyncDigest, servers.ForkingTCPServer) as (server, r, _clock):
        with ClientProcess(clients, server.server_address) as proc:
            assert proc.finish(r) == [[60, True]]


GARBAGE = [
    b"\xff\xfe\xfd not utf-8\n",
    b"\x00\x00\x00\n",
    b"nul\x00in the middle\n",
    b"\r\n",
    b"\r\r\r\n",
    b"\n",
    b"\xc3\x28 broken sequence\n",
    b"valid \xc3\xa9t\xc3\xa9\n",
    bytes(range(256)).replace(b"\n", b"") + b"\n",
    b"\xed\xa0\x80 surrogate\n",
]


def test_reactor_garbage_is_answered_per_request_and_others_are_unaffected() -> None:
    with on_reactor(AsyncDigest, max_line_length=1024) as (server, r, _clock):
        noisy = client(server.server_address)
        calm = client(server.server_address)
        noisy_reply, calm_reply = Reply(noisy), Reply(calm)
        for i, junk in enumerate(GARBAGE):
            send_pumping(r, noisy, junk)
            send_pumping(r, calm, b"calm %d\n" % i)
            pump(r, lambda: calm_reply.has(answer(b"calm %d\n" % i)))
        send_pumping(r, noisy, b"\xfflast line, no newline")
        noisy.shutdown(socket.SHUT_WR)  # EOF: the unterminated rest is one more request
        expected = b"".join(answer(junk) for junk in GARBAGE) + answer(
            b"\xfflast line, no newline")
        pump(r, noisy_reply.ended)
        assert bytes(noisy_reply.data) == expected
        assert bytes(calm_reply.data) == b"".join(answer(b"calm %d\n" % i)
                                                  for i in range(len(GARBAGE)))
        noisy.close()
        calm.close()


@pytest.mark.threads
@pytest.mark.parametrize("base,handler", [
    (servers.TCPServer, ClassicDigest),
    (servers.ThreadingTCPServer, ClassicDigest),
    (servers.ThreadingTCPServer, AsyncDigest),
], ids=["sync", "threading-classic", "threading-async"])
def test_garbage_is_answered_per_request(base: type, handler: type) -> None:
    with in_thread(handler, base) as server:
        with client(server.server_address) as sock:
            sock.sendall(b"".join(GARBAGE) + b"\x00tail")
            sock.shutdown(socket.SHUT_WR)
            data = bytearray()
            while chunk := sock.recv(65536):
                data += chunk
        assert bytes(data) == b"".join(answer(junk) for junk in GARBAGE) + answer(b"\x00tail")
        with client(server.server_address) as sock:  # the next client is served as usual
            sock.sendall(b"after\n")
            assert sock.recv(100) == answer(b"after\n")


class ReadAheadDigest(ClassicDigest):
    def handle(self) -> None:
        self.wfile.write(answer(self.rfile.readline()))


@pytest.mark.slow
def test_read_ahead_passes_garbage_through_byte_for_byte() -> None:
    with on_reactor(ReadAheadDigest, read_ahead=b"\n") as (server, r, _clock):
        for junk in GARBAGE:
            with client(server.server_address) as sock:
                for byte in junk:  # dribbled: read-ahead holds it until the newline
                    send_pumping(r, sock, bytes([byte]))
                    r.run_once(0)
                reply = Reply(sock)
                pump(r, reply.ended)
                assert bytes(reply.data) == answer(junk)
