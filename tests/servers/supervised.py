"""A supervised program for tests/servers/test_supervisor.py (run as a script, not collected).

    python supervised.py --bind tcp --bind udp --bind unix:PATH --workers 2 [options]

Every handler answers with the pid of the worker that served it: a stream request is one line
`LINE` answered with `pid PID LINE` (the line `slow` is first acknowledged with `waiting`,
and answered only once a second line arrives; `stubborn` is acknowledged and then never
answered: the handler swallows its cancellation); a datagram is answered `pid PID DATA`.
Everything goes to stderr, line by line: `listening URL` per server, then the supervisor's
and the workers' log lines, `pids [...]` on SIGUSR1, `shutdown returned` when SIGUSR2 made
a thread call shutdown(), and `returned` when serve_forever() returns. The test reads it with
a bound and never sleeps.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any, Sequence

import reactor
import servers
from servers.builtin import server_url


class Who(servers.StreamRequestHandler):
    async def handle(self) -> None:
        line = await self.rfile.readline()
        if line in (b"slow\n", b"stubborn\n"):
            self.wfile.write(b"waiting\n")
            await self.wfile.drain()
        if line == b"slow\n":
            await self.rfile.readline()
        while line == b"stubborn\n":
            try:
                await reactor.sleep(60)
            except reactor.Cancelled:
                pass  # a bug on purpose: only SIGKILL ends this worker now
        self.wfile.write(b"pid %d %s" % (os.getpid(), line))


class ClassicWho(servers.StreamRequestHandler):
    """In sync mode it runs on the worker's loop: a client that sends nothing blocks it."""

    def handle(self) -> None:
        line = self.rfile.readline()
        self.wfile.write(b"pid %d %s" % (os.getpid(), line))


class DatagramWho(servers.DatagramRequestHandler):
    async def handle(self) -> None:
        self.wfile.write(b"pid %d %s" % (os.getpid(), self.packet))


class ReusePortTCP(servers.TCPServer):
    allow_reuse_port = True


class ReusePortUDP(servers.UDPServer):
    allow_reuse_port = True


def make_server(spec: str, args: argparse.Namespace) -> Any:
    kind, _, path = spec.partition(":")
    stream = ClassicWho if args.classic else Who
    if kind == "tcp":
        cls = ReusePortTCP if args.reuse_port else {
            "plain": servers.TCPServer, "threading": servers.ThreadingTCPServer,
            "forking": servers.ForkingTCPServer}[args.mode]
        return cls(("127.0.0.1", 0), stream)
    if kind == "udp":
        cls = ReusePortUDP if args.reuse_port else servers.UDPServer
        return cls(("127.0.0.1", 0), DatagramWho)
    if kind == "unix":
        return servers.UnixStreamServer(path, stream)
    if kind == "unixgram":
        return servers.UnixDatagramServer(path, DatagramWho)
    raise SystemExit(f"unknown --bind {spec}")


def say(line: str) -> None:
    """One raw write per line: lines from threads and signal handlers never interleave."""
    os.write(2, line.encode() + b"\n")


def fail_if(path: str) -> Any:
    def setup(servers: Sequence[Any]) -> None:
        if os.path.exists(path):
            raise RuntimeError("cannot open the database (on purpose)")
    return setup


def hang(servers: Sequence[Any]) -> None:
    threading.Event().wait()  # a start that never ends: a database that never answers


def shutdown_from_a_thread(supervisor: servers.Supervisor) -> None:
    def stop() -> None:
        supervisor.shutdown()  # blocks until every worker has stopped
        say("shutdown returned")
    threading.Thread(target=stop).start()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", action="append", default=[])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-timeout", type=float, default=30.0)
    parser.add_argument("--max-requests", type=int)
    parser.add_argument("--max-requests-jitter", type=int, default=0)
    parser.add_argument("--mode", choices=("plain", "threading", "forking"), default="plain")
    parser.add_argument("--shutdown-timeout", type=float)
    parser.add_argument("--reuse-port", action="store_true")
    parser.add_argument("--classic", action="store_true", help="classic stream handler")
    parser.add_argument("--max-start-failures", type=int, default=5)
    parser.add_argument("--max-connections", type=int)
    parser.add_argument("--hang-start", action="store_true")
    parser.add_argument("--fail-if", metavar="PATH", help="workers fail to start while PATH "
                        "exists")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(message)s")
    made = [make_server(spec, args) for spec in args.bind]
    for server in made:
        if args.max_connections is not None:
            server.max_connections = args.max_connections
    supervisor = servers.Supervisor(
        made, args.workers, reuse_port=args.reuse_port, worker_timeout=args.worker_timeout,
        max_requests=args.max_requests, max_requests_jitter=args.max_requests_jitter,
        shutdown_timeout=args.shutdown_timeout,
        worker_setup=hang if args.hang_start else fail_if(args.fail_if) if args.fail_if else None,
        max_start_failures=args.max_start_failures)
    signal.signal(signal.SIGUSR1, lambda *_: say(f"pids {list(supervisor.pids)}"))
    signal.signal(signal.SIGUSR2, lambda *_: shutdown_from_a_thread(supervisor))
    for server in made:
        say(f"listening {server_url(server)}")
    try:
        supervisor.serve_forever()
    except servers.WorkerStartError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        for server in made:
            server.server_close()
    say(f"returned forced_by={supervisor.forced_by}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
