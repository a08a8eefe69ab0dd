"""The socketserver documentation's ThreadingMixIn example, on this library: every connection
is served by a thread of its own, and the answer names that thread.

    python examples/stdlib_threaded.py --port 9999       # serve until Ctrl-C
    python examples/stdlib_threaded.py --client --port 9999 hello there
    python examples/stdlib_threaded.py --self-test       # server + three clients, then exit

The server itself runs in a thread too (the documentation's layout): the main thread is free
to act as the client.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
from pathlib import Path

try:
    import servers as socketserver
except ImportError:  # run from a checkout without installing: use the repository's copy
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import servers as socketserver


class ThreadNamingHandler(socketserver.BaseRequestHandler):
    """Answer with the name of the thread serving this connection and what was received."""

    def handle(self) -> None:
        data = self.request.recv(1024).decode(errors="replace")
        name = threading.current_thread().name
        self.request.sendall(f"{name}: {data}".encode())


class ThreadedTCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A TCP server that starts one thread per connection (ThreadingTCPServer is the same)."""


def client(host: str, port: int, message: str) -> str:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(message.encode())
        return sock.recv(1024).decode()


def self_test(host: str) -> int:
    with ThreadedTCPServer((host, 0), ThreadNamingHandler) as server:
        port = server.server_address[1]
        # The serving loop in a thread of its own; daemon so that it can never keep the
        # process alive on its own.
        server_thread = threading.Thread(target=server.serve_forever, daemon=True)
        server_thread.start()
        print(f"server loop running in thread: {server_thread.name}")
        try:
            for message in ("Hello World 1", "Hello World 2", "Hello World 3"):
                print(f"received: {client(host, port, message)}", flush=True)
        finally:
            server.shutdown()
            server_thread.join()
    print("self-test passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--client", action="store_true", help="act as the client")
    parser.add_argument("--self-test", action="store_true")
    parser.add_argument("message", nargs="*", default=["Hello World"])
    args = parser.parse_args(argv)
    if args.self_test:
        return self_test(args.host)
    if args.client:
        print(client(args.host, args.port, " ".join(args.message)))
        return 0
    with ThreadedTCPServer((args.host, args.port), ThreadNamingHandler) as server:
        host, port = server.server_address[:2]
        print(f"serving on {host}:{port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
