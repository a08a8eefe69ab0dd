"""A real HAProxy in front of our servers, for tests (issue 10: behind a real load balancer).

`load_balancer` (a fixture: import it into the test module) starts Debian's haproxy with a
config written under tmp_path: `mode tcp`, one frontend, a backend of the given servers with
`send-proxy-v2` (or `send-proxy` for v1), no health checks. Where haproxy is not installed the
test skips with one line. `read_proxy_header()` is the test side of the wire: a blocking
reader over `servers.proxy.parse_proxy_header()` for classic handlers and raw sockets.

Why it is this way:
- No port race. HAProxy listens on a socket we bound to port 0 and hand over as `fd@N`, so
  the address is known before it starts and nothing else can take it meanwhile (binding,
  closing and passing the number on would race with every other process on the machine).
- No polling for readiness. HAProxy runs in master-worker mode with systemd's notify
  protocol (`-Ws`): we wait for READY=1 on our own NOTIFY_SOCKET, and on a pidfd for an
  early exit, whichever comes first.
- No leaked process. It runs in a session of its own; stopping sends SIGTERM to that whole
  group (SIGUSR1 for a graceful stop, which lets connections finish), waits for the master
  and, through pidfds, for its workers, and SIGKILLs the group if any is left in time.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from servers.proxy import (DEFAULT_MAX_SIZE_BYTES, V1_MAX_LINE_BYTES, ProxyHeaderError,
                           ProxyInfo, parse_proxy_header)

__all__ = ["HAPROXY", "HAProxy", "load_balancer", "read_proxy_header", "requires_haproxy"]

HAPROXY = shutil.which("haproxy", path=os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]))
SKIP_REASON = "haproxy is not installed (apt-get install haproxy; .ci/run installs it)"
requires_haproxy = pytest.mark.skipif(HAPROXY is None, reason=SKIP_REASON)

_SEND_PROXY = {"v1": "send-proxy", "v2": "send-proxy-v2", None: ""}


class HAProxy:
    """One haproxy process in front of `backends`; `address` is where clients connect (known,
    and accepting into its backlog, from construction). Start it once; stop it always.

    Args:
        backends: the servers' addresses: (host, port) tuples or Unix socket paths.
        directory: where the config and haproxy's log (stderr) go; created if missing.
        send_proxy: "v2", "v1", or None for no PROXY header.
        proxy_v2_options: HAProxy's `proxy-v2-options` (e.g. "crc32c", "unique-id").
        host: the frontend's address: "127.0.0.1" or "::1".
        frontend_lines, backend_lines: extra config lines for those sections.
    """

    def __init__(self, backends: Sequence[Any], directory: Path, *, send_proxy: str | None = "v2",
                 proxy_v2_options: Sequence[str] = (), host: str = "127.0.0.1",
                 frontend_lines: Sequence[str] = (), backend_lines: Sequence[str] = ()) -> None:
        if send_proxy not in _SEND_PROXY:
            raise ValueError(f"send_proxy must be 'v1', 'v2' or None, not {send_proxy!r}")
        self.directory = directory
        self.config_path = directory / "haproxy.cfg"
        self.log_path = directory / "haproxy.log"
        options = [_SEND_PROXY[send_proxy]]
        if proxy_v2_options:
            options.append("proxy-v2-options " + ",".join(proxy_v2_options))
        servers = [f"    server s{index} {_haproxy_address(address)} {' '.join(options)}"
                   for index, address in enumerate(backends)]
        # closed by stop(), which start() calls on failure and the fixture at teardown
        self._listener = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host
                                              else socket.AF_INET, backlog=128)
        self.address: tuple[Any, ...] = self._listener.getsockname()
        self.config = "\n".join([
            "global",
            "    maxconn 200",
            "    nbthread 1",
            "    hard-stop-after 10s",
            "    log stderr format raw local0 info",
            "defaults",
            "    mode tcp",
            "    log global",
            "    option tcplog",
            "    timeout connect 5s",
            "    timeout client 30s",
            "    timeout server 30s",
            "frontend front",
            f"    bind fd@{self._listener.fileno()}",
            *(f"    {line}" for line in frontend_lines),
            "    default_backend back",
            "backend back",
            "    balance roundrobin",
            *(f"    {line}" for line in backend_lines),
            *servers,
            "",
        ])
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "not running" if self.process is None else f"pid {self.process.pid}"
        return f"<HAProxy {state} on {self.address[:2]}>"

    def __enter__(self) -> HAProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """The master process's pid (its workers are its children, in its process group)."""
        return None if self.process is None else self.process.pid

    def log(self) -> str:
        """What haproxy wrote so far: start-up notices, errors, one line per connection."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 10.0) -> None:
        """Start haproxy and return once it is ready to relay connections.

        Raises:
            RuntimeError: haproxy exited or was not ready within `timeout` seconds; the
                message holds its log.
        """
        assert HAPROXY is not None, SKIP_REASON
        if self.process is not None or self._listener.fileno() < 0:
            raise RuntimeError(f"{self!r} starts once; make a new HAProxy to start another")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            notify.bind("")  # Linux autobind: a fresh abstract name, nothing to clean up
            name = notify.getsockname()
            env = {**os.environ, "NOTIFY_SOCKET": "@" + name[1:].decode()}
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(
                    [HAPROXY, "-Ws", "-f", str(self.config_path)],
                    pass_fds=[self._listener.fileno()], env=env, start_new_session=True,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            if not self._wait_ready(notify, timeout):
                self.stop()
                raise RuntimeError(f"haproxy did not become ready within {timeout}s; its log:\n"
                                   f"{self.log()}")
        finally:
            notify.close()

    def _wait_ready(self, notify: socket.socket, timeout: float) -> bool:
        """Wait for READY=1 on `notify`; False if haproxy exits or `timeout` passes first."""
        assert self.process is not None
        with selectors.DefaultSelector() as selector:
            selector.register(notify, selectors.EVENT_READ)
            pidfd = _pidfd_open(self.process.pid)
            if pidfd is not None:
                selector.register(pidfd, selectors.EVENT_READ)
            try:
                deadline = time.monotonic() + timeout
                while (remaining := deadline - time.monotonic()) > 0:
                    for key, _ in selector.select(remaining):
                        if key.fileobj is not notify:
                            return False  # the master exited
                        if b"READY=1" in notify.recv(4096).split(b"\n"):
                            return True
                return False
            finally:
                if pidfd is not None:
                    os.close(pidfd)

    def pids(self) -> list[int]:
        """The master's pid and its workers' (empty when not running); Linux /proc."""
        if self.process is None:
            return []
        children: list[int] = []
        for task in Path(f"/proc/{self.process.pid}/task").glob("*"):
            try:
                children += map(int, (task / "children").read_text().split())
            except OSError:
                pass  # the task ended meanwhile
        return [self.process.pid, *children]

    def stop(self, graceful: bool = False, timeout: float = 10.0) -> int | None:
        """Stop haproxy and its workers: SIGTERM to its process group (SIGUSR1 if `graceful`:
        open connections finish first), then SIGKILL to the group if any of them is still
        there after `timeout` seconds. Returns once every one has ended, with the master's
        exit status (None if it was not running). Idempotent."""
        process, workers = self.process, self.pids()[1:]
        self.process = None
        try:
            if process is None:
                return None
            # The signal goes to the whole group: a master signalled before it has set up
            # its handlers dies at once and leaves the workers to stop by themselves.
            pidfds = [fd for fd in map(_pidfd_open, workers) if fd is not None]
            try:
                _signal_group(process.pid, signal.SIGUSR1 if graceful else signal.SIGTERM)
                deadline = time.monotonic() + timeout
                try:
                    status = process.wait(timeout)
                    if _wait_readable(pidfds, deadline - time.monotonic()):
                        return status
                except subprocess.TimeoutExpired:
                    pass
                _signal_group(process.pid, signal.SIGKILL)
                _wait_readable(pidfds, None)
                return process.wait()
            finally:
                for fd in pidfds:
                    os.close(fd)
        finally:
            self._listener.close()


def _signal_group(pgid: int, signum: int) -> None:
    """Signal a group whose leader we have not reaped yet, or whose members still hold its id
    (the kernel reuses no id a group still uses), so it can only be haproxy's."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass  # every member has already ended


def _wait_readable(fds: Sequence[int], timeout: float | None) -> bool:
    """Wait until every pidfd in `fds` is readable (its process ended); False on timeout."""
    with selectors.DefaultSelector() as selector:
        for fd in fds:
            selector.register(fd, selectors.EVENT_READ)
        deadline = None if timeout is None else time.monotonic() + timeout
        while selector.get_map():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            for key, _ in selector.select(remaining):
                selector.unregister(key.fileobj)
        return True


def _haproxy_address(address: Any) -> str:
    """An address in HAProxy's syntax: unix@/path, ipv4@host:port or ipv6@host:port."""
    if isinstance(address, (str, bytes, os.PathLike)):
        return "unix@" + os.fsdecode(address)
    host, port = address[:2]
    return f"ipv6@{host}:{port}" if ":" in host else f"ipv4@{host}:{port}"


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)  # Linux 5.3+
    except (AttributeError, OSError):
        return None  # then only the timeout notices an early exit


@pytest.fixture
def load_balancer(tmp_path: Path) -> Iterator[Callable[..., HAProxy]]:
    """A factory: `load_balancer(backends, **options)` starts an `HAProxy` (same arguments,
    minus `directory`) and returns it; every one started is stopped at teardown."""
    if HAPROXY is None:
        pytest.skip(SKIP_REASON)
    started: list[HAProxy] = []

    def start(backends: Sequence[Any], **options: Any) -> HAProxy:
        balancer = HAProxy(backends, tmp_path / f"haproxy-{len(started)}", **options)
        started.append(balancer)
        balancer.start()
        return balancer

    try:
        yield start
    finally:
        for balancer in started:
            balancer.stop()


def read_proxy_header(sock: socket.socket, accept: str = "any",
                      max_size: int = DEFAULT_MAX_SIZE_BYTES) -> tuple[ProxyInfo, int]:
    """Read the PROXY header from the blocking socket `sock`, and not one byte more.

    Peek at what arrived; while the header is incomplete, everything seen is header, so
    consume it (peeking again would return at once with the same bytes) and wait for more;
    once complete, consume exactly the rest of it. Returns (info with `peer` set, length).

    Raises:
        ProxyHeaderError: malformed, or the peer closed before the header was complete.
    """
    consumed = 0
    seen = b""
    while True:
        peeked = sock.recv(max(max_size, V1_MAX_LINE_BYTES) - consumed, socket.MSG_PEEK)
        if not peeked:
            raise ProxyHeaderError(f"connection closed after {consumed} bytes of a PROXY "
                                   "header")
        result = parse_proxy_header(seen + peeked, accept, max_size)
        wanted = len(peeked) if result is None else result[1] - consumed
        taken = b""
        while len(taken) < wanted:
            taken += sock.recv(wanted - len(taken))
        seen += taken
        consumed += wanted
        if result is not None:
            return result[0].with_peer(sock.getpeername()), result[1]
