"""The socketserver documentation's stream variant, on this library: the same upper-casing TCP
server, written with StreamRequestHandler's file objects instead of raw socket calls.

    python examples/stdlib_tcp_streams.py --port 9999            # serve until Ctrl-C
    python examples/stdlib_tcp_streams.py --client --port 9999 hello there
    python examples/stdlib_tcp_streams.py --self-test            # server + clients, then exit

`rfile` reads whole lines however the bytes arrive; `wfile.write()` sends at once.
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


class UpperCaseLineHandler(socketserver.StreamRequestHandler):
    """Read one line from the client and answer it upper-cased, newline included."""

    def handle(self) -> None:
        line = self.rfile.readline().strip()
        print(f"{self.client_address[0]} wrote: {line.decode(errors='replace')}", flush=True)
        self.wfile.write(line.upper() + b"\n")


def client(host: str, port: int, message: str) -> str:
    """Send one line, return the line that comes back."""
    with socket.create_connection((host, port), timeout=10) as sock:
        with sock.makefile("rwb") as stream:
            stream.write(message.encode() + b"\n")
            stream.flush()
            return stream.readline().decode().rstrip("\n")


def self_test(host: str) -> int:
    with socketserver.TCPServer((host, 0), UpperCaseLineHandler) as server:
        port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            for message in ("hello world", "lines via rfile and wfile"):
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
    with socketserver.TCPServer((args.host, args.port), UpperCaseLineHandler) as server:
        host, port = server.server_address[:2]
        print(f"serving on {host}:{port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
