"""Helpers shared by every benchmark subject.

A subject is a small server started as a subprocess by ``bench/run.py``::

    python bench/subjects/subject.py --kind KIND --addr tcp:127.0.0.1:0 [--proto echo|http]

It prints ``READY <address>`` on stdout once listening (with the real port
when port 0 was requested) and serves until SIGTERM.  Only that one line is
ever written to stdout; diagnostics go to stderr, which the runner keeps.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

#: Fixed HTTP/1.1 keep-alive reply used by every HTTP "hello" subject.
HTTP_BODY = b"Hello, world!"
HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: " + str(len(HTTP_BODY)).encode() + b"\r\n"
    b"\r\n" + HTTP_BODY
)

#: Listen backlog used by every subject (stdlib socketserver defaults to 5,
#: which makes 100-1000 simultaneous connects crawl through SYN retries).
BACKLOG = 1024

#: ForkingMixIn.max_children defaults to 40 (and our ThreadingMixIn.max_threads
#: to 256): the server would stop accepting with 100 or 1000 long-lived
#: connections.  The benchmark lifts both bounds.
MAX_CHILDREN = 4096

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(BENCH_DIR)

SockAddr = tuple[str, int] | str


@dataclass(frozen=True)
class Address:
    """A parsed ``--addr`` value: ``tcp:HOST:PORT``, ``udp:HOST:PORT`` or ``unix:PATH``."""

    transport: str  # "tcp" | "udp" | "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> Address:
        transport, _, rest = text.partition(":")
        if transport == "unix":
            if not rest:
                raise ValueError("unix address needs a path")
            return cls("unix", path=rest)
        if transport not in ("tcp", "udp"):
            raise ValueError(f"unknown transport in {text!r}")
        host, _, port = rest.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(transport, host=host or "127.0.0.1", port=int(port or 0))

    @property
    def family(self) -> int:
        if self.transport == "unix":
            return socket.AF_UNIX
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def sockaddr(self) -> SockAddr:
        return self.path if self.transport == "unix" else (self.host, self.port)

    def with_bound(self, bound: object) -> str:
        """Render the address actually bound (``bound`` is getsockname())."""
        if self.transport == "unix":
            return f"unix:{self.path}"
        assert isinstance(bound, tuple)
        host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        return f"{self.transport}:{host}:{bound[1]}"


def warm_allocator() -> None:
    """Free one 1 MiB block, so that glibc malloc is in the state a long-running process is in.

    glibc serves allocations above its mmap threshold (128 KiB at start) with a fresh
    mmap() each, and raises the threshold to the size of the first such block that is freed.
    asyncio's selector transports read with ``recv(256 KiB)``: in a process that never freed
    a large block, every read maps 256 KiB, shrinks it with mremap() and unmaps it (plus the
    page faults), which costs asyncio 2-3x its CPU per request on a small echo (measured here:
    ~29k against ~100k+ requests per CPU-second for the protocol API).  Any process that has
    once freed a block above 128 KiB (read a file, parsed a large request, ...) is past that,
    which is what independent measurements of asyncio show; a minimal script is not.  Every
    subject does this, so no library is measured in the fresh-process regime by accident;
    ``--cold-malloc`` (run.py ``--cold-malloc``) measures that regime on purpose.  Subjects
    that never allocate above 128 KiB per read (ours reads 64 KiB) are unaffected.
    """
    block = bytearray(1 << 20)
    del block


def server_tls_context(cert: str, key: str | None) -> ssl.SSLContext:
    """A server ``ssl.SSLContext`` as the ``ssl`` docs build one: defaults plus a certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def remove_stale_unix(addr: Address) -> None:
    """Unlink a leftover Unix socket file before binding."""
    if addr.transport == "unix":
        try:
            os.unlink(addr.path)
        except FileNotFoundError:
            pass


def announce(addr: Address, bound: object) -> None:
    """Print the READY line the runner waits for."""
    sys.stdout.write(f"READY {addr.with_bound(bound)}\n")
    sys.stdout.flush()


def on_sigterm(stop: Callable[[], None]) -> None:
    """Call ``stop()`` from a helper thread on SIGTERM/SIGINT.

    ``socketserver``-style ``shutdown()`` blocks until ``serve_forever()``
    returns, so it must not run on the thread executing ``serve_forever()``.
    Forked children (ForkingMixIn) inherit the handler; they just exit.
    """
    main_pid = os.getpid()

    def handler(signum: int, frame: object | None) -> None:
        if os.getpid() != main_pid:
            os._exit(0)
        threading.Thread(target=stop, name="bench-stop", daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def find_header_end(buf: bytes, start: int = 0) -> int:
    """Index just past the blank line ending an HTTP request head, or -1."""
    i = buf.find(b"\r\n\r\n", start)
    return -1 if i < 0 else i + 4


def wants_close(head: bytes) -> bool:
    """True if an HTTP/1.x request head asks to close the connection."""
    lower = head.lower()
    if b"\r\nconnection:" in lower:
        for line in lower.split(b"\r\n"):
            if line.startswith(b"connection:") and b"close" in line:
                return True
        return False
    return lower.split(b"\r\n", 1)[0].endswith(b"http/1.0")


def unsupported(kind: str, addr: Address, proto: str, tls: object = None) -> NoReturn:
    """Exit with status 2: this subject does not implement that combination."""
    over = " over TLS" if tls is not None else ""
    sys.stderr.write(f"unsupported: {kind} over {addr.transport}{over} with proto {proto}\n")
    raise SystemExit(2)


#: Exit status of a subject whose library lacks a feature (run.py reports it as skipped).
EXIT_FEATURE_MISSING = 3


def feature_missing(message: str) -> NoReturn:
    """Exit with status 3: the library under test cannot do this yet (reported as skipped)."""
    sys.stderr.write(f"feature missing: {message}\n")
    raise SystemExit(EXIT_FEATURE_MISSING)
