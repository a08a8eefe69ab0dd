"""The socketserver documentation's first example, on this library: a synchronous TCP server
that answers each connection with the client's message in capitals.

    python examples/stdlib_tcp.py --port 9999            # serve until Ctrl-C
    python examples/stdlib_tcp.py --client --port 9999 hello there
    python examples/stdlib_tcp.py --self-test            # server + two clients, then exit

The only change to code written for the standard library is the import line.
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


class UpperCaseHandler(socketserver.BaseRequestHandler):
    """One request per connection: read what the client sent, answer it upper-cased.

    `self.request` is the connected socket; a single recv() is enough for a short message.
    """

    def handle(self) -> None:
        data = self.request.recv(1024).strip()
        print(f"{self.client_address[0]} wrote: {data.decode(errors='replace')}", flush=True)
        self.request.sendall(data.upper())


def client(host: str, port: int, message: str) -> str:
    """Send `message`, return the server's answer (the server closes after answering)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(message.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(1024):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def self_test(host: str) -> int:
    with socketserver.TCPServer((host, 0), UpperCaseHandler) as server:
        port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            for message in ("hello world", "socketserver on a reactor"):
                print(f"sent: {message}")
                print(f"received: {client(host, port, message)}", flush=True)
        finally:
            server.shutdown()
            thread.join()
    print("self-test passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--client", action="store_true", help="act as the client")
    parser.add_argument("--self-test", action="store_true")
    parser.add_argument("message", nargs="*", default=["hello world"])
    args = parser.parse_args(argv)
    if args.self_test:
        return self_test(args.host)
    if args.client:
        print(client(args.host, args.port, " ".join(args.message)))
        return 0
    with socketserver.TCPServer((args.host, args.port), UpperCaseHandler) as server:
        host, port = server.server_address[:2]
        print(f"serving on {host}:{port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
