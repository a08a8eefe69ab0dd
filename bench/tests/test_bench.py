"""Tests of the benchmark harness itself (no performance assertions).

Run with ``python -m pytest bench/tests`` or ``python -m unittest discover -s bench/tests``.
Timeouts below only guard against hangs; no figure is compared to a threshold.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import resource
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import unittest
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))

import run as bench  # noqa: E402

HAVE_CC = shutil.which(os.environ.get("CC", "cc")) is not None
HAVE_OPENSSL_CLI = shutil.which("openssl") is not None


def have_module(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


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

    def test_without_openssl_tls_is_refused_and_reported(self) -> None:
        """A build without -DLOADGEN_TLS says so (--version) and refuses --tls (usage error)."""
        with tempfile.TemporaryDirectory() as tmp:
            plain = os.path.join(tmp, "lg")
            subprocess.run([os.environ.get("CC", "cc"), "-O2", "-o", plain, str(bench.LOADGEN_SRC)],
                           check=True, capture_output=True, timeout=120)
            version = subprocess.run([plain, "--version"], capture_output=True, text=True,
                                     timeout=10)
            refused = subprocess.run([plain, "--tcp", "127.0.0.1:9", "--tls"],
                                     capture_output=True, text=True, timeout=10)
        self.assertNotIn("tls", version.stdout.split())
        self.assertEqual(refused.returncode, 2)
        self.assertIn("without OpenSSL", refused.stderr)


class TlsEchoServer:
    """A threaded TLS line-echo server (the standard library's blocking SSLSocket)."""

    def __init__(self, files: bench.TlsFiles) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(files.cert, files.key)
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                self.handshakes += 1
                for line in tls.makefile("rb"):
                    tls.sendall(line)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@unittest.skipUnless(HAVE_CC and HAVE_OPENSSL_CLI, "no C compiler or no openssl command")
class LoadgenTlsTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        bench.build_loadgen()
        if not bench.loadgen_has_tls():
            raise unittest.SkipTest("loadgen built without OpenSSL (libssl-dev missing)")
        cls.tmp = tempfile.TemporaryDirectory()
        files = bench.make_tls_files(Path(cls.tmp.name))
        assert files is not None
        cls.files = files

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    def test_keep_alive_and_churn_over_tls(self) -> None:
        srv = TlsEchoServer(self.files)
        self.addCleanup(srv.close)
        out = loadgen("--tcp", f"127.0.0.1:{srv.port}", "--tls", "-c", "3", "-t", "0.3",
                      "-w", "0.05")
        self.assertEqual(out["errors"], 0, out)
        self.assertTrue(out["tls"])
        self.assertGreater(out["requests"], 0)
        self.assertEqual(out["handshakes"], 3)  # keep-alive: one per connection, before the window
        churn = loadgen("--tcp", f"127.0.0.1:{srv.port}", "--tls", "--churn", "-c", "2",
                        "-t", "0.3", "-w", "0")
        self.assertEqual(churn["errors"], 0, churn)
        self.assertGreater(churn["requests"], 0)
        self.assertGreaterEqual(churn["handshakes"], churn["requests"])  # one per request

    def test_plain_server_fails_the_handshake(self) -> None:
        """A server that does not speak TLS is counted as handshake errors, never as requests."""
        with ToyServer(lambda d: d) as srv:
            out = loadgen("--tcp", f"127.0.0.1:{srv.port}", "--tls", "-c", "1", "-t", "0.2",
                          "-w", "0", "--ramp-timeout", "0.5", timeout=20)
        self.assertGreater(out["handshake_errors"], 0)
        self.assertEqual(out["requests"], 0)

    def test_certificate_is_ecdsa_and_not_under_bench(self) -> None:
        self.assertFalse(self.files.cert.startswith(str(BENCH)))
        text = Path(self.files.cert).read_text()
        self.assertIn("BEGIN CERTIFICATE", text)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.files.cert, self.files.key)  # a usable pair


class SubjectTests(unittest.TestCase):
    """Reference subjects start, print READY and echo (our subjects: see --smoke)."""

    def start(self, kind: str, addr: str, proto: str = "echo", *extra: str) -> str:
        proc = subprocess.Popen(
            [sys.executable, str(bench.SUBJECT_SCRIPT), "--kind", kind, "--addr", addr,
             "--proto", proto, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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

    def test_streams_http_subject_keep_alive(self) -> None:
        import http.client

        address = self.start("asyncio-streams", "tcp:127.0.0.1:0", "http")
        host, port = address.split(":")[1:]
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        for _ in range(3):
            conn.request("GET", "/")
            resp = conn.getresponse()
            self.assertEqual((resp.status, resp.read()), (200, b"Hello, world!"))
        conn.close()

    @unittest.skipUnless(HAVE_OPENSSL_CLI, "no openssl command")
    def test_tls_subjects_pass_the_probe(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            files = bench.make_tls_files(Path(tmp))
            assert files is not None
            for kind in ("asyncio-streams", "asyncio-protocol"):
                with self.subTest(kind=kind):
                    address = self.start(kind, "tcp:127.0.0.1:0", "echo",
                                         "--tls-cert", files.cert, "--tls-key", files.key)
                    self.assertIsNone(bench.tls_probe(address, 5))

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
        self.assertTrue(bench.applies(by["asyncio-streams"], wl["http-c100"]))
        self.assertFalse(bench.applies(by["asyncio-streams"], wl["udp-s50"]))
        self.assertTrue(bench.applies(by["ours-async"], wl["udp-s50"]))
        self.assertTrue(bench.applies(by["stdlib-classic"], wl["pipe-c1"]))
        for name in ("ours-async", "asyncio-streams", "uvloop-streams", "asyncio-protocol",
                     "uvloop-protocol"):
            self.assertTrue(bench.applies(by[name], wl["tls-c100"]), name)
            self.assertTrue(bench.applies(by[name], wl["tls-churn"]), name)
        for name in ("selectors", "stdlib-threading", "ours-threading"):
            self.assertFalse(bench.applies(by[name], wl["tls-c100"]), name)
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

    def test_references_protocol_first_streams_first_for_tls(self) -> None:
        recs = []
        for name, rps in (("ours-async", 90.0), ("asyncio-streams", 60.0),
                          ("asyncio-protocol", 100.0), ("uvloop-streams", 45.0),
                          ("uvloop-protocol", 120.0), ("selectors", 150.0)):
            for wl in ("echo-c100", "tls-c100"):
                recs.append({"type": "run", "rep": 0, "workload": wl, "subject": name,
                             "family": bench.SUBJECTS_BY_NAME[name].family, "status": "ok",
                             "rps": rps, "requests": 1, "errors": 0})
        text = bench.render_table(bench.aggregate(recs), bench.WORKLOADS, bench.SUBJECTS)
        blocks = {b.split(":")[0]: b for b in text.split("== ")[1:]}
        plain = next(x for x in blocks["echo-c100"].splitlines() if x.startswith("ours-async"))
        # 90 / uvloop-protocol 120, / asyncio-protocol 100, / selectors 150
        self.assertEqual(plain.split()[-4:], ["0.75", "0.90", "0.60", "-"])
        tls = next(x for x in blocks["tls-c100"].splitlines() if x.startswith("ours-async"))
        # over TLS: / uvloop-streams 45, / asyncio-streams 60 (selectors has no TLS: n/a)
        self.assertEqual(tls.split()[-4:], ["2.00", "1.50", "0.60", "-"])
        self.assertIn("uvloop=uvloop-streams, asyncio=asyncio-streams", blocks["tls-c100"])

    def test_report_header_states_command_date_hardware_noise(self) -> None:
        recs = [dict(r, seconds=2.0, steal_s=0.4) if r["status"] == "ok" else r
                for r in self.records()]
        meta = {"stamp": "s", "python_version": "3.x", "repeat": 3, "duration": 2.0,
                "warmup": 0.5, "command": "python bench/run.py --repeat 3", "date": "D",
                "hardware": bench.hardware(), "taskset": True}
        header = bench.report_header(recs, meta)
        self.assertIn("command:  python bench/run.py --repeat 3", header)
        self.assertIn("date:     D", header)
        self.assertIn(f"{os.cpu_count()} CPUs", header)
        self.assertIn("steal 2.4 s over 24 CPU-s", header)  # 6 runs x 0.4 s; 6 x 2 s x 2 CPUs

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


class AllocatorTests(unittest.TestCase):
    """Why every subject calls warm_allocator(): asyncio's 256 KiB reads under glibc."""

    @unittest.skipUnless(platform.libc_ver()[0] == "glibc", "glibc's mmap threshold")
    def test_warm_allocator_stops_a_mapping_per_256k_read(self) -> None:
        # asyncio's selector transports call sock.recv(256 KiB) per read. Count the page
        # faults of 2000 such reads of a 64-byte message, in a fresh interpreter with and
        # without warm_allocator(): cold, every read maps a fresh block (>= 1 fault each).
        code = textwrap.dedent("""
            import resource, socket, sys
            sys.path.insert(0, sys.argv[1])
            from subj_common import warm_allocator
            if sys.argv[2] == "warm":
                warm_allocator()
            a, b = socket.socketpair()
            for _ in range(100):  # settle anything lazily set up
                a.send(b"x" * 64); b.recv(262144)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(2000):
                a.send(b"x" * 64); b.recv(262144)
            print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        """)
        faults = {}
        for mode in ("cold", "warm"):
            res = subprocess.run([sys.executable, "-c", code, str(BENCH / "subjects"), mode],
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(res.returncode, 0, res.stderr)
            faults[mode] = int(res.stdout)
        self.assertGreaterEqual(faults["cold"], 2000, faults)
        self.assertLess(faults["warm"], 100, faults)


class NagleTests(unittest.TestCase):
    """The asyncio subjects' accepted TCP sockets have Nagle off (asyncio's own default)."""

    def accepted_nodelay(self, kind: str) -> list[int]:
        sys.path.insert(0, str(BENCH / "subjects"))
        import subj_asyncio
        from subj_common import Address

        loop = subj_asyncio.new_loop(kind)
        self.addCleanup(loop.close)
        server, bound = loop.run_until_complete(
            subj_asyncio.listen(kind, Address.parse("tcp:127.0.0.1:0"), "echo", None))
        client = socket.socket()
        client.setblocking(False)
        try:
            async def exchange() -> bytes:
                await loop.sock_connect(client, bound[:2])
                await loop.sock_sendall(client, b"ping\n")
                return await loop.sock_recv(client, 100)

            self.assertEqual(loop.run_until_complete(asyncio.wait_for(exchange(), 10)),
                             b"ping\n")
            # The server side of that connection, found through the objects holding it: the
            # protocol (protocol API) or the StreamWriter (streams).
            transports = [o.transport for o in gc.get_objects()
                          if isinstance(o, subj_asyncio.EchoProtocol) and o.transport]
            transports += [o.transport for o in gc.get_objects()
                           if isinstance(o, asyncio.StreamWriter)]
            live = [t for t in transports if not t.is_closing()]
            mine = [t for t in live
                    if t.get_extra_info("socket").getpeername() == client.getsockname()]
            self.assertEqual(len(mine), 1, live)
            nodelay = [t.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                             socket.TCP_NODELAY) for t in mine]
            for transport in mine:
                transport.close()
            return nodelay
        finally:
            client.close()
            server.close()

            async def settle() -> None:  # let the closes run their callbacks
                for _ in range(3):
                    await asyncio.sleep(0)

            loop.run_until_complete(settle())

    def test_asyncio_subjects_set_tcp_nodelay(self) -> None:
        for kind in ("asyncio-streams", "asyncio-protocol"):
            with self.subTest(kind=kind):
                self.assertEqual(self.accepted_nodelay(kind), [1])

    @unittest.skipUnless(have_module("uvloop"), "uvloop not installed")
    def test_uvloop_subjects_set_tcp_nodelay(self) -> None:
        for kind in ("uvloop-streams", "uvloop-protocol"):
            with self.subTest(kind=kind):
                self.assertEqual(self.accepted_nodelay(kind), [1])


def fake_subject(tmp: str, body: str) -> str:
    """An executable standing in for the subjects' interpreter: it ignores its arguments and
    runs ``body`` (Python) instead of bench/subjects/subject.py."""
    path = os.path.join(tmp, "fake-python")
    with open(path, "w") as fh:
        fh.write(f"#!{sys.executable}\n" + textwrap.dedent(body))
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    return path


PLAIN_ECHO_SERVER = """
    import socket, sys
    srv = socket.create_server(("127.0.0.1", 0))
    print("READY tcp:127.0.0.1:%d" % srv.getsockname()[1], flush=True)
    while True:
        conn, _ = srv.accept()
        conn.settimeout(5)
        try:
            data = conn.recv(65536)
            if data:
                conn.sendall(data)  # a TLS ClientHello comes back as garbage
        except OSError:
            pass
        conn.close()
"""


class TlsSkipTests(unittest.TestCase):
    """Our TLS subject is skipped (not failed) when the library cannot do TLS yet."""

    def run_group(self, python: str, subject: str) -> dict:
        tmp = tempfile.mkdtemp(prefix="bench-test-")
        self.addCleanup(shutil.rmtree, tmp, True)
        settings = bench.Settings(
            python=python, duration=0.1, warmup=0.0, repeat=1, smoke=True, size=64,
            subjects=[], workloads=[], have_uvloop=False, wrk=None, taskset=None,
            out_dir=Path(tmp), stamp="t", log_dir=Path(tmp) / "logs",
            tls=bench.TlsFiles(os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")))
        runner = bench.Runner(settings)
        [rec] = runner.run_group(0, bench.SUBJECTS_BY_NAME[subject],
                                 [bench.WORKLOADS_BY_NAME["tls-c100"]])
        return rec

    def test_subject_without_ssl_context_is_skipped(self) -> None:
        tmp = tempfile.mkdtemp(prefix="bench-test-")
        self.addCleanup(shutil.rmtree, tmp, True)
        python = fake_subject(tmp, """
            import sys
            sys.stderr.write("feature missing: servers.TCPServer has no ssl_context\\n")
            sys.exit(3)
        """)
        rec = self.run_group(python, "ours-async")
        self.assertEqual(rec["status"], "skipped", rec)
        self.assertIn("ssl_context", rec["note"])

    def test_ours_ignoring_ssl_context_is_skipped_a_peer_failing_tls_is_not(self) -> None:
        tmp = tempfile.mkdtemp(prefix="bench-test-")
        self.addCleanup(shutil.rmtree, tmp, True)
        python = fake_subject(tmp, PLAIN_ECHO_SERVER)  # READY, then plaintext only
        rec = self.run_group(python, "ours-async")
        self.assertEqual(rec["status"], "skipped", rec)
        self.assertIn("TLS handshake with the subject failed", rec["note"])
        rec = self.run_group(python, "asyncio-streams")
        self.assertEqual(rec["status"], "failed-start", rec)


if __name__ == "__main__":
    unittest.main()
