"""Requests per second with 0, 1 and 2 worker processes (`servers.Supervisor`).

    python bench/workers.py                  # 3 interleaved repetitions, 5 s per run
    python bench/workers.py --repeat 5 --duration 10 --workers 0 1 2 4
    python bench/workers.py --smoke          # seconds; exit 1 if a run fails or counts errors

The server is an `async def` line echo on a `servers.TCPServer` (backlog 1024): served by one
process (`0` workers: `serve_forever()`, no supervisor) or by a `Supervisor` with N workers
sharing the listening socket. The load is `bench/build/loadgen` (built from loadgen.c when
missing or stale): `echo-c100` (100 connections, ping-pong) and `churn` (a new connection per
request, 10 at a time, which exercises accepting in several processes). Runs are interleaved
(0 1 2 0 1 2 ...), medians are printed with [min - max]. Nothing is pinned: the workers need
every core there is, and the load generator competes with them for it; see docs/workers.md
for what these figures can and cannot show on a small machine.

Server CPU is the utime+stime of the whole process group (supervisor and workers) over the
measured window, from /proc (Linux), in cores (CPU seconds per second); the load generator's
is its own over its whole run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import selectors
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LOADGEN_SRC = BENCH_DIR / "loadgen.c"
LOADGEN_BIN = BENCH_DIR / "build" / "loadgen"
WORKLOADS = {"echo-c100": ["-c", "100"], "churn": ["--churn", "-c", "10"]}
TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the server
def serve(workers: int) -> None:
    """The server process: print READY PORT once every worker is ready; serve until SIGTERM."""
    sys.path.insert(0, str(REPO))
    import reactor
    import servers

    class Echo(servers.StreamRequestHandler):
        async def handle(self) -> None:
            async for line in self.rfile:
                self.wfile.write(line)

    class Server(servers.TCPServer):
        request_queue_size = 1024

    def ready(port: int) -> None:
        print(f"READY {port}", flush=True)

    with Server(("127.0.0.1", 0), Echo) as server:
        port = server.server_address[1]
        if workers == 0:
            with reactor.Reactor() as loop:
                loop.register(server)
                loop.add_signal_handler(signal.SIGTERM, loop.shutdown)
                ready(port)
                loop.serve_forever()
            return

        class Ready(logging.Handler):  # the supervisor logs "worker %d ready" at INFO
            count = 0

            def emit(self, record: logging.LogRecord) -> None:
                if record.msg == "worker %d ready":
                    self.count += 1
                    if self.count == workers:
                        ready(port)

        log = logging.getLogger("servers")
        log.setLevel(logging.INFO)
        log.addHandler(Ready())
        log.propagate = False
        servers.Supervisor([server], workers).serve_forever()


# --------------------------------------------------------------------------- the driver
def build_loadgen() -> Path:
    if not LOADGEN_BIN.exists() or LOADGEN_BIN.stat().st_mtime < LOADGEN_SRC.stat().st_mtime:
        LOADGEN_BIN.parent.mkdir(exist_ok=True)
        subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", str(LOADGEN_BIN),
                        str(LOADGEN_SRC)], check=True)
    return LOADGEN_BIN


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime of every live process in process group `pgid` (Linux /proc)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid:  # fields[0] is the state; pgrp is the 5th field of stat
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def run_once(workers: int, workload: str, args: argparse.Namespace) -> dict[str, Any]:
    server = subprocess.Popen([sys.executable, __file__, "serve", str(workers)],
                              stdout=subprocess.PIPE, start_new_session=True, text=True)
    try:
        assert server.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(server.stdout, selectors.EVENT_READ)
            if not selector.select(30):
                raise RuntimeError(f"{workers} workers: the server did not start in 30 s")
        line = server.stdout.readline().split()
        if line[:1] != ["READY"]:
            raise RuntimeError(f"{workers} workers: the server said {line!r}")
        load = subprocess.Popen(
            [str(LOADGEN_BIN), "--tcp", f"127.0.0.1:{line[1]}", *WORKLOADS[workload],
             "-t", str(args.duration), "-w", str(args.warmup)],
            stdout=subprocess.PIPE, text=True)
        assert load.stdout is not None
        started = time.monotonic()
        cpu: dict[str, float] = {}
        report: dict[str, Any] = {}
        for text in load.stdout:
            if text.startswith("MARK "):
                cpu[text.split()[1]] = group_cpu_seconds(server.pid)
            elif text.startswith("{"):
                report = json.loads(text)
        _, status, usage = os.wait4(load.pid, 0)
        load.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        if load.returncode != 0 or not report:
            raise RuntimeError(f"loadgen exit status {load.returncode}")
        window = float(report["seconds"])
        return {"rps": float(report["rps"]), "errors": int(report["errors"]),
                "server_cores": (cpu["end"] - cpu["start"]) / window,
                "loadgen_cores": (usage.ru_utime + usage.ru_stime) / wall}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        if server.stdout is not None:
            server.stdout.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--smoke", action="store_true", help="one short run of each")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeat, args.duration, args.warmup = 1, 0.5, 0.1
    build_loadgen()
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    failed = False
    print(f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.1f}", flush=True)
    for _ in range(args.repeat):
        for workload in WORKLOADS:
            for workers in args.workers:
                try:
                    result = run_once(workers, workload, args)
                except (RuntimeError, OSError) as exc:
                    print(f"{workload} with {workers} workers failed: {exc}", flush=True)
                    failed = True
                    continue
                failed = failed or result["errors"] > 0
                results.setdefault((workload, workers), []).append(result)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"{'workload':<10} {'workers':>7}  {'req/s median [min - max]':<28} "
          f"{'server cores':>12} {'req/CPU-s':>9} {'loadgen cores':>13} {'errors':>6}")
    for (workload, workers), runs in results.items():
        rps = [r["rps"] for r in runs]
        per_cpu = statistics.median(r["rps"] / max(r["server_cores"], 1e-9) for r in runs)
        print(f"{workload:<10} {workers:>7}  "
              f"{f'{statistics.median(rps):,.0f} [{min(rps):,.0f} - {max(rps):,.0f}]':<28} "
              f"{statistics.median(r['server_cores'] for r in runs):>12.2f} "
              f"{per_cpu:>9,.0f} "
              f"{statistics.median(r['loadgen_cores'] for r in runs):>13.2f} "
              f"{sum(r['errors'] for r in runs):>6}")
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]))
    else:
        sys.exit(main())
