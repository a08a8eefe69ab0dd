"""Without threads: in a fresh interpreter where starting a thread fails, the reactor, the
handlers and the servers still import and serve, and shutdown comes through a signal."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(r'''
    import _thread
    import threading

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise RuntimeError("this process must not start threads")

    threading.Thread.start = refuse
    for module, name in ((_thread, "start_new_thread"), (_thread, "start_joinable_thread"),
                         (_thread, "start_new"), (threading, "_start_new_thread"),
                         (threading, "_start_joinable_thread")):
        if hasattr(module, name):
            setattr(module, name, refuse)

    try:  # the patch works: a thread cannot start here
        threading.Thread(target=lambda: None).start()
    except RuntimeError:
        attempts.clear()
    else:
        raise SystemExit("threads could still start")

    import os
    import signal
    import socket

    import handlers
    import reactor
    import servers

    def threads():
        return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1

    assert threading.active_count() == 1 and threads() == 1, "a thread started at import"
    seen_counts = set()

    class Upper(handlers.StreamRequestHandler):
        timeout = 10

        async def handle(self):
            seen_counts.add((threading.active_count(), threads()))
            async for line in self.rfile:
                self.wfile.write(line.upper())
                await self.wfile.drain()

    class Reverse(handlers.DatagramRequestHandler):
        async def handle(self):
            seen_counts.add((threading.active_count(), threads()))
            self.wfile.write(self.rfile.read()[::-1])

    loop = reactor.Reactor()
    tcp = servers.TCPServer(("127.0.0.1", 0), Upper)
    udp = servers.UDPServer(("127.0.0.1", 0), Reverse)
    loop.register(tcp)
    loop.register(udp)
    loop.add_signal_handler(signal.SIGTERM, loop.shutdown)

    replies = []
    clients_left = [4]

    def client_done():
        clients_left[0] -= 1
        if not clients_left[0]:
            os.kill(os.getpid(), signal.SIGTERM)  # shutdown arrives through the loop

    async def tcp_client(n):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            try:
                sock.connect(tcp.server_address)
            except BlockingIOError:
                await reactor.wait(reactor.WaitWritable(sock.fileno(), 10))
            for i in range(3):
                sock.send(b"tcp %d.%d\n" % (n, i))
                reply = b""
                while not reply.endswith(b"\n"):
                    await reactor.wait(reactor.WaitReadable(sock.fileno(), 10))
                    chunk = sock.recv(100)
                    assert chunk, "the server closed early"
                    reply += chunk
                replies.append(reply.decode().strip())
        finally:
            loop.forget(sock.fileno())
            sock.close()
            client_done()

    async def udp_client(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.sendto(b"udp %d" % n, udp.server_address)
            await reactor.wait(reactor.WaitReadable(sock.fileno(), 10))
            replies.append(sock.recv(100).decode())
        finally:
            loop.forget(sock.fileno())
            sock.close()
            client_done()

    for n in range(2):
        loop.spawn(tcp_client(n))
        loop.spawn(udp_client(n))
    try:
        loop.serve_forever(poll_interval=5)
    finally:
        tcp.server_close()
        udp.server_close()
        loop.close()

    assert attempts == [], attempts
    assert seen_counts == {(1, 1)}, seen_counts
    assert threading.active_count() == 1 and threads() == 1
    for reply in sorted(replies):
        print(reply)
''')


def test_reactor_handlers_and_servers_work_where_threads_cannot_start() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    done = subprocess.run([sys.executable, "-X", "dev", "-W", "error", "-c", SCRIPT],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=25)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == sorted(
        ["TCP 0.0", "TCP 0.1", "TCP 0.2", "TCP 1.0", "TCP 1.1", "TCP 1.2", "0 pdu", "1 pdu"]
    ), done.stderr
