"""The worker side of `servers.Supervisor`: one forked process serving every server.

A worker is forked by the supervisor, which has already dropped its own loop's state in the
child (see `supervisor.py`). Here the worker creates a fresh `reactor.Reactor`, sets its own
signal dispositions, registers every server (on its own `SO_REUSEPORT` socket in reuse-port
mode) and serves until SIGTERM, when it stops accepting and drains like a single server does.
It reports to the supervisor over a pipe, one byte per message: READY once it accepts, a
heartbeat from a loop timer (so a loop blocked by a handler misses it), RETIRE at
`max_requests`, and FAILED followed by the error text when it cannot start. A write that
fails with EPIPE means the supervisor is gone: the worker then stops gracefully instead of
serving on as an orphan. Every path ends in `os._exit()`: a forked copy of the supervisor must
never return into the supervisor's code, nor run its atexit handlers.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import socket
import sys
import traceback
from typing import Any, Callable, Final, NoReturn, Sequence

import reactor
from reactor import Stage

from .reuseport import bind_own_socket, is_inet

__all__ = ["WorkerOptions", "run_worker", "READY", "BEAT", "RETIRE", "FAILED",
           "EXIT_START_FAILED", "WORKER_SIGNALS"]

logger = logging.getLogger("servers")

READY: Final = b"r"    # every server is registered and the loop turns: accepting
BEAT: Final = b"."     # the loop is alive (sent by a timer on the loop)
RETIRE: Final = b"m"   # max_requests reached: start my replacement, then stop me
FAILED: Final = b"!"   # followed by the error text, then the worker exits

EXIT_CRASHED: Final = 1
EXIT_START_FAILED: Final = 3  # gunicorn's "worker failed to boot" status
EXIT_QUIT: Final = 128 + signal.SIGQUIT

#: Signals whose dispositions a worker sets itself. The supervisor blocks them around fork()
#: so that none reaches the child while it still has the supervisor's handlers.
WORKER_SIGNALS: Final = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
                                   signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU})

_MAX_ERROR_BYTES: Final = 2048  # < PIPE_BUF: one atomic write into an empty pipe


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """What a worker needs to know besides its servers (chosen by the supervisor)."""

    reuse_port: bool
    heartbeat_interval: float
    max_requests: int | None  # this worker's own limit, jitter included
    shutdown_timeout: float | None
    setup: Callable[[Sequence[Any]], object] | None
    signal_mask: frozenset[int]  # the mask to restore once our handlers are in place


def run_worker(servers: Sequence[Any], pipe: int, options: WorkerOptions) -> NoReturn:
    """Serve `servers` in this freshly forked process until stopped, then exit; never returns.

    Exit status: 0 after a stop, 3 when the worker could not start, 1 after a crash.
    """
    status = EXIT_CRASHED
    try:
        status = _Worker(servers, pipe, options).run()
    except BaseException:  # noqa: BLE001 - nothing may escape into the supervisor's code
        logger.exception("worker %d crashed", os.getpid())
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass  # closed or replaced by the program: nothing to flush
        os._exit(status)


class _Worker:
    """One worker's loop and its conversation with the supervisor."""

    def __init__(self, servers: Sequence[Any], pipe: int, options: WorkerOptions) -> None:
        self.servers = list(servers)
        self.pipe = pipe
        os.set_blocking(pipe, False)  # a slow supervisor must never block this loop
        self.options = options
        self.loop = reactor.Reactor()
        self.outbox = b""
        self.retiring = False
        self.stop_deadline: float | None = None

    def run(self) -> int:
        loop = self.loop
        try:
            self._set_signals()
            try:
                self._start()
            except Exception as exc:  # the supervisor names this cause if it gives up
                logger.error("worker %d could not start", os.getpid(), exc_info=True)
                text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                self._send(FAILED + text.encode(errors="replace")[:_MAX_ERROR_BYTES])
                return EXIT_START_FAILED
            loop.call_soon(self._send, READY)
            loop.call_later(self.options.heartbeat_interval, self._beat)
            loop.run_until(self._served_all, 0.5)
            self._wait_for_offloaded()
            return 0
        finally:
            loop.close()

    # ------------------------------------------------------------------ start
    def _set_signals(self) -> None:
        """SIGTERM drains, SIGQUIT exits at once, the rest is the supervisor's to decide (a
        Ctrl-C reaches the whole process group; SIGTTIN/SIGTTOU would stop the process)."""
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(signum, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, _quit_now)
        self.loop.add_signal_handler(signal.SIGTERM, self.stop)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.options.signal_mask)

    def _start(self) -> None:
        for server in self.servers:
            if self.options.reuse_port and is_inet(server):
                bind_own_socket(server)
            if self.options.shutdown_timeout is not None:
                server.shutdown_timeout = self.options.shutdown_timeout
        if self.options.setup is not None:
            self.options.setup(self.servers)
        for server in self.servers:
            self.loop.register(server)

    # ------------------------------------------------------------------ serving
    def _served_all(self) -> bool:
        """Checked before every turn: the request count, and whether every server has left
        the loop (drained after SIGTERM, or shut down by the program itself)."""
        limit = self.options.max_requests
        if limit is not None and not self.retiring and \
                sum(server.requests_accepted for server in self.servers) >= limit:
            self.retiring = True
            logger.info("worker %d: max_requests=%d reached; asking for a replacement",
                        os.getpid(), limit)
            self._send(RETIRE)
        if self.loop.servers:
            return False
        if self.stop_deadline is None:
            self.stop_deadline = self.loop.time() + self._drain_timeout()
        return True

    def stop(self) -> None:
        """Stop accepting and drain (SIGTERM, or the supervisor has gone)."""
        if self.stop_deadline is not None:
            return
        self.stop_deadline = self.loop.time() + self._drain_timeout()
        count = len(self.loop.requests)
        logger.info("worker %d: stopping; draining %d request%s in flight", os.getpid(), count,
                    "" if count == 1 else "s")
        self.loop.shutdown()

    def _drain_timeout(self) -> float:
        return max((float(getattr(s, "shutdown_timeout", 0.0)) for s in self.servers),
                   default=0.0)

    def _wait_for_offloaded(self) -> None:
        """Requests handed to threads and children are not the loop's to drain: wait for them
        until the drain deadline, then cut them off."""
        loop = self.loop
        deadline = self.stop_deadline if self.stop_deadline is not None else loop.time()
        if loop.requests and deadline > loop.time():
            wake = loop.call_at(deadline, lambda: None)
            loop.run_until(lambda: not loop.requests or loop.time() >= deadline, 0.5)
            wake.cancel()
        left = [entry for entry in loop.requests if entry.stage is Stage.OFFLOADED]
        if not left:
            return
        logger.warning("worker %d: cutting off %d requests still running in threads or "
                       "children", os.getpid(), len(left))
        for entry in left:
            if isinstance(entry.request, socket.socket) and entry.request.fileno() >= 0:
                try:
                    entry.request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # closed by its thread meanwhile
        for server in self.servers:
            for pid in list(getattr(server, "active_children", None) or ()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # ended meanwhile

    # ------------------------------------------------------------------ the pipe
    def _beat(self) -> None:
        self._send(BEAT)
        self.loop.call_later(self.options.heartbeat_interval, self._beat)

    def _send(self, message: bytes) -> None:
        """Write to the supervisor without ever blocking the loop; what does not fit goes
        with the next heartbeat."""
        self.outbox += message
        try:
            written = os.write(self.pipe, self.outbox)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            self.outbox = b""
            if self.stop_deadline is None:
                logger.warning("worker %d: the supervisor has gone; stopping", os.getpid())
                self.stop()
            return
        self.outbox = self.outbox[written:]


def _quit_now(signum: int, frame: object) -> None:
    os._exit(EXIT_QUIT)
