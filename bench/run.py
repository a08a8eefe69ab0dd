#!/usr/bin/env python3
"""Benchmark harness: our socket servers against stdlib, asyncio, uvloop and a bare loop.

One file on purpose (about 1,600 lines): it runs as a plain script from a fresh clone, with
no package to install, and its sections (subjects and workloads, setup, /proc accounting,
subject processes, drivers, scheduling, report) are read in that order.

Usage (from the repository root)::

    python bench/run.py                 # full run (~20-25 min): setup, R=5 repetitions
    python bench/run.py --smoke         # CI check (< ~60 s): every subject once, briefly
    python bench/run.py --subjects 'ours-*,asyncio-streams' --workloads echo-c100 --repeat 3
    python bench/run.py --list          # show subjects and workloads
    python bench/run.py --report bench/results/raw-XXXX.jsonl   # re-render a report

What it does:

1. Setup (skipped by ``--no-setup`` and ``--smoke``): a virtualenv in
   ``bench/.venv`` with uvloop from PyPI (best effort), ``wrk`` and
   ``libssl-dev`` from apt if missing (best effort), and
   ``bench/build/loadgen`` compiled from ``bench/loadgen.c`` (always, when out
   of date; with TLS when OpenSSL is there).  The TLS workloads get a
   throwaway certificate made by ``openssl`` in a temporary directory.
2. Runs every applicable (workload, subject) pair, interleaved: for each
   repetition, for each workload, every subject once (A B C A B C ...).
   Each run starts a fresh server (``bench/subjects/subject.py``) pinned to
   CPU 0; the load generator (or wrk) is pinned to CPU 1.
3. Measures requests/s (from the load generator), requests per server
   CPU-second (``/proc/PID/stat`` utime+stime+cutime+cstime summed over the
   server's process group, sampled when the load generator opens and closes
   its measurement window), latency percentiles, and for ``idle-c1000`` the
   server memory per idle connection.
4. Prints medians with min-max and ratios to the references, writes raw
   figures (``bench/results/raw-<timestamp>.jsonl``), a text summary and two
   hand-written SVG bar charts into ``bench/results/``.

Exit status: 0 normally.  With ``--smoke``: 1 if any subject failed to start
or crashed, or the load generator reported errors or no progress (uvloop and
wrk subjects/workloads are skipped when unavailable, not failed).
"""

from __future__ import annotations

import argparse
import fnmatch
import html
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SUBJECT_SCRIPT = BENCH_DIR / "subjects" / "subject.py"
LOADGEN_SRC = BENCH_DIR / "loadgen.c"
LOADGEN_BIN = BENCH_DIR / "build" / "loadgen"
WRK_SCRIPT = BENCH_DIR / "wrk_report.lua"
RESULTS_DIR = BENCH_DIR / "results"

SERVER_CPU = 0  # the server under test
CLIENT_CPU = 1  # loadgen / wrk / this script
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

START_TIMEOUT = 15.0  # seconds to wait for "READY"
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL


def log(msg: str) -> None:
    """Progress output goes to stderr; the report goes to stdout."""
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------
# Subjects and workloads
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """One server implementation (``subject.py --kind NAME``)."""

    name: str
    family: str  # ours | stdlib | asyncio | uvloop | floor
    modes: frozenset  # subset of {"tcp", "unix", "udp", "http"}
    concurrent: bool  # serves many connections at once
    description: str

    @property
    def needs_uvloop(self) -> bool:
        return self.family == "uvloop"


def _subject(name: str, family: str, modes: str, concurrent: bool, description: str) -> Subject:
    return Subject(name, family, frozenset(modes.split()), concurrent, description)


SUBJECTS: list[Subject] = [
    _subject("ours-async", "ours", "tcp unix udp http tls", True,
             "servers.TCPServer/UnixStreamServer/UDPServer + async handler (reactor mode); "
             "TLS: ssl_context"),
    _subject("ours-batch", "ours", "tcp unix", True,
             "servers.TCPServer/UnixStreamServer + async handler reading with the opt-in "
             "batch API (rfile.readlines_available())"),
    _subject("ours-classic", "ours", "tcp udp", False,
             "servers.TCPServer + blocking handler; servers.UDPServer + DatagramRequestHandler"),
    _subject("ours-threading", "ours", "tcp http", True,
             "servers.ThreadingTCPServer + blocking handler; "
             "http.server handler on ThreadingMixIn"),
    _subject("ours-forking", "ours", "tcp", True, "servers.ForkingTCPServer + blocking handler"),
    _subject("stdlib-classic", "stdlib", "tcp udp", False,
             "socketserver.TCPServer / UDPServer (one client at a time)"),
    _subject("stdlib-threading", "stdlib", "tcp unix http", True,
             "socketserver.Threading*Server; http.server.ThreadingHTTPServer"),
    _subject("stdlib-forking", "stdlib", "tcp", True, "socketserver.ForkingTCPServer"),
    _subject("asyncio-streams", "asyncio", "tcp unix http tls", True,
             "asyncio.start_server, readline/write/drain"),
    _subject("asyncio-protocol", "asyncio", "tcp unix udp http tls", True,
             "asyncio.Protocol, one write per data_received"),
    _subject("uvloop-streams", "uvloop", "tcp unix http tls", True, "asyncio streams on uvloop"),
    _subject("uvloop-protocol", "uvloop", "tcp unix udp http tls", True,
             "asyncio.Protocol on uvloop"),
    _subject("selectors", "floor", "tcp unix udp http", True,
             "bare selectors loop: recv/send, minimal Python (floor)"),
]
SUBJECTS_BY_NAME = {s.name: s for s in SUBJECTS}


@dataclass(frozen=True)
class Workload:
    """One load shape.  ``kind`` selects the driver."""

    name: str
    kind: str  # echo | udp | http | idle
    transport: str  # tcp | unix | udp  (the server is started on this)
    conns: int
    smoke_conns: int
    description: str
    depth: int = 1
    churn: bool = False
    needs_concurrency: bool = True
    lower_is_better: bool = False
    tls: bool = False

    @property
    def mode(self) -> str:
        """Server mode a subject must support (see ``Subject.modes``)."""
        if self.tls:
            return "tls"
        return "http" if self.kind == "http" else self.transport

    @property
    def proto(self) -> str:
        return "http" if self.kind == "http" else "echo"

    @property
    def metric(self) -> str:
        return "kib_per_conn" if self.kind == "idle" else "rps"


WORKLOADS: list[Workload] = [
    Workload("echo-c1", "echo", "tcp", 1, 1, "TCP line echo, ping-pong, 1 connection",
             needs_concurrency=False),
    Workload("echo-c100", "echo", "tcp", 100, 4, "TCP line echo, ping-pong, 100 connections"),
    Workload("echo-c1000", "echo", "tcp", 1000, 16, "TCP line echo, ping-pong, 1000 connections"),
    Workload("pipe-d16", "echo", "tcp", 100, 4,
             "TCP line echo, 16 lines per write, 100 connections",
             depth=16),
    Workload("pipe-c1", "echo", "tcp", 1, 1,
             "TCP line echo, 16 lines per write, 1 connection", depth=16,
             needs_concurrency=False),
    Workload("churn", "echo", "tcp", 10, 2,
             "TCP connect / 1 line / reply / close, 10 at a time", churn=True,
             needs_concurrency=False),
    Workload("unix-c100", "echo", "unix", 100, 4,
             "Unix stream line echo, ping-pong, 100 connections"),
    Workload("udp-s50", "udp", "udp", 50, 4, "UDP echo, ping-pong, 50 sockets",
             needs_concurrency=False),
    Workload("http-c100", "http", "tcp", 100, 4, "HTTP/1.1 hello keep-alive, wrk -t1 -c100"),
    Workload("idle-c1000", "idle", "tcp", 1000, 20,
             "server memory per idle connection (1000 connected, silent), KiB",
             lower_is_better=True),
    Workload("tls-c100", "echo", "tcp", 100, 4,
             "TLS 1.3 line echo, ping-pong, 100 connections (handshakes before the window)",
             tls=True),
    Workload("tls-churn", "echo", "tcp", 10, 2,
             "TLS 1.3 connect / handshake / 1 line / close, 10 at a time (= handshakes/s)",
             churn=True, tls=True),
]
WORKLOADS_BY_NAME = {w.name: w for w in WORKLOADS}

#: "stdlib same mode" reference for each of our subjects.
STDLIB_SAME_MODE = {
    "ours-async": "stdlib-threading",
    "ours-batch": "stdlib-threading",
    "ours-classic": "stdlib-classic",
    "ours-threading": "stdlib-threading",
    "ours-forking": "stdlib-forking",
    "stdlib-classic": "stdlib-classic",
    "stdlib-threading": "stdlib-threading",
    "stdlib-forking": "stdlib-forking",
}

#: Reference columns: label -> candidates in preference order (first present wins).
#: The protocol API is each event loop's fastest way to serve; streams stand in where no
#: protocol subject took part.  TLS workloads compare with streams first (see
#: ``reference_candidates``): that is what a user of TLS on asyncio writes.
REFERENCES: list[tuple[str, tuple[str, ...]]] = [
    ("uvloop", ("uvloop-protocol", "uvloop-streams")),
    ("asyncio", ("asyncio-protocol", "asyncio-streams")),
    ("floor", ("selectors",)),
    ("stdlib", ()),  # per-row: STDLIB_SAME_MODE
]


def reference_candidates(label: str, candidates: tuple[str, ...], wl: Workload) -> tuple[str, ...]:
    """The candidates of one reference column for one workload (streams first for TLS)."""
    if wl.tls:
        return tuple(sorted(candidates, key=lambda name: not name.endswith("-streams")))
    return candidates


def applies(subject: Subject, workload: Workload) -> bool:
    """Whether ``subject`` takes part in ``workload``."""
    if workload.mode not in subject.modes:
        return False
    if workload.kind == "idle":
        return subject.concurrent
    return subject.concurrent or not workload.needs_concurrency


# --------------------------------------------------------------------------
# Settings and environment
# --------------------------------------------------------------------------


@dataclass
class Settings:
    """Everything a run needs to know, resolved from the command line."""

    python: str
    duration: float
    warmup: float
    repeat: int
    smoke: bool
    size: int
    subjects: list[Subject]
    workloads: list[Workload]
    have_uvloop: bool
    wrk: str | None
    taskset: str | None
    out_dir: Path
    stamp: str
    log_dir: Path
    settle: float = 0.1
    tls: TlsFiles | None = None  # certificate for the TLS workloads (None: they are skipped)
    tls_skip: str = "TLS not set up"  # why, when ``tls`` is None
    cold_malloc: bool = False  # subjects skip warm_allocator() (see subjects/subj_common.py)


@dataclass(frozen=True)
class TlsFiles:
    """The bench's throwaway certificate (made at run time in a temporary directory)."""

    cert: str
    key: str


def sh(cmd: Sequence[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess:
    """Run a short setup command, capturing output; never raises on failure."""
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(cmd), 127, "", str(exc))


def build_loadgen(force: bool = False) -> Path:
    """Compile loadgen.c with the system cc if the binary is missing or stale.

    With OpenSSL's headers and libraries present (Debian: libssl-dev) it is built with TLS
    (``-DLOADGEN_TLS -lssl -lcrypto``); without them, plain, and the TLS workloads are
    skipped (``loadgen_has_tls``).
    """
    if (
        not force
        and LOADGEN_BIN.exists()
        and LOADGEN_BIN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime
    ):
        return LOADGEN_BIN
    cc = os.environ.get("CC", "cc")
    LOADGEN_BIN.parent.mkdir(parents=True, exist_ok=True)
    base = [cc, "-O2", "-Wall", "-Wextra", "-o", str(LOADGEN_BIN)]
    res = None
    for cmd in (base + ["-DLOADGEN_TLS", str(LOADGEN_SRC), "-lssl", "-lcrypto"],
                base + [str(LOADGEN_SRC)]):
        log(f"[setup] building loadgen: {' '.join(cmd)}")
        res = sh(cmd, timeout=120)
        if res.returncode == 0:
            break
        if "-DLOADGEN_TLS" in cmd:
            log("[setup] no OpenSSL to build with (libssl-dev): loadgen without TLS")
    assert res is not None
    if res.returncode != 0:
        raise SystemExit(f"loadgen build failed:\n{res.stdout}{res.stderr}")
    if res.stderr.strip():
        log(res.stderr.rstrip())
    return LOADGEN_BIN


def loadgen_has_tls() -> bool:
    """Whether bench/build/loadgen was built with TLS (``loadgen --version`` says "tls")."""
    res = sh([str(LOADGEN_BIN), "--version"], timeout=10)
    return res.returncode == 0 and "tls" in res.stdout.split()


def ensure_openssl_dev(install: bool) -> None:
    """apt-get install libssl-dev when the loadgen lacks TLS (best effort), then rebuild it."""
    if loadgen_has_tls() or not install:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log("[setup] loadgen without TLS and cannot apt-get install libssl-dev: TLS skipped")
        return
    log("[setup] apt-get install -y libssl-dev (best effort, for the loadgen's TLS)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    res = sh(["apt-get", "install", "-y", "-qq", "libssl-dev"], timeout=600, env=env)
    if res.returncode != 0:
        sh(["apt-get", "update", "-qq"], timeout=300, env=env)
        res = sh(["apt-get", "install", "-y", "-qq", "libssl-dev"], timeout=600, env=env)
    if res.returncode != 0:
        log(f"[setup] libssl-dev install failed: TLS skipped: {res.stderr.strip()[-300:]}")
        return
    build_loadgen(force=True)


def make_tls_files(directory: Path) -> TlsFiles | None:
    """A throwaway self-signed ECDSA P-256 certificate for 127.0.0.1, via the openssl CLI.

    Made at every run in a temporary directory (never stored under bench/); None when the
    openssl command is missing or fails.  ECDSA P-256 is the usual modern server key; the
    load generator does not verify it (it measures servers, not PKI).
    """
    openssl = shutil.which("openssl")
    if not openssl:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    res = sh([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
              "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
              "-days", "2", "-subj", "/CN=127.0.0.1"], timeout=60)
    if res.returncode != 0 or not cert.exists():
        log(f"[setup] openssl could not make the bench certificate: {res.stderr.strip()[-300:]}")
        return None
    return TlsFiles(str(cert), str(key))


def venv_dir_for(python: str) -> Path:
    """``bench/.venv``, unless it exists for another Python X.Y: then ``bench/.venv-X.Y``."""
    res = sh([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], timeout=30)
    version = res.stdout.strip() or "other"
    default = BENCH_DIR / ".venv"
    cfg = default / "pyvenv.cfg"
    if not cfg.exists():
        return default
    match = re.search(r"^version(?:_info)?\s*=\s*(\d+\.\d+)", cfg.read_text(), re.M)
    return default if match and match.group(1) == version else BENCH_DIR / f".venv-{version}"


def has_module(python: str, module: str) -> bool:
    return sh([python, "-c", f"import {module}"], timeout=60).returncode == 0


def ensure_venv(base_python: str, install: bool) -> str:
    """Return the interpreter to run subjects with (the venv's when usable).

    With ``install`` the venv is created and uvloop installed from PyPI, best
    effort: failures only mean that the uvloop subjects get skipped.
    """
    vdir = venv_dir_for(base_python)
    vpy = vdir / "bin" / "python"
    if install and not vpy.exists():
        log(f"[setup] creating virtualenv {vdir.relative_to(REPO_ROOT)}")
        res = sh([base_python, "-m", "venv", str(vdir)], timeout=300)
        if res.returncode != 0:
            log(f"[setup] venv creation failed (using {base_python}): {res.stderr.strip()[-300:]}")
            return base_python
    if not vpy.exists():
        return base_python
    if install and not has_module(str(vpy), "uvloop"):
        log("[setup] pip install uvloop (best effort)")
        res = sh([str(vpy), "-m", "pip", "install", "-q", "--disable-pip-version-check", "uvloop"],
                 timeout=600)
        if res.returncode != 0:
            log(f"[setup] uvloop install failed; uvloop subjects will be skipped: "
                f"{res.stderr.strip()[-300:]}")
    return str(vpy)


def ensure_wrk(install: bool) -> str | None:
    """Path of wrk, apt-installing it first (best effort) when allowed."""
    found = shutil.which("wrk")
    if found or not install:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log("[setup] wrk not found and cannot apt-get install it: HTTP workload skipped")
        return None
    log("[setup] apt-get update && apt-get install -y wrk (best effort)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    upd = sh(["apt-get", "update", "-qq"], timeout=300, env=env)
    if upd.returncode != 0:
        log(f"[setup] apt-get update failed: {upd.stderr.strip()[-300:]}")
    res = sh(["apt-get", "install", "-y", "-qq", "wrk"], timeout=600, env=env)
    if res.returncode != 0:
        log(f"[setup] wrk install failed: HTTP workload skipped: {res.stderr.strip()[-300:]}")
    return shutil.which("wrk")


def pin_self() -> str | None:
    """Pin this script to the client CPU; return the taskset path (or None)."""
    taskset = shutil.which("taskset")
    try:
        if os.cpu_count() and os.cpu_count() > CLIENT_CPU:  # type: ignore[operator]
            os.sched_setaffinity(0, {CLIENT_CPU})
        else:
            log("[setup] fewer than 2 CPUs: no pinning")
            return None
    except (AttributeError, OSError) as exc:
        log(f"[setup] cannot pin: {exc}")
    if not taskset:
        log("[setup] taskset not found: server and load generator are not pinned")
    return taskset


def pinned(cmd: list[str], cpu: int, settings: Settings) -> list[str]:
    return [settings.taskset, "-c", str(cpu), *cmd] if settings.taskset else cmd


# --------------------------------------------------------------------------
# /proc accounting
# --------------------------------------------------------------------------


def _read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = state)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].decode().split()


def group_pids(pgid: int) -> list[int]:
    """All processes in process group ``pgid`` (the server and its children)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _read_stat(int(entry))
        if fields and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def _scan_group_ticks(pgid: int) -> tuple[int, int]:
    """(utime+stime+cutime+cstime clock ticks, process count) of a process group."""
    ticks = processes = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _read_stat(int(entry))
        if fields and int(fields[2]) == pgid:
            processes += 1
            ticks += sum(int(x) for x in fields[11:15])
    return ticks, processes


def group_cpu_seconds(pgid: int) -> float:
    """utime+stime+cutime+cstime of every process in the group, in seconds.

    cutime/cstime carry the CPU time of children already reaped (forking
    servers); live children are counted directly.
    """
    return _scan_group_ticks(pgid)[0] / CLK_TCK


def cpu_busy_seconds(cpu: int) -> float:
    """Busy time of one CPU from /proc/stat: user+nice+system+irq+softirq."""
    return cpu_times(cpu)[0]


def cpu_times(cpu: int) -> tuple[float, float]:
    """(busy, steal) seconds of one CPU from /proc/stat.

    Steal is time the hypervisor ran something else while this virtual CPU wanted to run:
    on a shared cloud machine it is one of the sources of run-to-run noise, so every run
    records it (``steal_s`` in the raw figures).
    """
    prefix = f"cpu{cpu} "
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith(prefix):
                v = [int(x) for x in line.split()[1:9]]
                return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK, v[7] / CLK_TCK
    return 0.0, 0.0


@dataclass(frozen=True)
class CpuSample:
    """Server CPU counters at one instant (see ``server_cpu_delta``)."""

    proc_s: float  # utime+stime+cutime+cstime over the process group
    processes: int  # processes in the group
    cpu_busy_s: float  # busy time of the server's CPU
    steal_s: float = 0.0  # hypervisor steal of the server's and the client's CPUs


def sample_cpu(pgid: int) -> CpuSample:
    busy, steal = cpu_times(SERVER_CPU)  # first: cheap, and closest to the mark
    steal += cpu_times(CLIENT_CPU)[1]
    ticks, processes = _scan_group_ticks(pgid)
    return CpuSample(ticks / CLK_TCK, processes, busy, steal)


def server_cpu_delta(start: CpuSample, end: CpuSample, pinned_cpu: bool) -> tuple[float, str]:
    """Server CPU seconds between two samples, and which counter was used.

    A single-process server: its /proc/PID/stat utime+stime (exact: derived
    from the scheduler's nanosecond runtime).  A process tree (forking): the
    per-process counters are whole clock ticks (10 ms), so 1000 children each
    using a few ms in the window sum to ~0 (observed: 0.00 s while CPU 0 was
    100 % busy).  Then, if the server is pinned alone on its CPU, that CPU's
    busy time is used instead.
    """
    proc = end.proc_s - start.proc_s
    if max(start.processes, end.processes) > 1 and pinned_cpu:
        return end.cpu_busy_s - start.cpu_busy_s, "cpu-busy"
    return proc, "proc-stat"


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def server_memory_kib(pid: int) -> int:
    """VmRSS of the server plus the PSS of its children (forking servers).

    Summing the children's RSS would count the pages they share with the
    parent (copy-on-write) once per child; PSS shares them out instead.
    """
    total = vm_rss_kib(pid)
    for child in group_pids(pid):
        if child != pid:
            total += pss_kib(child)
    return total


def accepted_connections(pid: int) -> int:
    """Open fds of the server plus its live (non-zombie) child processes.

    Grows by one per accepted connection for single-process servers (one fd)
    and for forking servers (one child; the parent closes its copy).
    """
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = 0
    children = 0
    for child in group_pids(pid):
        fields = _read_stat(child)
        if child != pid and fields and fields[0] != "Z":
            children += 1
    return fds + children


# --------------------------------------------------------------------------
# Subject process
# --------------------------------------------------------------------------


class StartFailure(Exception):
    """The subject did not print READY."""


class FeatureMissing(StartFailure):
    """The library under test lacks what the workload needs (reported as skipped)."""


#: Exit status of a subject lacking a feature (subjects/subj_common.py EXIT_FEATURE_MISSING).
EXIT_FEATURE_MISSING = 3


class SubjectProcess:
    """A running subject; use as a context manager (always terminated on exit)."""

    def __init__(self, subject: Subject, workload: Workload, settings: Settings, tag: str) -> None:
        self.subject = subject
        self.workload = workload
        self.settings = settings
        self.log_path = settings.log_dir / f"{tag}.log"
        self.proc: subprocess.Popen | None = None
        self.tmpdir: str | None = None
        self.address = ""
        self.stop_method = ""
        self.exit_code: int | None = None
        self.died_early = False

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> SubjectProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        wl = self.workload
        if wl.transport == "unix":
            self.tmpdir = tempfile.mkdtemp(prefix="bench-")
            addr = f"unix:{self.tmpdir}/s.sock"
        else:
            addr = f"{wl.transport}:127.0.0.1:0"
        cmd = [self.settings.python, str(SUBJECT_SCRIPT), "--kind", self.subject.name,
               "--addr", addr, "--proto", wl.proto]
        if wl.tls:
            assert self.settings.tls is not None
            cmd += ["--tls-cert", self.settings.tls.cert, "--tls-key", self.settings.tls.key]
        if self.settings.cold_malloc:
            cmd.append("--cold-malloc")
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                pinned(cmd, SERVER_CPU, self.settings),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                cwd=str(REPO_ROOT), start_new_session=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1"),
            )
        line = self._read_line(START_TIMEOUT)
        if not line.startswith("READY "):
            try:
                code = self.proc.wait(1.0)
            except subprocess.TimeoutExpired:
                code = None
            if code == EXIT_FEATURE_MISSING:
                raise FeatureMissing(_stderr_tail(self.stderr_text(), 2) or "feature missing")
            raise StartFailure(line or (f"exited with code {code} before READY" if code is not None
                                        else f"no READY within {START_TIMEOUT:.0f}s"))
        self.address = line.split(None, 1)[1].strip()
        if wl.tls:
            problem = tls_probe(self.address, 5.0)
            if problem and self.subject.family == "ours":
                # The subject set ssl_context but the library ignored it (TLS not built yet,
                # or broken): its handshake fails.  Reported as skipped, with the reason.
                raise FeatureMissing(f"TLS handshake with the subject failed ({problem}): "
                                     "ssl_context does nothing in this checkout?")
            if problem:
                raise StartFailure(f"TLS handshake with the subject failed: {problem}")

    def _read_line(self, timeout: float) -> str:
        assert self.proc and self.proc.stdout
        deadline = time.monotonic() + timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    break
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
        return buf.decode(errors="replace").strip()

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after a grace period; reap."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is not None:
            self.died_early = True
            self.stop_method = "exited"
        else:
            self.stop_method = "term"
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.stop_method = "kill"
                self._signal_group(signal.SIGKILL)
                proc.wait(STOP_GRACE)
        self._signal_group(signal.SIGKILL)  # forked children left behind, if any
        self.exit_code = proc.returncode
        if proc.stdout:
            proc.stdout.close()
        self.proc = None
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def _signal_group(self, sig: int) -> None:
        assert self.proc
        try:
            os.killpg(self.proc.pid, sig)  # our own session: pgid == pid
        except (ProcessLookupError, PermissionError):
            pass

    def stderr_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# --------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------


def _split_hostport(address: str) -> tuple[str, str]:
    """``tcp:127.0.0.1:4242`` -> ("tcp", "127.0.0.1:4242")."""
    transport, _, rest = address.partition(":")
    return transport, rest


def run_loadgen(
    srv: SubjectProcess, wl: Workload, settings: Settings, conns: int
) -> dict[str, Any]:
    """Run the C load generator; sample server CPU at its window marks."""
    transport, target = _split_hostport(srv.address)
    cmd = [str(LOADGEN_BIN), f"--{transport}", target, "-c", str(conns), "-d", str(wl.depth),
           "-s", str(settings.size), "-t", str(settings.duration), "-w", str(settings.warmup),
           "--ramp-timeout", "3" if settings.smoke else "10"]
    if wl.churn:
        cmd.append("--churn")
    if wl.tls:
        cmd.append("--tls")
    limit = settings.warmup + settings.duration + (3 if settings.smoke else 10) + 10
    cpu: dict[str, CpuSample] = {}
    out_lines: list[str] = []
    proc = subprocess.Popen(pinned(cmd, CLIENT_CPU, settings), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + limit
        assert proc.stdout
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError(f"loadgen exceeded {limit:.0f}s")
                line = proc.stdout.readline()
                if not line:
                    break
                line = line.strip()
                if line == "MARK start":
                    cpu["start"] = sample_cpu(srv.pid)
                elif line == "MARK end":
                    cpu["end"] = sample_cpu(srv.pid)
                elif line:
                    out_lines.append(line)
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read() if proc.stderr else ""
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    if proc.returncode != 0 or not out_lines:
        raise RuntimeError(f"loadgen exit {proc.returncode}: {err.strip()[-500:]}")
    result = json.loads(out_lines[-1])
    if "start" not in cpu or "end" not in cpu:
        raise RuntimeError("loadgen did not report its measurement window")
    lat = result["latency_us"]
    server_cpu, cpu_source = server_cpu_delta(cpu["start"], cpu["end"], bool(settings.taskset))
    notes = []
    if result.get("ramp_incomplete"):
        notes.append(f"{result['ramp_incomplete']} connection(s) without a reply when the "
                     f"window opened (after {result['ramp_seconds']:.1f}s)")
    if result.get("stalled"):
        notes.append(f"{result['stalled']} connection(s) stalled >1s at the end")
    if result.get("udp_retries"):
        notes.append(f"{result['udp_retries']} UDP datagram(s) re-sent")
    return {
        "rps": result["rps"], "requests": result["requests"], "seconds": result["seconds"],
        "errors": result["errors"], "lat_p50_us": lat["p50"], "lat_p90_us": lat["p90"],
        "lat_p99_us": lat["p99"], "server_cpu_s": round(server_cpu, 3), "cpu_source": cpu_source,
        "proc_cpu_s": round(cpu["end"].proc_s - cpu["start"].proc_s, 3),
        "cpu_busy_s": round(cpu["end"].cpu_busy_s - cpu["start"].cpu_busy_s, 3),
        "steal_s": round(cpu["end"].steal_s - cpu["start"].steal_s, 3),
        "req_per_cpu_s": result["requests"] / server_cpu if server_cpu > 0 else None,
        "detail": result, **({"note": "; ".join(notes)} if notes else {}),
    }


def run_wrk(srv: SubjectProcess, wl: Workload, settings: Settings, conns: int) -> dict[str, Any]:
    """Run wrk (integer seconds: wrk rejects fractions) after a 1 s warm-up."""
    assert settings.wrk
    _, target = _split_hostport(srv.address)
    url = f"http://{target}/"
    seconds = max(1, round(settings.duration))

    wrk_bin: str = settings.wrk

    def wrk(secs: int) -> subprocess.CompletedProcess:
        cmd = [wrk_bin, "-t1", f"-c{conns}", f"-d{secs}s", "--timeout", "5s",
               "-s", str(WRK_SCRIPT), url]
        return subprocess.run(pinned(cmd, CLIENT_CPU, settings), capture_output=True, text=True,
                              timeout=secs + 30, stdin=subprocess.DEVNULL)

    if settings.warmup > 0 and not settings.smoke:
        wrk(1)
    cpu0 = sample_cpu(srv.pid)
    res = wrk(seconds)
    cpu1 = sample_cpu(srv.pid)
    match = re.search(r"^WRKJSON (\{.*\})$", res.stdout, re.M)
    if res.returncode != 0 or not match:
        raise RuntimeError(f"wrk exit {res.returncode}: {(res.stdout + res.stderr).strip()[-500:]}")
    data = json.loads(match.group(1))
    secs = data["duration_us"] / 1e6
    errors = sum(data[k] for k in ("errors_connect", "errors_read", "errors_write",
                                   "errors_status", "errors_timeout"))
    server_cpu, cpu_source = server_cpu_delta(cpu0, cpu1, bool(settings.taskset))
    return {
        "rps": data["requests"] / secs if secs else 0.0, "requests": data["requests"],
        "seconds": secs, "errors": errors, "lat_p50_us": data["p50"], "lat_p90_us": data["p90"],
        "lat_p99_us": data["p99"], "server_cpu_s": round(server_cpu, 3), "cpu_source": cpu_source,
        "proc_cpu_s": round(cpu1.proc_s - cpu0.proc_s, 3),
        "cpu_busy_s": round(cpu1.cpu_busy_s - cpu0.cpu_busy_s, 3),
        "steal_s": round(cpu1.steal_s - cpu0.steal_s, 3),
        "req_per_cpu_s": data["requests"] / server_cpu if server_cpu > 0 else None,
        "detail": data,
    }


def _connect(address: str, timeout: float) -> socket.socket:
    transport, target = _split_hostport(address)
    if transport == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(target)
        return sock
    host, _, port = target.rpartition(":")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def tls_probe(address: str, timeout: float) -> str | None:
    """One TLS 1.3 handshake and line echo with a subject; None if fine, else what went wrong."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the bench's throwaway certificate
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        with _connect(address, timeout) as raw, context.wrap_socket(raw) as sock:
            if not _echo_once(sock, b"tls probe\n", time.monotonic() + timeout):
                return "no echo over TLS"
            if sock.version() != "TLSv1.3":
                return f"negotiated {sock.version()}"
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    return None


def _echo_once(sock: socket.socket, payload: bytes, deadline: float) -> bool:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload) and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(len(payload) - len(got))
        if not chunk:
            break
        got += chunk
    return got == payload


def run_idle(srv: SubjectProcess, wl: Workload, settings: Settings, conns: int) -> dict[str, Any]:
    """Server memory per idle connection.

    One warm-up exchange, baseline memory, then ``conns`` connections that
    send nothing; once the server has accepted them all (fd / child count)
    and settled, memory again.  Afterwards every connection must still echo
    a line (counted as errors otherwise).
    """
    pid = srv.pid
    sock = _connect(srv.address, 5)
    try:
        _echo_once(sock, b"warm-up\n", time.monotonic() + 5)
    finally:
        sock.close()
    time.sleep(0.3 if not settings.smoke else 0.1)
    base_kib = server_memory_kib(pid)
    base_accepted = accepted_connections(pid)
    socks: list[socket.socket] = []
    errors = 0
    try:
        for _ in range(conns):
            try:
                socks.append(_connect(srv.address, 5))
            except OSError:
                errors += 1
        deadline = time.monotonic() + (5 if settings.smoke else 20)
        while (accepted_connections(pid) < base_accepted + len(socks)
               and time.monotonic() < deadline):
            time.sleep(0.05)
        not_accepted = max(0, base_accepted + len(socks) - accepted_connections(pid))
        time.sleep(0.2 if settings.smoke else 0.5)
        loaded_kib = server_memory_kib(pid)
        # Every idle connection must still work.
        deadline = time.monotonic() + 10
        for i, s in enumerate(socks):
            try:
                s.sendall(b"still-there %d\n" % i)
            except OSError:
                errors += 1
        for i, s in enumerate(socks):
            try:
                ok = _echo_tail(s, b"still-there %d\n" % i, deadline)
            except OSError:
                ok = False
            errors += not ok
    finally:
        for s in socks:
            s.close()
    n = max(1, len(socks))
    return {
        "kib_per_conn": (loaded_kib - base_kib) / n, "rss_base_kib": base_kib,
        "rss_loaded_kib": loaded_kib, "errors": errors, "requests": len(socks),
        "detail": {"not_accepted_in_time": not_accepted, "connections": len(socks)},
    }


def _echo_tail(sock: socket.socket, expected: bytes, deadline: float) -> bool:
    got = b""
    while len(got) < len(expected):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        chunk = sock.recv(len(expected) - len(got))
        if not chunk:
            return False
        got += chunk
    return got == expected


DRIVERS: dict[str, Callable[..., dict[str, Any]]] = {
    "echo": run_loadgen, "udp": run_loadgen, "http": run_wrk, "idle": run_idle,
}


# --------------------------------------------------------------------------
# Scheduling
# --------------------------------------------------------------------------


Group = tuple[int, Subject, list[Workload]]


@dataclass
class Runner:
    """Executes the plan and collects one record per (repetition, workload, subject).

    Full runs start a fresh server for every record.  Smoke runs start each
    subject once per server mode (tcp echo, unix, udp, http) and run all of
    that mode's workloads against it, to stay within the CI time budget.
    """

    settings: Settings
    records: list[dict[str, Any]] = field(default_factory=list)
    failed_start: dict[tuple[str, str, str], str] = field(default_factory=dict)
    skipped_start: set[tuple[str, str, str]] = field(default_factory=set)
    raw_fh: Any = None

    def skip_reason(self, subject: Subject, wl: Workload) -> str | None:
        if subject.needs_uvloop and not self.settings.have_uvloop:
            return "uvloop not importable"
        if wl.kind == "http" and not self.settings.wrk:
            return "wrk not available"
        if wl.tls and self.settings.tls is None:
            return self.settings.tls_skip
        return None

    def plan(self) -> list[Group]:
        """Interleaved order: for each repetition, each workload, every subject."""
        s = self.settings
        if s.smoke:
            groups: list[Group] = []
            for subject in s.subjects:
                by_mode: dict[tuple[str, str], list[Workload]] = {}
                for wl in s.workloads:
                    if applies(subject, wl):
                        by_mode.setdefault((wl.mode, wl.proto), []).append(wl)
                groups += [(0, subject, wls) for wls in by_mode.values()]
            return groups
        return [(rep, subject, [wl]) for rep in range(s.repeat) for wl in s.workloads
                for subject in s.subjects if applies(subject, wl)]

    def execute(self) -> None:
        groups = self.plan()
        total = sum(len(wls) for _, _, wls in groups)
        est = sum(self.estimate(wl) for _, _, wls in groups for wl in wls)
        log(f"[run] {total} runs planned, estimated {est / 60:.1f} min")
        t0 = time.monotonic()
        done = 0
        for rep, subject, wls in groups:
            for rec in self.run_group(rep, subject, wls):
                done += 1
                self.records.append(rec)
                if self.raw_fh:
                    self.raw_fh.write(json.dumps(rec) + "\n")
                    self.raw_fh.flush()
                wl = WORKLOADS_BY_NAME[rec["workload"]]
                value = rec.get(wl.metric)
                shown = "-" if value is None else (
                    f"{value:,.1f} KiB/conn" if wl.kind == "idle" else f"{value:,.0f} req/s")
                note = rec.get("note", "").replace("\n", " | ")
                log(f"[{done}/{total} {time.monotonic() - t0:5.0f}s] rep {rep + 1} "
                    f"{wl.name:<11} {subject.name:<17} {rec['status']:<12} {shown}"
                    + (f"  errors={rec.get('errors')}" if rec.get("errors") else "")
                    + (f"  ({note[:300]})" if note else ""))

    def estimate(self, wl: Workload) -> float:
        s = self.settings
        if wl.kind == "idle":
            return 2.5 if not s.smoke else 0.6
        if wl.kind == "http":
            return max(1, round(s.duration)) + (1 if not s.smoke else 0) + 0.5
        return s.warmup + s.duration + (0.15 if s.smoke else 0.5)

    def new_record(self, rep: int, wl: Workload, subject: Subject) -> dict[str, Any]:
        s = self.settings
        return {
            "type": "run", "stamp": s.stamp, "rep": rep, "workload": wl.name,
            "subject": subject.name, "family": subject.family, "status": "ok",
            "conns": wl.smoke_conns if s.smoke else wl.conns, "depth": wl.depth,
            "duration": s.duration, "warmup": s.warmup, "time": time.time(),
        }

    def run_group(self, rep: int, subject: Subject, wls: list[Workload]) -> list[dict[str, Any]]:
        """Start the subject once, run ``wls`` (same server mode) against it, stop it."""
        s = self.settings
        recs = [self.new_record(rep, wl, subject) for wl in wls]
        first = wls[0]
        reason = self.skip_reason(subject, first)
        key = (subject.name, first.mode, first.proto)
        status = "skipped"
        if reason is None and key in self.skipped_start:
            reason = self.failed_start[key]
        elif reason is None and key in self.failed_start:
            reason, status = "failed to start earlier: " + self.failed_start[key], "failed-start"
        if reason:
            for rec in recs:
                rec["status"], rec["note"] = status, reason
            return recs
        tag = f"r{rep + 1}-{first.name if len(wls) == 1 else first.mode}-{subject.name}"
        srv = SubjectProcess(subject, first, s, tag)
        try:
            with srv:
                for wl, rec in zip(wls, recs, strict=True):
                    rec["address"] = srv.address
                    if not srv.alive():
                        rec["status"], rec["note"] = "crashed", "server exited earlier"
                        continue
                    t_run = time.monotonic()
                    try:
                        rec.update(DRIVERS[wl.kind](srv, wl, s, rec["conns"]))
                    except (RuntimeError, OSError, subprocess.SubprocessError,
                            ValueError) as exc:
                        rec["status"] = "driver-error"
                        rec["note"] = f"{type(exc).__name__}: {exc}"[:500]
                    rec["wall_s"] = round(time.monotonic() - t_run, 3)
                    if not srv.alive():
                        rec["status"] = "crashed"
                        rec["note"] = (rec.get("note", "")
                                       + " server exited during the run").strip()
        except FeatureMissing as exc:
            self.failed_start[key] = str(exc)
            self.skipped_start.add(key)
            for rec in recs:
                rec["status"], rec["note"] = "skipped", str(exc)
        except StartFailure as exc:
            tail = _stderr_tail(srv.stderr_text()) or str(exc)
            self.failed_start[key] = tail
            for rec in recs:
                rec["status"], rec["note"] = "failed-start", tail
        # A subject skipped for a missing feature said why on stderr: that is the note.
        feature_missing = all(rec["status"] == "skipped" for rec in recs)
        stderr = {} if feature_missing else _summarize_stderr(srv.stderr_text())
        for rec in recs:
            rec["stop"] = srv.stop_method
            if rec["status"] == "ok":
                if rec.get("errors"):
                    rec["status"] = "errors"
                elif WORKLOADS_BY_NAME[rec["workload"]].kind != "idle" and not rec.get("requests"):
                    rec["status"] = "no-progress"
            if srv.stop_method == "kill":
                rec["note"] = (rec.get("note", "") + " needed SIGKILL to stop").strip()
        recs[-1]["stderr"] = stderr
        if stderr:
            recs[-1]["stderr_log"] = _shown(srv.log_path)
        else:
            try:
                srv.log_path.unlink()
            except OSError:
                pass
        time.sleep(s.settle)
        return recs


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (--out may be elsewhere)."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _stderr_tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b.*)$", re.M)


def _summarize_stderr(text: str) -> dict[str, int]:
    """Count distinct exception lines ("ValueError: ...") in a subject's stderr."""
    counts: dict[str, int] = {}
    for match in _EXC_LINE.finditer(text):
        line = re.sub(r"\d+", "N", match.group(1))[:160]
        counts[line] = counts.get(line, 0) + 1
    if text.strip() and not counts:
        counts["(other output) " + text.strip().splitlines()[-1][:120]] = 1
    return counts


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


@dataclass
class Cell:
    """Aggregated figures of one (workload, subject)."""

    values: list[float]
    cpu: list[float]
    p50: list[float]
    p99: list[float]
    errors: int
    statuses: dict[str, int]
    notes: list[str]

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


def aggregate(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], Cell]:
    cells: dict[tuple[str, str], Cell] = {}
    for rec in records:
        if rec.get("type") != "run":
            continue
        wl = WORKLOADS_BY_NAME.get(rec["workload"])
        if wl is None:
            continue
        cell = cells.setdefault((rec["workload"], rec["subject"]),
                                Cell([], [], [], [], 0, {}, []))
        cell.statuses[rec["status"]] = cell.statuses.get(rec["status"], 0) + 1
        cell.errors += int(rec.get("errors") or 0)
        if rec.get("note") and rec["note"] not in cell.notes:
            cell.notes.append(rec["note"])
        if rec["status"] != "ok":  # medians over clean runs; the rest is flagged
            continue
        value = rec.get(wl.metric)
        if value is not None:
            cell.values.append(float(value))
        if rec.get("req_per_cpu_s"):
            cell.cpu.append(float(rec["req_per_cpu_s"]))
        if rec.get("lat_p50_us") is not None:
            cell.p50.append(float(rec["lat_p50_us"]))
            cell.p99.append(float(rec["lat_p99_us"]))
    return cells


def _fmt(x: float | None, kib: bool = False) -> str:
    if x is None:
        return "-"
    if kib:
        return f"{x:,.1f}"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def reference_median(cells: dict[tuple[str, str], Cell], wl: str, subject: str,
                     label: str, candidates: tuple[str, ...]) -> tuple[str | None, float | None]:
    names = (STDLIB_SAME_MODE.get(subject),) if label == "stdlib" else candidates
    for name in names:
        if name and (wl, name) in cells and cells[(wl, name)].median is not None:
            return name, cells[(wl, name)].median
    return None, None


def render_table(cells: dict[tuple[str, str], Cell], workloads: Sequence[Workload],
                 subjects: Sequence[Subject]) -> str:
    """The text report: one block per workload."""
    out: list[str] = []
    for wl in workloads:
        rows = [s for s in subjects if (wl.name, s.name) in cells]
        if not rows:
            continue
        out.append("")
        unit = "KiB/conn" if wl.kind == "idle" else "req/s"
        out.append(f"== {wl.name}: {wl.description}")
        refs_used = []
        for label, cands in REFERENCES:
            cands = reference_candidates(label, cands, wl)
            if label == "stdlib":
                refs_used.append("stdlib=same mode (ours-async vs stdlib-threading)")
                continue
            name = next((c for c in cands if (wl.name, c) in cells
                         and cells[(wl.name, c)].median is not None), None)
            refs_used.append(f"{label}={name or 'n/a'}")
        out.append("   ratios = subject / reference" + (" (lower is better)" if wl.lower_is_better
                                                        else "") + ": " + ", ".join(refs_used))
        if wl.kind == "idle":
            hdr = f"{'subject':<17} {unit + ' median':>15} {'[min - max]':>21}"
        else:
            hdr = (f"{'subject':<17} {unit + ' median':>13} {'[min - max]':>21} "
                   f"{'req/CPU-s':>10} {'p50 us':>8} {'p99 us':>8}")
        hdr += f" {'err':>5} " + " ".join(f"{'x' + label:>8}" for label, _ in REFERENCES)
        out.append(hdr)
        for s in rows:
            cell = cells[(wl.name, s.name)]
            kib = wl.kind == "idle"
            med = cell.median
            if cell.values:
                rng = f"[{_fmt(min(cell.values), kib)} - {_fmt(max(cell.values), kib)}]"
            else:
                rng = ", ".join(f"{k} x{v}" for k, v in sorted(cell.statuses.items()))
            if kib:
                line = f"{s.name:<17} {_fmt(med, kib):>15} {rng:>21}"
            else:
                cpu = statistics.median(cell.cpu) if cell.cpu else None
                p50 = statistics.median(cell.p50) if cell.p50 else None
                p99 = statistics.median(cell.p99) if cell.p99 else None
                line = (f"{s.name:<17} {_fmt(med):>13} {rng:>21} {_fmt(cpu):>10} "
                        f"{_fmt(p50):>8} {_fmt(p99):>8}")
            ratios = []
            for label, cands in REFERENCES:
                cands = reference_candidates(label, cands, wl)
                _, ref = reference_median(cells, wl.name, s.name, label, cands)
                ratios.append(f"{_ratio(med, ref):>8}")
            line += f" {cell.errors:>5} " + " ".join(ratios)
            bad = {k: v for k, v in cell.statuses.items() if k != "ok"}
            if bad and cell.values:
                line += "  !" + ",".join(f"{k}x{v}" for k, v in sorted(bad.items()))
            out.append(line)
    return "\n".join(out) + "\n"


FAMILY_COLORS = {"ours": "#d62728", "stdlib": "#1f77b4", "asyncio": "#2ca02c",
                 "uvloop": "#9467bd", "floor": "#7f7f7f"}


def render_svg(cells: dict[tuple[str, str], Cell], workloads: Sequence[Workload],
               subjects: Sequence[Subject], metric: str, title: str) -> str:
    """A hand-written SVG: one horizontal bar panel per workload.

    ``metric`` is "value" (req/s, or KiB/conn for the idle workload) or "cpu"
    (requests per server CPU-second).  Bars show the median, whiskers min-max.
    """
    width, label_w, bar_w, row_h, pad = 900, 150, 560, 18, 10
    parts: list[str] = []
    y = 40
    for wl in workloads:
        if metric == "cpu" and wl.kind == "idle":
            continue
        rows = []
        for s in subjects:
            cell = cells.get((wl.name, s.name))
            if not cell:
                continue
            vals = cell.values if metric == "value" else cell.cpu
            if vals:
                rows.append((s, statistics.median(vals), min(vals), max(vals)))
        if not rows:
            continue
        unit = ("KiB per idle connection (lower is better)" if wl.kind == "idle"
                else "requests/s" if metric == "value" else "requests per server CPU-second")
        parts.append(f'<text x="{pad}" y="{y}" font-weight="bold">'
                     f'{html.escape(wl.name)}: {html.escape(wl.description)} [{unit}]</text>')
        y += 8
        top = max(r[3] for r in rows) or 1.0
        for s, med, lo, hi in rows:
            y += row_h
            bw = bar_w * med / top
            color = FAMILY_COLORS.get(s.family, "#333")
            x0 = pad + label_w
            parts.append(f'<text x="{pad + label_w - 6}" y="{y - 4}" text-anchor="end">'
                         f'{html.escape(s.name)}</text>')
            parts.append(f'<rect x="{x0}" y="{y - row_h + 4}" width="{bw:.1f}" '
                         f'height="{row_h - 6}" fill="{color}"/>')
            wy = y - row_h / 2 + 1
            parts.append(f'<line x1="{x0 + bar_w * lo / top:.1f}" y1="{wy:.1f}" '
                         f'x2="{x0 + bar_w * hi / top:.1f}" y2="{wy:.1f}" stroke="#000"/>')
            label = f"{med:,.1f}" if wl.kind == "idle" else f"{med:,.0f}"
            parts.append(f'<text x="{x0 + bar_w * hi / top + 6:.1f}" y="{y - 4}">{label}</text>')
        y += 28
    legend_x = pad
    legend = []
    for fam, color in FAMILY_COLORS.items():
        legend.append(f'<rect x="{legend_x}" y="{y}" width="12" height="12" fill="{color}"/>'
                      f'<text x="{legend_x + 16}" y="{y + 11}">{fam}</text>')
        legend_x += 100
    y += 30
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
            f'viewBox="0 0 {width} {y}" font-family="sans-serif" font-size="12">'
            f'<rect width="100%" height="100%" fill="#fff"/>'
            f'<text x="{pad}" y="20" font-size="15" font-weight="bold">{html.escape(title)}</text>')
    return head + "".join(parts) + "".join(legend) + "</svg>\n"


def render_problems(records: Sequence[dict[str, Any]]) -> str:
    """Non-ok runs and exceptions seen on subjects' stderr, grouped by subject."""
    lines: list[str] = []
    by_subject: dict[str, dict[str, int]] = {}
    for rec in records:
        if rec.get("type") != "run":
            continue
        for exc, n in (rec.get("stderr") or {}).items():
            d = by_subject.setdefault(rec["subject"], {})
            d[exc] = d.get(exc, 0) + n
        if rec["status"] not in ("ok", "skipped"):
            lines.append(f"  {rec['subject']} / {rec['workload']} rep {rec['rep'] + 1}: "
                         f"{rec['status']}" + (f" - {rec['note']}" if rec.get("note") else "")
                         + (f" (errors={rec['errors']})" if rec.get("errors") else ""))
    skipped = sorted({(r["subject"], r.get("note", "")) for r in records
                      if r.get("type") == "run" and r["status"] == "skipped"})
    out = []
    if skipped:
        out.append("Skipped:")
        out += [f"  {s}: {n}" for s, n in skipped]
    if lines:
        out.append("Problems:")
        out += lines[:60] + ([f"  ... {len(lines) - 60} more"] if len(lines) > 60 else [])
    if by_subject:
        out.append("Exceptions on subjects' stderr (count; logs kept in the results dir):")
        for subj, excs in sorted(by_subject.items()):
            for exc, n in sorted(excs.items(), key=lambda kv: -kv[1]):
                out.append(f"  {subj}: {n} x {exc}")
    return "\n".join(out) + ("\n" if out else "")


def hardware() -> str:
    """CPU model, CPU count, kernel: printed beside every figure."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    virt = ""
    try:
        with open("/proc/cpuinfo") as fh:
            if " hypervisor" in fh.read():
                virt = ", virtual machine"
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs{virt}, Linux {platform.release()}"


def report_header(records: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Command, date, hardware, method and noise sources of one run."""
    runs = [r for r in records if r.get("type") == "run" and "steal_s" in r]
    steal = sum(r["steal_s"] for r in runs)
    busy = sum(r.get("seconds") or 0 for r in runs) * 2  # two CPUs during each window
    lines = [
        f"Benchmark {meta.get('stamp')}: Python {meta.get('python_version')}, "
        f"{meta.get('repeat')} repetition(s) x {meta.get('duration')} s "
        f"(+{meta.get('warmup')} s warm-up), interleaved; medians [min - max] over the "
        f"repetitions",
        f"  command:  {meta.get('command', 'python bench/run.py')}",
        f"  date:     {meta.get('date', meta.get('stamp'))}",
        f"  hardware: {meta.get('hardware', '?')}; server on CPU {SERVER_CPU}, load "
        f"generator on CPU {CLIENT_CPU} (taskset: {'yes' if meta.get('taskset') else 'no'})",
    ]
    if runs and busy:
        lines.append(f"  noise:    hypervisor steal {steal:.1f} s over {busy:.0f} CPU-s of "
                     f"measurement windows ({100 * steal / busy:.1f} %); other processes on "
                     "the machine are not excluded (a shared machine: compare ratios within "
                     "one run, and the min-max ranges)")
    return "\n".join(lines) + "\n"


def write_reports(records: list[dict[str, Any]], meta: dict[str, Any], out_dir: Path,
                  stamp: str, workloads: Sequence[Workload], subjects: Sequence[Subject]) -> str:
    cells = aggregate(records)
    header = report_header(records, meta)
    text = header + render_table(cells, workloads, subjects) + "\n" + render_problems(records)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"summary-{stamp}.txt").write_text(text)
    title = f"socket servers, Python {meta.get('python_version')} ({stamp})"
    (out_dir / f"chart-{stamp}-rps.svg").write_text(
        render_svg(cells, workloads, subjects, "value", title + ": throughput"))
    (out_dir / f"chart-{stamp}-cpu.svg").write_text(
        render_svg(cells, workloads, subjects, "cpu", title + ": CPU efficiency"))
    return text


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _select(patterns: str | None, items: Sequence[Any], what: str) -> list[Any]:
    if not patterns:
        return list(items)
    chosen = []
    for pat in (p.strip() for p in patterns.split(",") if p.strip()):
        hits = [it for it in items if fnmatch.fnmatch(it.name, pat)]
        if not hits:
            raise SystemExit(f"no {what} matches {pat!r}; try --list")
        chosen += [h for h in hits if h not in chosen]
    return [it for it in items if it in chosen]  # keep the canonical order


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark the socket servers.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("What it does:")[0].split("Usage", 1)[1])
    p.add_argument("--smoke", action="store_true",
                   help="CI check: every subject x workload once, ~0.15 s, few connections; "
                        "non-zero exit on start failures or loadgen errors")
    p.add_argument("--subjects", help="comma-separated names or globs (e.g. 'ours-*,selectors')")
    p.add_argument("--workloads", help="comma-separated names or globs (e.g. 'echo-*')")
    p.add_argument("--repeat", type=int, help="repetitions (default 5; smoke 1)")
    p.add_argument("--duration", type=float, help="measured seconds per run (default 2; smoke 0.1)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per run (default 0.5; smoke 0.05)")
    p.add_argument("--size", type=int, default=64, help="echo line size in bytes (default 64)")
    p.add_argument("--python", help="interpreter for the subjects (default: this one); "
                                    "gets its own bench/.venv-X.Y")
    p.add_argument("--no-setup", action="store_true",
                   help="do not create the venv / pip / apt-get (loadgen is still built)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    p.add_argument("--list", action="store_true", help="list subjects and workloads and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="print the planned runs and the time estimate, run nothing")
    p.add_argument("--report", type=Path, help="re-render the report of a raw-*.jsonl file")
    p.add_argument("--cold-malloc", action="store_true",
                   help="subjects skip their allocator warm-up: asyncio is then measured in a "
                        "fresh process's glibc malloc state (every 256 KiB read mmap()s)")
    return p.parse_args(argv)


def list_matrix() -> str:
    lines = ["Subjects:"]
    lines += [f"  {s.name:<17} {s.description}" for s in SUBJECTS]
    lines.append("Workloads (subjects taking part):")
    for wl in WORKLOADS:
        names = ", ".join(s.name for s in SUBJECTS if applies(s, wl))
        lines.append(f"  {wl.name:<11} {wl.description}\n              {names}")
    return "\n".join(lines)


def report_only(path: Path, out_dir: Path) -> int:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    meta: dict[str, Any] = next((r for r in records if r.get("type") == "meta"), {})
    stamp = meta.get("stamp") or path.stem.replace("raw-", "")
    print(write_reports(records, meta, out_dir, stamp, WORKLOADS, SUBJECTS), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print(list_matrix())
        return 0
    if args.report:
        return report_only(args.report, args.out)
    smoke = args.smoke
    duration = args.duration if args.duration is not None else (0.1 if smoke else 2.0)
    warmup = args.warmup if args.warmup is not None else (0.05 if smoke else 0.5)
    repeat = args.repeat if args.repeat is not None else (1 if smoke else 5)
    if repeat < 1 or duration <= 0 or warmup < 0:
        raise SystemExit("--repeat must be >= 1, --duration > 0, --warmup >= 0")
    subjects = _select(args.subjects, SUBJECTS, "subject")
    workloads = _select(args.workloads, WORKLOADS, "workload")

    if args.dry_run:
        dry = Runner(Settings(
            python=sys.executable, duration=duration, warmup=warmup, repeat=repeat, smoke=smoke,
            size=args.size, subjects=subjects, workloads=workloads, have_uvloop=True,
            wrk="wrk", taskset=None, out_dir=args.out, stamp="dry", log_dir=args.out))
        groups = dry.plan()
        for rep, subject, wls in groups:
            print(f"rep {rep + 1}  {subject.name:<17} {' '.join(w.name for w in wls)}")
        est = sum(dry.estimate(w) for _, _, wls in groups for w in wls)
        print(f"{sum(len(w) for _, _, w in groups)} runs, estimated {est / 60:.1f} min")
        return 0
    taskset = pin_self()
    install = not (smoke or args.no_setup)
    base_python = args.python or sys.executable
    python = ensure_venv(base_python, install)
    build_loadgen()
    tls: TlsFiles | None = None
    tls_skip = ""
    tls_tmp: tempfile.TemporaryDirectory | None = None
    if any(w.tls for w in workloads):
        ensure_openssl_dev(install)
        if not loadgen_has_tls():
            tls_skip = "loadgen built without TLS (install libssl-dev, or run without --smoke)"
        else:
            tls_tmp = tempfile.TemporaryDirectory(prefix="bench-tls-")
            tls = make_tls_files(Path(tls_tmp.name))
            tls_skip = "" if tls else "no openssl command to make the bench certificate"
        if tls is None:
            log(f"[setup] TLS workloads skipped: {tls_skip}")
    need_wrk = any(w.kind == "http" for w in workloads)
    wrk = ensure_wrk(install) if need_wrk else None
    need_uvloop = any(s.needs_uvloop for s in subjects)
    have_uvloop = need_uvloop and has_module(python, "uvloop")
    if need_uvloop and not have_uvloop:
        log("[setup] uvloop not importable: uvloop subjects skipped")

    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-smoke" if smoke else "")
    out_dir: Path = args.out
    settings = Settings(
        python=python, duration=duration, warmup=warmup, repeat=repeat, smoke=smoke,
        size=args.size, subjects=subjects, workloads=workloads, have_uvloop=have_uvloop,
        wrk=wrk, taskset=taskset, out_dir=out_dir, stamp=stamp,
        log_dir=out_dir / f"logs-{stamp}", settle=0.05 if smoke else 0.1,
        tls=tls, tls_skip=tls_skip or "TLS not set up", cold_malloc=args.cold_malloc,
    )
    pyver = sh([python, "-c", "import sys; print(sys.version.split()[0])"], 30).stdout.strip()
    meta = {
        "type": "meta", "stamp": stamp, "python": python, "python_version": pyver,
        "platform": platform.platform(), "cpus": os.cpu_count(), "duration": duration,
        "warmup": warmup, "repeat": repeat, "smoke": smoke, "size": args.size,
        "uvloop": have_uvloop, "wrk": wrk, "taskset": bool(taskset),
        "command": " ".join(["python", "bench/run.py", *(argv if argv is not None
                                                          else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "hardware": hardware(),
        "cold_malloc": args.cold_malloc, "tls": bool(tls),
        "subjects": [s.name for s in subjects], "workloads": [w.name for w in workloads],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / f"raw-{stamp}.jsonl"
    log(f"[run] python {pyver} ({python}); raw figures -> {_shown(raw_path)}")
    runner = Runner(settings)
    with open(raw_path, "w") as fh:
        fh.write(json.dumps(meta) + "\n")
        runner.raw_fh = fh
        try:
            runner.execute()
        except KeyboardInterrupt:
            log("[run] interrupted: reporting what was measured")
        finally:
            if tls_tmp is not None:
                tls_tmp.cleanup()
    text = write_reports(runner.records, meta, out_dir, stamp, workloads, subjects)
    print(text, end="")
    try:
        settings.log_dir.rmdir()  # only succeeds when no log was kept
    except OSError:
        log(f"[run] subject stderr logs kept in {_shown(settings.log_dir)}")
    log(f"[run] wrote {raw_path.name}, summary-{stamp}.txt, chart-{stamp}-rps.svg, "
        f"chart-{stamp}-cpu.svg in {out_dir}")
    if smoke:
        bad = [r for r in runner.records
               if r["status"] in ("failed-start", "crashed", "errors", "no-progress",
                                  "driver-error")]
        if bad:
            log(f"[smoke] FAILED: {len(bad)} run(s) not ok")
            return 1
        log("[smoke] ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
