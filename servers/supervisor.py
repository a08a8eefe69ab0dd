"""Supervisor: the same servers served by several worker processes (prefork).

The supervising process keeps the servers' sockets bound and serves no request itself: it
never registers them on a reactor. It forks `workers` processes (`worker.py`), each with a
reactor of its own serving every server, and watches them from a small reactor of its own
(`processes.py`: pidfds, pipes, heartbeat timers). This module holds the policy: how many
workers, which generation is current, who retires, when to give up. Under systemd
(`NOTIFY_SOCKET`) it is the process that notifies, as `NotifyAccess=main` requires: READY=1
once every worker accepts, RELOADING=1 then READY=1 around a reload, STOPPING=1, and the
watchdog from its own loop.

Why callbacks never fork: a pidfd, a message or a signal only changes the wanted state (how
many workers, which generation, who retires); `serve_forever()` compares it with the live
workers between turns (`_reconcile`) and forks what is missing there, outside any callback,
so that a new worker leaves the supervisor's loop from a clean place.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from typing import Any, Callable, Final, Iterable, Sequence

import reactor

from .processes import ForkSafeSelector, WorkerProcess, WorkerTable, describe_exit
from .reuseport import reserve_address
from .systemd import Notifier
from .worker import WorkerOptions

__all__ = ["Supervisor", "WorkerStartError", "MAX_START_FAILURES"]

logger = logging.getLogger("servers")

MAX_START_FAILURES: Final = 5
_RESTART_DELAY_SECONDS: Final = 0.1  # after a failed start; doubles with each failure, up to
_MAX_RESTART_DELAY_SECONDS: Final = 2.0


class WorkerStartError(RuntimeError):
    """Worker processes kept dying before they were ready, so the supervisor stopped.

    Attributes:
        failures: how many died in a row.
        cause: what the last one reported (its exception), or how it ended.
    """

    def __init__(self, failures: int, cause: str) -> None:
        super().__init__(f"{failures} worker processes in a row died before they were ready; "
                         f"the last one: {cause}")
        self.failures = failures
        self.cause = cause


class Supervisor:
    """Serve bound servers from several worker processes, each running its own reactor.

    The servers' sockets stay open in this process, so with the shared sockets (the default)
    a connection is never refused while workers come and go: it waits in the kernel's
    backlog until a worker accepts it. This process serves no request. The servers remain
    the caller's: close them after `serve_forever()` returns.

    Args:
        servers: bound servers of any kind and mode (TCP, UDP, Unix stream or datagram;
            plain, threading or forking), registered on no reactor.
        workers: how many worker processes to keep (default: the number of CPUs).
        reuse_port: give each worker its own SO_REUSEPORT socket for every TCP and UDP
            server (bind them with `allow_reuse_port = True`); this process swaps the
            server's socket for a placeholder that keeps the address and receives nothing.
            The kernel resets connections still queued on a worker's socket when it closes,
            so reloads can drop connections in this mode (see docs/workers.md).
        worker_timeout: seconds a worker's loop may go without a heartbeat (a new worker:
            without becoming ready) before it is killed with SIGKILL and replaced.
        max_requests: replace a worker gracefully after it has accepted this many requests
            (its replacement is ready before it stops accepting). None: never.
        max_requests_jitter: each worker's limit is `max_requests` plus a random number from
            0 to this, so that workers do not all restart at once.
        shutdown_timeout: seconds a stopping worker lets requests finish (default: each
            server's own `shutdown_timeout`).
        worker_setup: called in every new worker with the list of servers before they are
            registered (after fork, so it may import code or change `RequestHandlerClass`);
            an exception makes that worker's start fail, with the exception as the cause.
        max_start_failures: after this many workers in a row die before they are ready,
            `serve_forever()` stops and raises `WorkerStartError` (during a reload, the
            reload is abandoned instead and the old workers keep serving).

    Raises:
        ValueError: an argument is out of range, a server is registered on a reactor, or
            `reuse_port` is asked for servers bound without SO_REUSEPORT.
    """

    def __init__(self, servers: Iterable[Any], workers: int | None = None, *,
                 reuse_port: bool = False, worker_timeout: float = 30.0,
                 max_requests: int | None = None, max_requests_jitter: int = 0,
                 shutdown_timeout: float | None = None,
                 worker_setup: Callable[[Sequence[Any]], object] | None = None,
                 max_start_failures: int = MAX_START_FAILURES) -> None:
        self.servers = list(servers)
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        _check(self.servers, self.workers, worker_timeout, max_requests, max_requests_jitter,
               max_start_failures)
        self.reuse_port = reuse_port
        self.worker_timeout = worker_timeout
        self.max_requests = max_requests
        self.max_requests_jitter = max_requests_jitter
        self.shutdown_timeout = shutdown_timeout
        self.worker_setup = worker_setup
        self.max_start_failures = max_start_failures
        #: The signal that cut the last graceful stop short (a second SIGTERM or SIGINT).
        self.forced_by: int | None = None
        self._table: WorkerTable | None = None
        self._notifier: Notifier | None = None
        self._announced = False  # READY=1 sent for the current run or reload
        self._told_stopping = False  # STOPPING=1 sent
        self._serving_thread: int | None = None
        self._stopped = threading.Event()
        self._stopped.set()
        self._stop_requested = False
        self._fatal: WorkerStartError | None = None
        self._generation = 0
        self._reloading = False
        self._start_failures = 0
        self._restart_at = 0.0
        if reuse_port:
            for server in self.servers:
                reserve_address(server)

    @property
    def pids(self) -> tuple[int, ...]:
        """Process ids of the live workers (stopping ones included), oldest first."""
        table = self._table
        return () if table is None else table.pids

    # ------------------------------------------------------------------ public control
    def serve_forever(self) -> None:
        """Start the workers and keep them running until `shutdown()` (or SIGTERM / SIGINT)
        has stopped them all; blocks meanwhile.

        On the main thread it handles signals: SIGTERM and SIGINT stop gracefully (a second
        one stops the workers at once, see `forced_by`), SIGHUP reloads, SIGTTIN / SIGTTOU
        add / remove a worker. The previous handlers are restored on return.

        Raises:
            WorkerStartError: workers kept dying before they were ready (the remaining
                workers have been stopped gracefully first).
            reactor.ReactorError: this supervisor is already running.
        """
        if self._table is not None:
            raise reactor.ReactorError("this supervisor is already running")
        selector = ForkSafeSelector()
        loop = reactor.Reactor(selector)
        table = self._table = WorkerTable(loop, selector, self.worker_timeout,
                                          self._on_ready, self._on_retire, self._on_exit)
        self._serving_thread = threading.get_ident()
        self._stopped.clear()
        self._notifier = Notifier(loop)  # does nothing unless NOTIFY_SOCKET is set
        self._announced = self._told_stopping = False
        self.forced_by = self._fatal = None
        self._reloading = False
        self._start_failures = 0
        self._restart_at = 0.0
        try:
            if threading.current_thread() is threading.main_thread():
                self._handle_signals(loop)
            while True:
                self._reconcile(table)
                if self._stop_requested and not table:
                    break
                loop.run_once(None)
        finally:
            table.kill_all()  # only after an unexpected exception: none is left otherwise
            self._notifier.close()
            self._notifier = None
            self._table = None
            self._stop_requested = False
            loop.close()
            self._stopped.set()
        if self._fatal is not None:
            raise self._fatal

    def shutdown(self) -> None:
        """Stop gracefully: every worker stops accepting, drains, exits; `serve_forever()`
        returns after the last one. Any thread or a signal handler may call it; from another
        thread it blocks until then. Called before `serve_forever()`, the next call of that
        returns at once."""
        self._stop_requested = True
        table = self._table
        if table is None:
            return
        table.loop.call_soon_threadsafe(self._begin_stop)
        if self._serving_thread != threading.get_ident():
            self._stopped.wait()

    def reload(self) -> None:
        """Replace every worker gracefully: new workers start, and once all of them are
        ready the old ones stop accepting and drain. Returns at once; any thread may call it."""
        self._on_loop(self._begin_reload)

    def add_worker(self) -> None:
        """Keep one more worker (as SIGTTIN does). Returns at once; any thread may call it."""
        self._on_loop(self._change_workers, 1)

    def remove_worker(self) -> None:
        """Keep one worker fewer, never fewer than one; the oldest stops gracefully (as
        SIGTTOU does). Returns at once; any thread may call it."""
        self._on_loop(self._change_workers, -1)

    def __repr__(self) -> str:
        state = "running" if self._table is not None else "idle"
        return f"<Supervisor {state} workers={self.workers} pids={list(self.pids)}>"

    # ------------------------------------------------------------------ the wanted state
    def _on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        table = self._table
        if table is None:
            callback(*args)
        else:
            table.loop.call_soon_threadsafe(callback, *args)

    def _handle_signals(self, loop: reactor.Reactor) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._begin_reload)
        loop.add_signal_handler(signal.SIGTTIN, self._change_workers, 1)
        loop.add_signal_handler(signal.SIGTTOU, self._change_workers, -1)

    def _on_stop_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self._stop_requested:
            logger.info("%s: stopping gracefully; %d workers drain (signal again to stop at "
                        "once)", name, len(self.pids))
            self.shutdown()
            return
        logger.warning("%s again: stopping the workers at once", name)
        self.forced_by = signum
        table = self._table
        if table is None:
            return
        for worker in table:
            worker.stopping = True
            table.signal(worker, signal.SIGQUIT)

    def _begin_stop(self) -> None:
        self._stop_requested = True
        if self._notifier is not None and not self._told_stopping:
            self._told_stopping = True
            self._notifier.stopping()
        for worker in self._table or ():
            self._stop_worker(worker)

    def _begin_reload(self) -> None:
        if self._stop_requested or self._table is None:
            return
        self._generation += 1
        self._reloading = True
        self._announced = False
        if self._notifier is not None:
            self._notifier.reloading()
        logger.info("reloading: starting %d new workers; the %d old ones stop once those are "
                    "ready", self.workers, len(self._table))

    def _change_workers(self, delta: int) -> None:
        if self.workers + delta < 1:
            logger.warning("keeping the last worker (SIGTTOU / remove_worker() at 1 worker)")
            return
        self.workers += delta
        logger.info("workers: %d wanted", self.workers)

    def _reconcile(self, table: WorkerTable) -> None:
        """Between turns: stop surplus and replaced workers, fork missing ones."""
        if self._stop_requested:
            return
        current = [w for w in table if w.generation == self._generation
                   and not (w.stopping or w.retiring)]
        surplus = max(0, len(current) - self.workers)
        for worker in current[:surplus]:  # the oldest go first
            self._stop_worker(worker)
        current = current[surplus:]
        if sum(w.ready for w in current) >= self.workers:
            self._stop_replaced(table)
            if not self._announced and self._notifier is not None:
                self._announced = True
                self._notifier.ready()
        for _ in range(self.workers - len(current)):
            if self._stop_requested or table.loop.time() < self._restart_at:
                break  # a start failed: the back-off timer brings us back here
            try:
                table.fork(self.servers, self._worker_options(), self._generation)
            except OSError as exc:
                logger.error("cannot fork a worker: %s", exc)
                self._start_failed(f"fork() failed: {exc}")

    def _stop_replaced(self, table: WorkerTable) -> None:
        """Every current worker is ready: stop the ones they replace (older generations,
        workers at max_requests)."""
        old = [w for w in table if not w.stopping
               and (w.generation != self._generation or w.retiring)]
        if self._reloading:
            self._reloading = False
            logger.info("reload: new workers %s ready; stopping the old ones %s",
                        [w.pid for w in table if w not in old and not w.stopping],
                        [w.pid for w in old])
        for worker in old:
            self._stop_worker(worker)

    def _stop_worker(self, worker: WorkerProcess) -> None:
        if self._table is not None:
            self._table.stop(worker, self._drain_timeout() + self.worker_timeout)

    def _drain_timeout(self) -> float:
        if self.shutdown_timeout is not None:
            return self.shutdown_timeout
        return max((float(getattr(s, "shutdown_timeout", 0.0)) for s in self.servers),
                   default=0.0)

    def _worker_options(self) -> WorkerOptions:
        limit = self.max_requests
        if limit is not None and self.max_requests_jitter:
            limit += random.randint(0, self.max_requests_jitter)
        return WorkerOptions(
            reuse_port=self.reuse_port, heartbeat_interval=min(self.worker_timeout / 4, 1.0),
            max_requests=limit, shutdown_timeout=self.shutdown_timeout,
            setup=self.worker_setup, signal_mask=frozenset())

    # ------------------------------------------------------------------ what workers did
    def _on_ready(self, worker: WorkerProcess) -> None:
        self._start_failures = 0
        self._restart_at = 0.0
        logger.info("worker %d ready", worker.pid)

    def _on_retire(self, worker: WorkerProcess) -> None:
        logger.info("worker %d reached max_requests; starting its replacement", worker.pid)

    def _on_exit(self, worker: WorkerProcess, status: int) -> None:
        how = describe_exit(status)
        if worker.stopping and not worker.killed:
            level = logging.INFO if status == 0 else logging.WARNING
            logger.log(level, "worker %d stopped (%s)", worker.pid, how)
        elif not worker.ready and not worker.stopping:
            cause = worker.error.decode(errors="replace") if worker.error else \
                worker.killed or how
            logger.error("worker %d failed to start (%s): %s", worker.pid, how, cause)
            self._start_failed(cause)
        else:
            why = f"killed: {worker.killed}" if worker.killed else "exited unexpectedly"
            again = "" if self._stop_requested or worker.stopping else \
                "; starting a replacement"
            logger.error("worker %d %s (%s)%s", worker.pid, why, how, again)

    def _start_failed(self, cause: str) -> None:
        table = self._table
        assert table is not None
        self._start_failures += 1
        if self._start_failures < self.max_start_failures:
            delay = min(_RESTART_DELAY_SECONDS * 2 ** (self._start_failures - 1),
                        _MAX_RESTART_DELAY_SECONDS)
            self._restart_at = table.loop.time() + delay
            table.loop.call_at(self._restart_at, lambda: None)  # wakes the loop to retry
            return
        old = [w for w in table if w.generation != self._generation and w.ready
               and not w.stopping]
        if self._reloading and old:
            logger.error("reload abandoned: %d new workers in a row failed to start (the "
                         "last: %s); the old workers keep serving", self._start_failures, cause)
            self._reloading = False
            self._start_failures = 0
            self._restart_at = 0.0
            for worker in table:
                worker.generation = self._generation
            self._announced = False  # READY=1 again: the reload is over
            return
        self._fatal = WorkerStartError(self._start_failures, cause)
        logger.error("%s; stopping", self._fatal)
        self._begin_stop()


def _check(servers: list[Any], workers: int, worker_timeout: float,
           max_requests: int | None, jitter: int, max_start_failures: int) -> None:
    if not servers:
        raise ValueError("give the supervisor at least one server")
    for server in servers:
        if getattr(server, "reactor", None) is not None:
            raise ValueError(f"{server!r} is registered on a reactor; give the supervisor "
                             "servers registered nowhere: each worker registers them itself")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, not {workers!r}")
    if not worker_timeout > 0:
        raise ValueError(f"worker_timeout must be > 0 seconds, not {worker_timeout!r}")
    if max_requests is not None and max_requests < 1:
        raise ValueError(f"max_requests must be >= 1 or None, not {max_requests!r}")
    if jitter < 0:
        raise ValueError(f"max_requests_jitter must be >= 0, not {jitter!r}")
    if max_start_failures < 1:
        raise ValueError(f"max_start_failures must be >= 1, not {max_start_failures!r}")
