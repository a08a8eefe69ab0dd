"""Tests of the benchmark harness itself (no performance assertions).

Run with ``python -m pytest bench/tests`` or ``python -m unittest discover -s bench/tests``.
Timeouts below only guard against hangs; no figure is compared to a threshold.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import unittest
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))

import run as bench  # noqa: E402

HAVE_CC = shutil.which(os.environ.get("CC", "cc")) is not None


def loadgen(*args: str, timeout: float = 30) -> dict:
    """Run the load generator, return its JSON report."""
    res = subprocess.run([str(bench.LOADGEN_BIN), *args], capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    assert lines, res.stdout
    return json.loads(lines[-1])


class ToyServer:
    """A threaded TCP/UDP server whose reply is ``transform(data)`` (None = no reply)."""

    def __init__(self, transform: Callable[[bytes], bytes | None], udp: bool = False) -> None:
        self.transform = transform
        self.udp = udp
        kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        if not udp:
            self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []
        main = self._udp_loop if udp else self._accept_loop
        self.threads.append(threading.Thread(target=main, daemon=True))
        self.threads[0].start()

    def _udp_loop(self) -> None:
        while not self.stopping:
            try:
                data, peer = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self.transform(data)
            if reply is not None:
                self.sock.sendto(reply, peer)

    def _accept_loop(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(0.2)
            self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        while not self.stopping:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            reply = self.transform(data)
            if reply:
                try:
                    conn.sendall(reply)
                except OSError:
                    return

    def close(self) -> None:
        self.stopping = True
        for t in self.threads:
            t.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()

    def __enter__(self) -> ToyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@unittest.skipUnless(HAVE_CC, "no C compiler")
class LoadgenTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        bench.build_loadgen()

    def test_compiles_without_warnings(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            res = subprocess.run([os.environ.get("CC", "cc"), "-O2", "-Wall", "-Wextra", "-Werror",
                                  "-o", os.path.join(tmp, "lg"), str(bench.LOADGEN_SRC)],
                                 capture_output=True, text=True, timeout=120)
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertEqual(res.stderr.strip(), "")

    def test_correct_echo_has_no_errors(self) -> None:
        with ToyServer(lambda d: d) as srv:
            for extra in ([], ["-d", "8"], ["--churn"]):
                with self.subTest(extra=extra):
                    out = loadgen("--tcp", f"127.0.0.1:{srv.port}", "-c", "3", "-t", "0.2",
                                  "-w", "0.05", *extra)
                    self.assertEqual(out["errors"], 0, out)
                    self.assertGreater(out["requests"], 0)
                    self.assertGreaterEqual(out["latency_us"]["p99"], out["latency_us"]["p50"])

    def test_corrupted_echo_is_counted(self) -> None:
        with ToyServer(lambda d: d.replace(b"a", b"A")) as srv:
            out = loadgen("--tcp", f"127.0.0.1:{srv.port}", "-c", "2", "-t", "0.2", "-w", "0",
                          "--ramp-timeout", "0.5")
        self.assertGreater(out["mismatches"], 0)
        self.assertEqual(out["requests"], 0)

    def test_silent_server_does_not_hang(self) -> None:
        with ToyServer(lambda d: None) as srv:
            out = loadgen("--tcp", f"127.0.0.1:{srv.port}", "-c", "2", "-t", "0.2", "-w", "0",
                          "--ramp-timeout", "0.3", timeout=20)
        self.assertEqual(out["requests"], 0)
        self.assertEqual(out["ramp_incomplete"], 2)

    def test_refused_connections_are_errors(self) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there now
        out = loadgen("--tcp", f"127.0.0.1:{port}", "-c", "1", "-t", "0.1", "-w", "0",
                      "--ramp-timeout", "0.2")
        self.assertGreater(out["connect_errors"], 0)

    def test_udp_losses_are_retried(self) -> None:
        counter = iter(range(10**9))

        def drop_every_third(data: bytes) -> bytes | None:
            return None if next(counter) % 3 == 2 else data

        with ToyServer(drop_every_third, udp=True) as srv:
            out = loadgen("--udp", f"127.0.0.1:{srv.port}", "-c", "2", "-t", "0.3", "-w", "0",
                          "--udp-timeout", "20")
        self.assertEqual(out["errors"], 0, out)
        self.assertGreater(out["udp_retries"], 0)
        self.assertGreater(out["requests"], 0)

    def test_usage_error(self) -> None:
        res = subprocess.run([str(bench.LOADGEN_BIN), "-c", "1"], capture_output=True, timeout=10)
        self.assertEqual(res.returncode, 2)


class SubjectTests(unittest.TestCase):
    """Reference subjects start, print READY and echo (our subjects: see --smoke)."""

    def start(self, kind: str, addr: str, proto: str = "echo") -> str:
        proc = subprocess.Popen(
            [sys.executable, str(bench.SUBJECT_SCRIPT), "--kind", kind, "--addr", addr,
             "--proto", proto], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        self.addCleanup(self._stop, proc)
        assert proc.stdout
        line = proc.stdout.readline().decode()
        self.assertTrue(line.startswith("READY "), line + proc.stderr.read().decode()
                        if proc.poll() is not None else line)
        return line.split()[1]

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()

    def test_tcp_echo_subjects(self) -> None:
        for kind in ("selectors", "asyncio-streams", "asyncio-protocol", "stdlib-classic",
                     "stdlib-threading"):
            with self.subTest(kind=kind):
                address = self.start(kind, "tcp:127.0.0.1:0")
                with bench._connect(address, 5) as sock:
                    deadline = bench.time.monotonic() + 5
                    self.assertTrue(bench._echo_once(sock, b"hello\nworld\n", deadline))

    def test_unix_and_udp_subjects(self) -> None:
        tmp = tempfile.mkdtemp(prefix="bench-test-")
        self.addCleanup(shutil.rmtree, tmp, True)
        address = self.start("selectors", f"unix:{tmp}/s.sock")
        with bench._connect(address, 5) as sock:
            self.assertTrue(bench._echo_once(sock, b"x\n", bench.time.monotonic() + 5))
        address = self.start("stdlib-classic", "udp:127.0.0.1:0")
        host, port = address.split(":")[1:]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(b"ping", (host, int(port)))
            self.assertEqual(sock.recv(100), b"ping")

    def test_http_subject_keep_alive(self) -> None:
        import http.client

        address = self.start("asyncio-protocol", "tcp:127.0.0.1:0", "http")
        host, port = address.split(":")[1:]
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        for _ in range(3):  # same connection each time
            conn.request("GET", "/")
            resp = conn.getresponse()
            self.assertEqual((resp.status, resp.read()), (200, b"Hello, world!"))
        conn.close()

    def test_unsupported_combination_exits_2(self) -> None:
        res = subprocess.run([sys.executable, str(bench.SUBJECT_SCRIPT), "--kind",
                              "asyncio-streams", "--addr", "udp:127.0.0.1:0"],
                             capture_output=True, timeout=30)
        self.assertEqual(res.returncode, 2)


class HarnessTests(unittest.TestCase):
    def test_matrix(self) -> None:
        by = bench.SUBJECTS_BY_NAME
        wl = bench.WORKLOADS_BY_NAME
        self.assertTrue(bench.applies(by["stdlib-classic"], wl["echo-c1"]))
        self.assertFalse(bench.applies(by["stdlib-classic"], wl["echo-c100"]))
        self.assertTrue(bench.applies(by["stdlib-classic"], wl["udp-s50"]))
        self.assertFalse(bench.applies(by["asyncio-streams"], wl["http-c100"]))
        self.assertTrue(bench.applies(by["ours-async"], wl["unix-c100"]))
        self.assertFalse(bench.applies(by["ours-classic"], wl["idle-c1000"]))

    def test_proc_accounting(self) -> None:
        pgid = os.getpgid(0)
        self.assertIn(os.getpid(), bench.group_pids(pgid))
        self.assertGreaterEqual(bench.group_cpu_seconds(pgid), 0.0)
        self.assertGreater(bench.server_memory_kib(os.getpid()), 0)
        self.assertGreater(bench.accepted_connections(os.getpid()), 0)

    def records(self) -> list[dict]:
        recs = []
        for rep, (ours, ref) in enumerate([(100.0, 200.0), (120.0, 200.0), (110.0, 220.0)]):
            for name, rps in (("ours-async", ours), ("asyncio-streams", ref)):
                recs.append({"type": "run", "rep": rep, "workload": "echo-c100", "subject": name,
                             "family": bench.SUBJECTS_BY_NAME[name].family, "status": "ok",
                             "rps": rps, "requests": int(rps), "errors": 0,
                             "req_per_cpu_s": rps * 2, "lat_p50_us": 10, "lat_p99_us": 20})
        recs.append({"type": "run", "rep": 0, "workload": "echo-c100", "subject": "ours-forking",
                     "family": "ours", "status": "failed-start", "note": "boom",
                     "stderr": {"ValueError: boom": 1}})
        return recs

    def test_table_medians_and_ratios(self) -> None:
        cells = bench.aggregate(self.records())
        self.assertEqual(cells[("echo-c100", "ours-async")].median, 110.0)
        text = bench.render_table(cells, bench.WORKLOADS, bench.SUBJECTS)
        row = next(line for line in text.splitlines() if line.startswith("ours-async"))
        self.assertIn("[100 - 120]", row)
        self.assertIn("0.55", row)  # 110 / 200 against asyncio-streams
        self.assertIn("failed-start", text)
        problems = bench.render_problems(self.records())
        self.assertIn("ValueError: boom", problems)

    def test_svg_is_well_formed(self) -> None:
        cells = bench.aggregate(self.records())
        for metric in ("value", "cpu"):
            svg = bench.render_svg(cells, bench.WORKLOADS, bench.SUBJECTS, metric, "t <&>")
            root = ET.fromstring(svg)
            self.assertTrue(root.tag.endswith("svg"))
            self.assertGreaterEqual(len([e for e in root.iter() if e.tag.endswith("rect")]), 3)

    def test_stderr_summary(self) -> None:
        text = ("Traceback (most recent call last):\n  File x\nConnectionResetError: [Errno 104]"
                " Connection reset by peer\nValueError: bad 12\nValueError: bad 13\n")
        summary = bench._summarize_stderr(text)
        self.assertEqual(summary["ValueError: bad N"], 2)
        self.assertEqual(summary["ConnectionResetError: [Errno N] Connection reset by peer"], 1)

    def test_address_parsing(self) -> None:
        sys.path.insert(0, str(BENCH / "subjects"))
        from subj_common import Address

        a = Address.parse("tcp:[::1]:80")
        self.assertEqual((a.transport, a.host, a.port), ("tcp", "::1", 80))
        self.assertEqual(a.with_bound(("::1", 81)), "tcp:[::1]:81")
        self.assertEqual(Address.parse("unix:/tmp/x").path, "/tmp/x")


if __name__ == "__main__":
    unittest.main()
