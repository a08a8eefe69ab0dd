"""A ForkingMixIn server on this library: every connection is served by a child process, and
the answer names that child's process id. (POSIX only: it needs os.fork.)

    python examples/stdlib_forking.py --port 9999        # serve until Ctrl-C
    python examples/stdlib_forking.py --client --port 9999 hello there
    python examples/stdlib_forking.py --self-test        # server + a client process, then exit

Forking a process that runs several threads is unsafe, so here the server runs in the main
thread and the self-test's client is a separate process (this script with --client).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

try:
    import servers as socketserver
except ImportError:  # run from a checkout without installing: use the repository's copy
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import servers as socketserver


class ProcessNamingHandler(socketserver.StreamRequestHandler):
    """Read one line and answer with the serving process's id and the line."""

    def handle(self) -> None:
        line = self.rfile.readline().decode(errors="replace").strip()
        self.wfile.write(f"pid {os.getpid()}: {line}\n".encode())


def client(host: str, port: int, messages: list[str]) -> None:
    """One connection per message; print each answer."""
    for message in messages:
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(message.encode() + b"\n")
            with sock.makefile("rb") as reader:
                print(f"received: {reader.readline().decode().strip()}", flush=True)


def self_test(host: str) -> int:
    with socketserver.ForkingTCPServer((host, 0), ProcessNamingHandler) as server:
        port = server.server_address[1]
        print(f"server process: pid {os.getpid()}", flush=True)
        messages = ["Hello World 1", "Hello World 2", "Hello World 3"]
        child = subprocess.Popen([sys.executable, __file__, "--client", "--host", host,
                                  "--port", str(port), *messages])
        # Serve one request per handle_request() call until the client process is done;
        # the short timeout lets the loop notice when it has finished.
        server.timeout = 0.1
        while child.poll() is None:
            server.handle_request()
        if child.returncode != 0:
            return 1
    # server_close() (by `with`) waited for every child: none is left behind.
    print(f"children left: {len(server.active_children or ())}")
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
    if not hasattr(os, "fork"):
        print("this example needs os.fork (POSIX)", file=sys.stderr)
        return 2
    if args.self_test:
        return self_test(args.host)
    if args.client:
        client(args.host, args.port, args.message)
        return 0
    with socketserver.ForkingTCPServer((args.host, args.port), ProcessNamingHandler) as server:
        host, port = server.server_address[:2]
        print(f"serving on {host}:{port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
