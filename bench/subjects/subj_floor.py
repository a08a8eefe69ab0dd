"""The floor reference: a bare ``selectors`` loop with minimal Python.

Non-blocking sockets; each readable socket gets one ``recv`` and its bytes
are sent straight back (a byte-stream echo is a valid line echo).  Unsent
bytes wait for EVENT_WRITE.  ``--proto http`` answers every complete request
head with the fixed hello response; UDP does ``recvfrom``/``sendto``.
"""

from __future__ import annotations

import selectors
import signal
import socket

from subj_common import (
    BACKLOG,
    HTTP_RESPONSE,
    Address,
    announce,
    find_header_end,
    remove_stale_unix,
    unsupported,
    wants_close,
)


class Stop(Exception):
    """Raised from the SIGTERM handler to leave the select loop."""


def _raise_stop(signum: int, frame: object | None) -> None:
    raise Stop()


def serve_stream(lsock: socket.socket, http: bool) -> None:
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    unsent: dict[socket.socket, bytes] = {}
    partial: dict[socket.socket, bytes] = {}
    tcp = lsock.family != socket.AF_UNIX
    READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE

    def drop(sock: socket.socket) -> None:
        sel.unregister(sock)
        unsent.pop(sock, None)
        partial.pop(sock, None)
        sock.close()

    while True:
        for key, mask in sel.select():
            sock = key.fileobj
            if key.data is None:  # listening socket
                while True:
                    try:
                        conn, _ = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    conn.setblocking(False)
                    if tcp:
                        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(conn, READ, True)
                continue
            assert isinstance(sock, socket.socket)
            if mask & READ:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    data = None
                except OSError:
                    drop(sock)
                    continue
                if data == b"":
                    drop(sock)
                    continue
                if data:
                    close = False
                    if http:
                        buf = partial.pop(sock, b"") + data
                        pos = count = 0
                        while True:
                            end = find_header_end(buf, pos)
                            if end < 0:
                                break
                            count += 1
                            close = wants_close(buf[pos:end])
                            pos = end
                            if close:
                                break
                        if pos < len(buf):
                            partial[sock] = buf[pos:]
                        data = HTTP_RESPONSE * count
                    if sock in unsent:
                        unsent[sock] += data
                    elif data:
                        try:
                            sent = sock.send(data)
                        except BlockingIOError:
                            sent = 0
                        except OSError:
                            drop(sock)
                            continue
                        if sent < len(data):
                            unsent[sock] = data[sent:]
                            sel.modify(sock, READ | WRITE, True)
                    if close and sock not in unsent:
                        drop(sock)
                        continue
            if mask & WRITE and sock in unsent:
                try:
                    sent = sock.send(unsent[sock])
                except BlockingIOError:
                    continue
                except OSError:
                    drop(sock)
                    continue
                rest = unsent[sock][sent:]
                if rest:
                    unsent[sock] = rest
                else:
                    del unsent[sock]
                    sel.modify(sock, READ, True)


def serve_udp(sock: socket.socket) -> None:
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    while True:
        sel.select()
        while True:
            try:
                data, peer = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            try:
                sock.sendto(data, peer)
            except BlockingIOError:
                pass  # dropped; the client re-sends after its timeout


def serve(kind: str, addr: Address, proto: str, tls: object = None) -> None:
    if (addr.transport == "udp" and proto != "echo") or tls is not None:
        unsupported(kind, addr, proto, tls)
    remove_stale_unix(addr)
    stype = socket.SOCK_DGRAM if addr.transport == "udp" else socket.SOCK_STREAM
    sock = socket.socket(addr.family, stype)
    if addr.transport != "unix":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr.sockaddr)
    if stype == socket.SOCK_STREAM:
        sock.listen(BACKLOG)
    sock.setblocking(False)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    announce(addr, sock.getsockname())
    try:
        if addr.transport == "udp":
            serve_udp(sock)
        else:
            serve_stream(sock, http=proto == "http")
    except Stop:
        pass
    finally:
        sock.close()
        remove_stale_unix(addr)
