"""Four services, one process, one thread, one reactor.

    python examples/multiserver.py            # then, in another terminal:
    nc 127.0.0.1 8007                         # line service: type lines, get them upper-cased
    nc -u 127.0.0.1 8007                      # the same over UDP, one datagram at a time
    nc -U /tmp/multiserver-$(id -u).sock      # admin: type "table", "stats", "help"
    curl http://127.0.0.1:8080/               # status page (HTML; /status.txt for plain text)

Every handler is `async def`, so each request is a task in the reactor's request table and a
slow client never holds up the others. Ctrl-C or SIGTERM stops it gracefully: no new
connections, requests in flight finish (up to --shutdown-timeout seconds), the Unix socket file
is removed, and the exit status is 0. Ports and paths are flags; port 0 picks a free port (the
real addresses are printed at start, which is how the tests find them).

With `--workers N` a `servers.Supervisor` serves the same four services from N processes, each
with its own reactor (and its own table and counters: the pages and `stats` say which pid
answered); SIGHUP replaces the workers without refusing a connection.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import html
import os
import signal
import sys
import tempfile
import time
from typing import Sequence, Sized, cast

import reactor
import servers
from servers.builtin import format_request_table, server_url


# --------------------------------------------------------------------------- shared state
@dataclasses.dataclass
class Counters:
    """What the services have done since start; updated by the handlers, shown by the admin
    command and the status page. Only the reactor's thread touches it: no lock needed."""

    started: float = dataclasses.field(default_factory=time.monotonic)
    served: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def report(self) -> str:
        lines = [f"pid {os.getpid()}, uptime {time.monotonic() - self.started:.0f}s"]
        lines += [f"{name}: {count}" for name, count in sorted(self.served.items())]
        return "\n".join(lines) + "\n"


class Service:
    """Mixin for this program's servers: a display name and the shared counters (set by
    `main()`), which handlers reach as `service(self).counters`."""

    name = ""
    counters: Counters
    supervisor_pid: int | None = None  # with --workers: the process that stops everything
    shutdown_timeout: float  # servers.BaseServer's, declared here for the type checker


class LineServer(Service, servers.TCPServer):
    name = "line service"
    allow_reuse_address = True


class DatagramServer(Service, servers.UDPServer):
    name = "datagram service"


class AdminServer(Service, servers.UnixStreamServer):
    name = "admin"
    remove_stale_socket = True  # a file left by a killed run (nobody listening) is replaced


class StatusPageServer(Service, servers.TCPServer):
    name = "status page"
    allow_reuse_address = True


def service(handler: servers.BaseRequestHandler) -> Service:
    return cast(Service, handler.server)


# --------------------------------------------------------------------------- handlers
class UpperLines(servers.StreamRequestHandler):
    """TCP: every line comes back upper-cased. Idle clients are dropped after 5 minutes."""

    timeout = 300.0

    async def handle(self) -> None:
        async for line in self.rfile:
            self.wfile.write(line.upper())
            await self.wfile.drain()
            service(self).counters.served["lines"] += 1


class UpperDatagrams(servers.DatagramRequestHandler):
    """UDP: every datagram comes back upper-cased."""

    async def handle(self) -> None:
        self.wfile.write(self.packet.upper())
        service(self).counters.served["datagrams"] += 1


ADMIN_HELP = """\
table     the live request table (also: an empty line)
stats     what each service has done since start
shutdown  stop the whole program gracefully
quit      close this connection
help      this list
"""


class Admin(servers.StreamRequestHandler):
    """Unix socket: one command per line (see ADMIN_HELP)."""

    async def handle(self) -> None:
        async for line in self.rfile:
            command = line.strip().decode("ascii", "replace").lower()
            service(self).counters.served["admin commands"] += 1
            if command in ("", "table", "tables"):
                self.wfile.write(format_request_table(self.reactor.requests).encode())
            elif command == "stats":
                self.wfile.write(service(self).counters.report().encode())
            elif command == "shutdown":
                self.wfile.write(b"shutting down\n")
                supervisor = service(self).supervisor_pid
                if supervisor is not None:  # a worker: the supervisor stops them all
                    os.kill(supervisor, signal.SIGTERM)
                else:  # from inside a handler: returns at once, then drains
                    self.reactor.shutdown()
                return
            elif command == "quit":
                return
            elif command == "help":
                self.wfile.write(ADMIN_HELP.encode())
            else:
                self.wfile.write(f"unknown command {command!r}\n{ADMIN_HELP}".encode())
            await self.wfile.drain()


class StatusPage(servers.StreamRequestHandler):
    """A minimal HTTP/1.1 server: `GET /` (HTML) and `GET /status.txt` (text), with
    keep-alive. Idle connections are closed after 15 s; headers are bounded."""

    timeout = 15.0
    max_line_length = 8192
    max_header_lines = 100

    async def handle(self) -> None:
        while True:
            request_line = await self.rfile.readline()
            if not request_line.strip():
                return  # the client closed (or sent a stray blank line: close, as many do)
            headers = await self.read_headers()
            parts = request_line.decode("latin-1").split()
            if headers is None or len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                self.respond(400, "text/plain", b"bad request\n", keep_alive=False)
                return
            method, target, version = parts
            keep_alive = (version == "HTTP/1.1"
                          and headers.get("connection", "").lower() != "close")
            status, content_type, body = self.page(method, target)
            service(self).counters.served["http requests"] += 1
            self.respond(status, content_type, body, keep_alive, head_only=method == "HEAD")
            await self.wfile.drain()
            if not keep_alive:
                return

    async def read_headers(self) -> dict[str, str] | None:
        headers: dict[str, str] = {}
        for _ in range(self.max_header_lines):
            line = await self.rfile.readline()
            if line in (b"\r\n", b"\n"):
                return headers
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon:
                return None
            headers[name.strip().lower()] = value.strip()
        return None

    def page(self, method: str, target: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n"
        table = format_request_table(self.reactor.requests)
        counters = service(self).counters.report()
        if target == "/status.txt":
            return 200, "text/plain; charset=utf-8", (counters + "\n" + table).encode()
        if target != "/":
            return 404, "text/plain", b"not found; try / or /status.txt\n"
        body = (f"<!doctype html>\n<title>multiserver status</title>\n"
                f"<h1>multiserver (pid {os.getpid()}): {in_flight(self.reactor.requests)}</h1>\n"
                f"<pre>{html.escape(counters)}</pre>\n<h2>Request table</h2>\n"
                f"<pre>{html.escape(table)}</pre>\n")
        return 200, "text/html; charset=utf-8", body.encode()

    def respond(self, status: int, content_type: str, body: bytes, keep_alive: bool,
                head_only: bool = False) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found",
                  405: "Method Not Allowed"}[status]
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
        self.wfile.write(head.encode("latin-1") + (b"" if head_only else body))


# --------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address of the TCP, UDP and "
                        "HTTP services (default 127.0.0.1, this machine only)")
    parser.add_argument("--tcp-port", type=int, default=8007, help="line service (8007)")
    parser.add_argument("--udp-port", type=int, default=8007, help="datagram service (8007)")
    parser.add_argument("--http-port", type=int, default=8080, help="status page (8080)")
    parser.add_argument("--admin-socket", default=os.path.join(
        tempfile.gettempdir(), f"multiserver-{os.getuid()}.sock"),
        help="path of the admin Unix socket (default %(default)s)")
    parser.add_argument("--shutdown-timeout", type=float, default=5.0,
                        help="seconds a graceful stop waits for requests in flight (5)")
    parser.add_argument("--workers", type=int, default=0,
                        help="serve from this many worker processes (default 0: this one)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    counters = Counters()
    with contextlib.ExitStack() as stack:
        try:
            made: list[Service] = [
                stack.enter_context(LineServer((args.host, args.tcp_port), UpperLines)),
                stack.enter_context(DatagramServer((args.host, args.udp_port), UpperDatagrams)),
                stack.enter_context(AdminServer(args.admin_socket, Admin)),
                stack.enter_context(StatusPageServer((args.host, args.http_port), StatusPage)),
            ]
        except OSError as exc:
            print(f"cannot listen: {exc}; choose other ports with --tcp-port, --udp-port, "
                  "--http-port (0 picks free ones) or another --admin-socket", file=sys.stderr)
            return 1
        for server in made:
            server.counters = counters
            server.shutdown_timeout = args.shutdown_timeout
            print(f"{server.name:<17} {describe(server)}")
        if args.workers:
            serve_with_workers(made, args.workers)
        else:
            serve_in_this_process(made)
    print("stopped", flush=True)  # ExitStack closed the servers: the socket file is gone
    return 0


def serve_in_this_process(made: list[Service]) -> None:
    with reactor.Reactor() as loop:
        for server in made:
            loop.register(server)
        print("one process, one thread: Ctrl-C (or SIGTERM) to stop", flush=True)

        def stop(signum: int) -> None:
            print(f"stopping ({signal.Signals(signum).name}): draining "
                  f"{in_flight(loop.requests)}", flush=True)
            loop.shutdown()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop, signum)
        loop.serve_forever()


def serve_with_workers(made: list[Service], workers: int) -> None:
    for server in made:
        server.supervisor_pid = os.getpid()
    print(f"{workers} worker processes (pid {os.getpid()} supervises): Ctrl-C (or SIGTERM) "
          "to stop, SIGHUP to replace the workers", flush=True)
    servers.Supervisor(made, workers).serve_forever()  # handles the signals itself


def in_flight(requests: Sized) -> str:
    """`1 request in flight`, `2 requests in flight`."""
    count = len(requests)
    return f"{count} request{'' if count == 1 else 's'} in flight"


def describe(server: Service) -> str:
    url = server_url(server)
    if isinstance(server, StatusPageServer):
        url = "http" + url[len("tcp"):] + "/"
        return f"{url:<32} try: curl {url}"
    if url.startswith("unix:"):
        return f"{url:<32} try: nc -U {url[len('unix:'):]}   (then type: table)"
    host, _, port = url.split("://")[1].rpartition(":")
    flag = "-u " if url.startswith("udp") else ""
    return f"{url:<32} try: nc {flag}{host.strip('[]')} {port}"


if __name__ == "__main__":
    sys.exit(main())
