"""The socketserver documentation's UDP example, on this library: each datagram is a request,
answered with a datagram holding the same text in capitals.

    python examples/stdlib_udp.py --port 9999            # serve until Ctrl-C
    python examples/stdlib_udp.py --client --port 9999 hello there
    python examples/stdlib_udp.py --self-test            # server + two clients, then exit

For a UDP server `self.request` is a pair: the datagram's bytes and the server's socket, which
the handler uses to reply (and must not close: every request shares it).
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


class UpperCaseDatagramHandler(socketserver.BaseRequestHandler):
    """Answer each datagram with its text upper-cased."""

    def handle(self) -> None:
        data, sock = self.request
        text = data.strip()
        print(f"{self.client_address[0]} wrote: {text.decode(errors='replace')}", flush=True)
        sock.sendto(text.upper(), self.client_address)


def client(host: str, port: int, message: str) -> str:
    """Send one datagram and wait (at most 10 s) for the answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(message.encode() + b"\n", (host, port))
        return sock.recv(1024).decode()


def self_test(host: str) -> int:
    with socketserver.UDPServer((host, 0), UpperCaseDatagramHandler) as server:
        port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            for message in ("hello world", "one datagram each"):
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
    with socketserver.UDPServer((args.host, args.port), UpperCaseDatagramHandler) as server:
        host, port = server.server_address[:2]
        print(f"serving on {host}:{port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
