#!/usr/bin/env python3
"""Soak test: tens of thousands of mixed good and hostile connections against one server
process, then check that it is back to its baseline and that every good request got its
correct answer.

    python bench/soak.py [--seconds 60] [--connections 20000] [--mode reactor|threading]

Not part of the test suite: loopback only, bounded in time (the load phase ends after
`--connections` connections or `--seconds`, whichever comes first; then at most `--settle`
seconds for the server to return to baseline). Exit status 0 when every check passes, 1
otherwise; a summary table is printed either way.

The server is a subprocess running this file with `--serve`: an `async def handle()` handler
on a plain `servers.TCPServer` (reactor mode) or a `servers.ThreadingTCPServer` (threading
mode), with small limits so that hostile clients meet them quickly, and an admin server on a
Unix socket, registered on the same reactor, that answers `status` with the request table
size and the server's own counters (log records, `handle_error()` calls by exception type;
the server's stderr goes to a file and must stay empty). Descriptors, threads, children and
RSS are read from /proc/<pid> by the driver; the baseline is taken after a warm-up with the
same mix (`--warmup`), so that the allocator's high-water mark is part of it.

The driver (this process) runs the clients with asyncio, at most `--concurrency` at once:

    good        1-5 lines "E <payload>" (some cut at random byte boundaries, some pipelined);
                each reply must be the payload reversed; half reuse the connection
    garbage     random bytes, NULs, invalid UTF-8, as lines: each gets "? <length>", then a
                good line must still be answered correctly on the same connection
    long-line   more than max_line_length bytes without a newline: the server must close
    slowloris   "E " then a byte every 0.25 s, never a newline: cut off at request_timeout
    never-read  asks for 8 MiB and reads nothing: dropped after write_timeout (short of
                the whole reply)
    resetter    asks for 1 MiB, reads a little, then resets (SO_LINGER 0)
    connect     connects and closes at once (half with a reset)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Server limits (small, so that hostile clients meet them within the run)
REQUEST_TIMEOUT = 1.0
IDLE_TIMEOUT = 3.0
WRITE_TIMEOUT = 1.0
MAX_LINE_LENGTH = 4096
MAX_BUFFER_SIZE = 16384
MAX_THREADS = 512

KINDS = {  # kind: weight
    "good": 50, "garbage": 8, "long-line": 6, "slowloris": 3, "never-read": 3,
    "resetter": 10, "connect": 20,
}


# =============================================================================== server side
def _traced() -> Any:
    """With SOAK_TRACEMALLOC=1 in the server's environment: traced memory and the top
    allocation sites (a diagnostic for RSS growth)."""
    import tracemalloc
    if not tracemalloc.is_tracing():
        return None
    current, peak = tracemalloc.get_traced_memory()
    top = tracemalloc.take_snapshot().statistics("lineno")[:8]
    return {"current": current, "peak": peak, "top": [str(stat) for stat in top]}


def _release_free_memory() -> int:
    """Collect cyclic garbage and hand free heap pages back to the OS (glibc's malloc_trim),
    so that RSS is compared in the same state before and after the load: what remains is
    memory still in use, not the allocator's fragmentation."""
    import ctypes
    import ctypes.util
    import gc
    collected = gc.collect()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc
    return collected


def serve(args: argparse.Namespace) -> int:
    sys.path.insert(0, ROOT)
    if os.environ.get("SOAK_TRACEMALLOC"):
        import tracemalloc
        tracemalloc.start(4)
    import logging
    import threading

    import reactor
    import servers

    counts: collections.Counter[str] = collections.Counter()

    class Counting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            counts[f"log-{record.levelname.lower()}"] += 1

    for name in ("servers", "reactor"):
        log = logging.getLogger(name)
        log.addHandler(Counting())
        log.setLevel(logging.INFO)
        log.propagate = False

    class SoakHandler(servers.StreamRequestHandler):
        request_timeout = REQUEST_TIMEOUT
        idle_timeout = IDLE_TIMEOUT
        write_timeout = WRITE_TIMEOUT
        max_line_length = MAX_LINE_LENGTH
        max_buffer_size = MAX_BUFFER_SIZE

        async def handle(self) -> None:
            async for line in self.rfile:
                body = line.rstrip(b"\n")
                if body.startswith(b"E "):
                    self.wfile.write(body[2:][::-1] + b"\n")
                elif body.startswith(b"B ") and body[2:].isdigit():
                    left = min(int(body[2:]), 64 * 1024 * 1024)
                    block = b"b" * 65536
                    while left > 0:
                        self.wfile.write(block[:left])
                        left -= len(block)
                        await self.wfile.drain()
                    self.wfile.write(b"\n")
                else:
                    self.wfile.write(b"? %d\n" % len(body))
                await self.wfile.drain()

    class Status(servers.StreamRequestHandler):
        async def handle(self) -> None:
            command = await self.rfile.readline()
            if command.strip() == b"trim":
                counts["gc-collected"] = _release_free_memory()
            table = [entry for entry in loop.requests if entry.server is main]
            self.wfile.write(json.dumps({
                "requests": len(table), "stages": collections.Counter(
                    entry.state for entry in table),
                "threads": threading.active_count(),
                "active_children": len(getattr(main, "active_children", None) or ()),
                "counts": counts,
                "traced": _traced(),
            }).encode() + b"\n")

    class Counted:
        """handle_error() counts instead of printing (in threading mode, timeouts and resets
        of async handlers reach it, as in the standard library)."""

        def handle_error(self, request: Any, client_address: Any) -> None:
            counts[f"handle_error-{type(sys.exc_info()[1]).__name__}"] += 1

    if args.mode == "threading":
        class Main(Counted, servers.ThreadingTCPServer):
            daemon_threads = True
            max_threads = MAX_THREADS
            request_queue_size = 1024
    else:
        class Main(Counted, servers.TCPServer):  # type: ignore[no-redef]
            request_queue_size = 1024

    class Admin(servers.UnixStreamServer):
        remove_stale_socket = True

    loop = reactor.Reactor()
    main = Main(("127.0.0.1", 0), SoakHandler)
    admin = Admin(args.admin, Status)
    loop.register(main)
    loop.register(admin)
    loop.add_signal_handler(signal.SIGTERM, loop.shutdown)
    print(f"READY {main.server_address[1]}", flush=True)
    try:
        loop.serve_forever(poll_interval=0.5)
    finally:
        main.server_close()
        admin.server_close()
        loop.close()
    return 0


# =============================================================================== driver side
def proc_figures(pid: int) -> dict[str, int]:
    """Descriptors, threads, children and RSS of `pid`, from /proc."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    status = {}
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            key, _, value = line.partition(":")
            status[key] = value.split()
    children = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as file:
                children += len(file.read().split())
        except OSError:
            pass
    return {"fds": fds, "threads": int(status["Threads"][0]), "children": children,
            "rss_kib": int(status["VmRSS"][0])}


async def admin_status(path: str, command: bytes = b"status") -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(command + b"\n")
        return json.loads(await asyncio.wait_for(reader.readline(), 10))
    finally:
        writer.close()
        await writer.wait_closed()


class Stats:
    def __init__(self) -> None:
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.good_requests = 0
        self.good_correct = 0
        self.cut_after: list[float] = []  # slowloris: seconds until the server cut it off
        self.started = 0

    def note(self, kind: str, outcome: str) -> None:
        self.outcomes[(kind, outcome)] += 1


async def open_conn(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)


def reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """Read until EOF (or a reset); True if that came within `within` seconds."""
    try:
        async with asyncio.timeout(within) if hasattr(asyncio, "timeout") else \
                _Deadline(within):
            while await reader.read(1 << 20):
                pass
        return True
    except (asyncio.TimeoutError, TimeoutError):  # before OSError: TimeoutError is one
        return False
    except (ConnectionError, OSError):
        return True


class _Deadline:  # asyncio.timeout() for Python < 3.11
    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handle = asyncio.get_running_loop().call_later(self.delay, task.cancel)
        self.task = task

    async def __aexit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        self.handle.cancel()
        if kind is asyncio.CancelledError:
            raise asyncio.TimeoutError from exc
        return False


async def good(port: int, rng: random.Random, stats: Stats) -> str:
    reader, writer = await open_conn(port)
    try:
        for _ in range(rng.randint(1, 2)):  # half reuse the connection
            payloads = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789")
                              for _ in range(rng.randint(1, 300)))
                        for _ in range(rng.randint(1, 5))]
            data = b"".join(b"E " + payload + b"\n" for payload in payloads)
            if rng.random() < 0.5:  # cut at random byte boundaries
                at = 0
                while at < len(data):
                    size = rng.randint(1, 64)
                    writer.write(data[at:at + size])
                    await writer.drain()
                    at += size
                    if rng.random() < 0.2:
                        await asyncio.sleep(0)
            else:  # pipelined in one write
                writer.write(data)
                await writer.drain()
            for payload in payloads:
                stats.good_requests += 1
                reply = await asyncio.wait_for(reader.readline(), 10)
                if reply == payload[::-1] + b"\n":
                    stats.good_correct += 1
                else:
                    return "WRONG-REPLY"
        return "ok"
    finally:
        writer.close()


async def garbage(port: int, rng: random.Random, stats: Stats) -> str:
    reader, writer = await open_conn(port)
    try:
        lines = [bytes(rng.randrange(256) for _ in range(rng.randint(0, 200))).replace(
            b"\n", b"\0") for _ in range(rng.randint(1, 4))]
        lines = [line if not line.startswith((b"E ", b"B ")) else b"x" + line
                 for line in lines]
        writer.write(b"".join(line + b"\n" for line in lines) + b"E after garbage\n")
        await writer.drain()
        for line in lines:
            if await asyncio.wait_for(reader.readline(), 10) != b"? %d\n" % len(line):
                return "WRONG-REPLY"
        stats.good_requests += 1
        if await asyncio.wait_for(reader.readline(), 10) != b"egabrag retfa\n":
            return "WRONG-REPLY"
        stats.good_correct += 1
        return "ok"
    finally:
        writer.close()


async def long_line(port: int, rng: random.Random, stats: Stats) -> str:
    reader, writer = await open_conn(port)
    try:
        writer.write(b"E " + b"L" * (MAX_LINE_LENGTH * 2))
        await writer.drain()
        if await closed_by_server(reader, 10):
            return "closed"
        return "NOT-CLOSED"
    except ConnectionError:
        return "closed"
    finally:
        writer.close()


async def slowloris(port: int, rng: random.Random, stats: Stats) -> str:
    reader, writer = await open_conn(port)
    started = time.monotonic()
    try:
        writer.write(b"E ")
        await writer.drain()
        for _ in range(int((REQUEST_TIMEOUT + 5) / 0.25)):
            await asyncio.sleep(0.25)
            if reader.at_eof() or writer.transport.is_closing():
                break
            try:
                writer.write(b"s")
                await writer.drain()
            except ConnectionError:
                break
            if await closed_by_server(reader, 0.001):
                break
        else:
            return "NOT-CUT"
        stats.cut_after.append(time.monotonic() - started)
        return "cut"
    finally:
        writer.close()


async def never_read(port: int, rng: random.Random, stats: Stats) -> str:
    reader, writer = await open_conn(port)
    asked = 8 * 1024 * 1024
    try:
        writer.write(b"B %d\n" % asked)
        await writer.drain()
        # asyncio reads ~128 KiB into its buffer, then stops reading: a never-reader, until
        # write_timeout has passed. Then what the kernel holds is read: the server must have
        # dropped the connection short of the whole reply.
        await asyncio.sleep(WRITE_TIMEOUT + 1.0)
        got = 0
        try:
            async with asyncio.timeout(10) if hasattr(asyncio, "timeout") else _Deadline(10):
                while chunk := await reader.read(1 << 20):
                    got += len(chunk)
        except (asyncio.TimeoutError, TimeoutError):
            return "NOT-DROPPED"
        except ConnectionError:
            pass
        return "dropped" if got < asked else "NOT-DROPPED"
    finally:
        reset(writer)


async def resetter(port: int, rng: random.Random, stats: Stats) -> str:
    reader, writer = await open_conn(port)
    writer.write(b"B %d\n" % (1024 * 1024) if rng.random() < 0.7 else b"E half a li")
    await writer.drain()
    try:
        await asyncio.wait_for(reader.read(rng.randint(1, 65536)), 5)
    except (asyncio.TimeoutError, TimeoutError):
        pass
    reset(writer)
    return "reset"


async def connect(port: int, rng: random.Random, stats: Stats) -> str:
    reader, writer = await open_conn(port)
    if rng.random() < 0.5:
        reset(writer)
        return "reset"
    writer.close()
    return "closed"


CLIENTS = {"good": good, "garbage": garbage, "long-line": long_line, "slowloris": slowloris,
           "never-read": never_read, "resetter": resetter, "connect": connect}


async def drive(port: int, total: int, seconds: float, concurrency: int, seed: int,
                stats: Stats, kinds: dict[str, int]) -> None:
    rng = random.Random(seed)
    names = list(kinds)
    weights = [kinds[name] for name in names]
    deadline = time.monotonic() + seconds
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()

    async def one(kind: str, own_rng: random.Random) -> None:
        try:
            outcome = await asyncio.wait_for(CLIENTS[kind](port, own_rng, stats), 30)
        except (asyncio.TimeoutError, TimeoutError):
            outcome = "CLIENT-TIMEOUT"
        except ConnectionRefusedError:
            outcome = "REFUSED"
        except (ConnectionError, OSError) as exc:
            outcome = "ok-reset" if kind in ("resetter", "connect", "never-read") else \
                f"ERROR-{type(exc).__name__}"
        finally:
            slots.release()
        stats.note(kind, outcome)

    while stats.started < total and time.monotonic() < deadline:
        await slots.acquire()
        kind = rng.choices(names, weights)[0]
        task = asyncio.ensure_future(one(kind, random.Random(rng.random())))
        running.add(task)
        task.add_done_callback(running.discard)
        stats.started += 1
    if running:
        await asyncio.wait(running, timeout=40)


async def wait_until_quiet(pid: int, admin: str, baseline: dict[str, int] | None,
                           settle: float) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Poll until the table is empty (and fds/threads/children are back to `baseline`, if
    given), for at most `settle` seconds; then measure, RSS both as it is (`rss_kib`) and
    after the server released its free heap pages (`rss_trimmed_kib`)."""
    started = time.monotonic()
    while True:
        status = await admin_status(admin)
        await asyncio.sleep(0.05)  # the admin connection itself is closed by now
        figures = proc_figures(pid)
        back = status["requests"] == 0 and (baseline is None or all(
            figures[key] == baseline[key] for key in ("fds", "threads", "children")))
        waited = time.monotonic() - started
        if back or waited > settle:
            break
        await asyncio.sleep(0.25)
    status = await admin_status(admin, b"trim")  # the same quiet table, and gc's count
    await asyncio.sleep(0.05)
    figures["rss_trimmed_kib"] = proc_figures(pid)["rss_kib"]
    return status, figures, waited


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="load phase: at most this long (default 60)")
    parser.add_argument("--connections", type=int, default=20000,
                        help="connections to make during the load phase (default 20000)")
    parser.add_argument("--mode", choices=["reactor", "threading"], default="reactor")
    parser.add_argument("--concurrency", type=int, default=256,
                        help="client connections at once (default 256)")
    parser.add_argument("--warmup", type=int, default=5000,
                        help="mixed connections before the baseline is taken, so that it "
                             "includes the allocator's high-water mark (default 5000)")
    parser.add_argument("--rss-tolerance", type=float, default=8.0,
                        help="MiB of RSS growth allowed over the baseline, both measured "
                             "after gc.collect() and malloc_trim(0) (default 8)")
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds allowed to return to baseline after the load")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--python", default=sys.executable, help="interpreter for the server")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--admin", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args)
    return asyncio.run(soak(args))


async def soak(args: argparse.Namespace) -> int:
    workdir = tempfile.mkdtemp(prefix="soak-")
    admin = os.path.join(workdir, "admin.sock")
    errors = open(os.path.join(workdir, "server.stderr"), "w+")  # never a pipe left unread
    server = subprocess.Popen(
        [args.python, os.path.abspath(__file__), "--serve", "--mode", args.mode,
         "--admin", admin], stdout=subprocess.PIPE, stderr=errors, text=True)
    checks: list[tuple[str, bool, str]] = []
    try:
        assert server.stdout is not None
        ready = server.stdout.readline().split()
        if not ready or ready[0] != "READY":
            errors.seek(0)
            print("the server did not start:", errors.read())
            return 1
        port = int(ready[1])
        pid = server.pid
        print(f"server pid {pid} ({args.mode} mode) on 127.0.0.1:{port}; admin {admin}")

        warm = Stats()
        await drive(port, args.warmup, 30, args.concurrency, args.seed + 1, warm, KINDS)
        status, baseline, _ = await wait_until_quiet(pid, admin, None, args.settle)
        if status["requests"]:
            print(f"the server did not become quiet after the warm-up: {status}")
            return 1
        print(f"baseline after {args.warmup} warm-up connections: {baseline}")

        stats = Stats()
        started = time.monotonic()
        peak: dict[str, int] = {"fds": 0, "threads": 0, "rss_kib": 0, "requests": 0}

        async def sample() -> None:
            while True:
                await asyncio.sleep(1.0)
                figures = proc_figures(pid)
                table = (await admin_status(admin))["requests"]
                for key in ("fds", "threads", "rss_kib"):
                    peak[key] = max(peak[key], figures[key])
                peak["requests"] = max(peak["requests"], table)

        sampler = asyncio.ensure_future(sample())
        try:
            await drive(port, args.connections, args.seconds, args.concurrency, args.seed,
                        stats, KINDS)
        finally:
            sampler.cancel()
        load_seconds = time.monotonic() - started
        status, final, waited = await wait_until_quiet(pid, admin, baseline, args.settle)
        server_cpu = _server_cpu(pid)
        alive = server.poll() is None

        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        errors.seek(0)
        stderr = errors.read()

        total = sum(stats.outcomes.values())
        rss_growth = (final["rss_trimmed_kib"] - baseline["rss_trimmed_kib"]) / 1024
        mib = lambda kib: f"{kib / 1024:.1f}"  # noqa: E731
        bad = {key: n for key, n in stats.outcomes.items() if key[1].isupper()
               or key[1].startswith("ERROR")}
        checks = [
            ("connections made", total == args.connections or (
                load_seconds >= args.seconds and total >= 1000),
             f"{total} of {args.connections} in {load_seconds:.1f} s "
             f"({total / load_seconds:.0f}/s)"),
            ("server alive after the load", alive, "yes" if alive else "NO"),
            ("every good request answered correctly",
             stats.good_requests > 0 and stats.good_correct == stats.good_requests,
             f"{stats.good_correct}/{stats.good_requests}"),
            ("hostile clients met their bound", not bad,
             "all" if not bad else ", ".join(f"{k[0]}:{k[1]}={n}" for k, n in bad.items())),
            ("request table empty", status["requests"] == 0,
             f"{status['requests']} (peak {peak['requests']})"),
            ("descriptors back to baseline", final["fds"] == baseline["fds"],
             f"{baseline['fds']} -> {final['fds']} (peak {peak['fds']})"),
            ("threads back to baseline", final["threads"] == baseline["threads"],
             f"{baseline['threads']} -> {final['threads']} (peak {peak['threads']})"),
            ("children back to baseline", final["children"] == baseline["children"],
             f"{baseline['children']} -> {final['children']}"),
            (f"RSS within +{args.rss_tolerance:g} MiB", rss_growth <= args.rss_tolerance,
             f"{mib(baseline['rss_trimmed_kib'])} -> {mib(final['rss_trimmed_kib'])} MiB "
             f"({rss_growth:+.1f}) after gc + malloc_trim; as found "
             f"{mib(baseline['rss_kib'])} -> {mib(final['rss_kib'])}, "
             f"peak {mib(peak['rss_kib'])}"),
            ("graceful exit on SIGTERM", server.returncode == 0,
             f"exit status {server.returncode}"),
            ("nothing on the server's stderr", not stderr.strip(),
             "nothing" if not stderr.strip() else stderr.strip()[-400:]),
        ]
        print()
        print(f"{'client kind':<12} {'outcome':<16} {'count':>7}")
        for (kind, outcome), count in sorted(stats.outcomes.items()):
            print(f"{kind:<12} {outcome:<16} {count:>7}")
        if stats.cut_after:
            cuts = sorted(stats.cut_after)
            print(f"slowloris cut after {cuts[0]:.2f}-{cuts[-1]:.2f} s "
                  f"(median {cuts[len(cuts) // 2]:.2f}; request_timeout={REQUEST_TIMEOUT} s)")
        print(f"server counters (log records, handle_error calls, objects gc.collect() found "
              f"at the final measurement): {dict(status['counts'])}")
        print(f"server CPU time: {server_cpu:.1f} s over {load_seconds:.1f} s of load; "
              f"back to baseline {waited:.1f} s after the load")
        print()
        width = max(len(name) for name, _, _ in checks)
        for name, passed, detail in checks:
            print(f"{'PASS' if passed else 'FAIL'}  {name:<{width}}  {detail}")
        return 0 if all(passed for _, passed, _ in checks) else 1
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()
        errors.close()
        for name in ("admin.sock", "server.stderr"):
            if os.path.exists(os.path.join(workdir, name)):
                os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)


def _server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


if __name__ == "__main__":
    sys.exit(main())
