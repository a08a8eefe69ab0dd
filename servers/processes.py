"""The supervisor's table of worker processes: forking, watching and reaping them.

Mechanics only. Which workers to start or stop is the supervisor's decision (`supervisor.py`);
this module forks a worker, listens to its pipe (readiness, heartbeats, `max_requests`, a
start error), enforces its heartbeat deadline with one lazy timer, signals it, reaps it the
moment its pidfd says it exited, and reports through three callbacks. It runs on the
supervisor's own reactor and never forks from a callback: `fork()` is called by the
supervisor between turns.

Why the child abandons the selector before closing the supervisor's reactor: after fork() the
child's epoll descriptor names the same kernel object as the parent's, so every unregister
the child made (`Reactor.close()` unregisters its waker) would remove the parent's
registration too. `ForkSafeSelector.abandon()` closes the descriptor without one epoll_ctl.

Why signals are blocked around fork(): until the child has installed its own handlers it runs
the supervisor's, which would record a SIGTERM in the child's useless copy of our loop and
lose it. Blocked, the signal stays pending and reaches the worker's own handler.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import selectors
import signal
from typing import Any, Callable, Final, Iterator, Mapping, Sequence

import reactor

from .worker import EXIT_CRASHED, FAILED, READY, RETIRE, WORKER_SIGNALS, WorkerOptions, run_worker

__all__ = ["WorkerProcess", "WorkerTable", "ForkSafeSelector", "describe_exit"]

logger = logging.getLogger("servers")

_EXIT_POLL_SECONDS: Final = 0.5  # without pidfds (old kernels), exits are polled this often


@dataclasses.dataclass(eq=False)
class WorkerProcess:
    """One row of the table: a live worker as the supervisor sees it."""

    pid: int
    pipe: int  # read end, non-blocking
    pidfd: int  # -1 where the platform has none
    generation: int
    deadline: float  # of the next heartbeat (before READY: of readiness)
    ready: bool = False
    retiring: bool = False  # reached max_requests: stops once its replacement is ready
    stopping: bool = False  # sent SIGTERM (or SIGQUIT)
    killed: str | None = None  # why we sent SIGKILL
    error: bytearray | None = None  # the text the worker sent after FAILED
    timer: Any = None
    kill_timer: Any = None


class WorkerTable:
    """The live workers of one `Supervisor.serve_forever()` run, oldest first.

    Args:
        loop: the supervisor's reactor, built on `selector`.
        selector: a `ForkSafeSelector`, which a new worker abandons.
        worker_timeout: seconds between heartbeats (before READY: until READY) after which a
            worker is killed.
        on_ready, on_retire: called with a worker when it reports READY / RETIRE.
        on_exit: called with a worker and its wait status (-1: unknown) once it is reaped
            and out of the table.
    """

    def __init__(self, loop: reactor.Reactor, selector: ForkSafeSelector,
                 worker_timeout: float, on_ready: Callable[[WorkerProcess], None],
                 on_retire: Callable[[WorkerProcess], None],
                 on_exit: Callable[[WorkerProcess, int], None]) -> None:
        self.loop = loop
        self.selector = selector
        self.worker_timeout = worker_timeout
        self._on_ready = on_ready
        self._on_retire = on_retire
        self._on_exit = on_exit
        self._rows: dict[int, WorkerProcess] = {}

    def __iter__(self) -> Iterator[WorkerProcess]:
        return iter(list(self._rows.values()))

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(self._rows)

    # ------------------------------------------------------------------ forking
    def fork(self, servers: Sequence[Any], options: WorkerOptions,
             generation: int) -> WorkerProcess:
        """Fork a worker that serves `servers`; call it between turns, never from a callback.

        Raises:
            OSError: fork() failed (EAGAIN, ENOMEM).
        """
        read_end, write_end = os.pipe()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            os.close(read_end)
            os.close(write_end)
            raise
        if pid == 0:  # the new worker: never returns
            try:
                os.close(read_end)
                self._forget_in_child()
                run_worker(servers, write_end,
                           dataclasses.replace(options, signal_mask=frozenset(previous)))
            except BaseException:  # noqa: BLE001 - nothing may return into our loop
                logger.exception("worker %d could not leave the supervisor's state",
                                 os.getpid())
            finally:
                os._exit(EXIT_CRASHED)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        os.close(write_end)
        os.set_blocking(read_end, False)
        loop = self.loop
        worker = WorkerProcess(pid, read_end, _open_pidfd(pid), generation,
                               loop.time() + self.worker_timeout)
        self._rows[pid] = worker
        loop.add_reader(read_end, self._read_pipe, worker)
        if worker.pidfd >= 0:
            loop.add_reader(worker.pidfd, self.reap, worker)
        else:
            loop.call_later(_EXIT_POLL_SECONDS, self._poll_exit, worker)
        worker.timer = loop.call_at(worker.deadline, self._check_heartbeat, worker)
        logger.info("worker %d started", pid)
        return worker

    def _forget_in_child(self) -> None:
        """In a new worker: close what belongs to the supervisor (its loop, and the pipes and
        pidfds of the other workers) without touching what the parent still uses."""
        self.selector.abandon()
        self.loop.close()  # also restores the signal handlers the supervisor replaced
        for worker in self._rows.values():
            for fd in (worker.pipe, worker.pidfd):
                if fd >= 0:
                    os.close(fd)
        self._rows = {}

    # ------------------------------------------------------------------ signalling
    def stop(self, worker: WorkerProcess, grace: float) -> None:
        """SIGTERM: the worker drains and exits; SIGKILL if it still runs after `grace`."""
        if worker.stopping:
            return
        worker.stopping = True
        self.signal(worker, signal.SIGTERM)
        worker.kill_timer = self.loop.call_later(grace, self._kill_late, worker, grace)

    def signal(self, worker: WorkerProcess, signum: int) -> None:
        try:
            os.kill(worker.pid, signum)  # an unreaped child: its pid cannot have been reused
        except ProcessLookupError:
            pass

    def kill_all(self) -> None:
        """SIGKILL every worker and reap it (after an unexpected error in the supervisor)."""
        for worker in self:
            self.signal(worker, signal.SIGKILL)
            try:
                os.waitpid(worker.pid, 0)
            except ChildProcessError:
                pass
            self._release(worker)

    def _check_heartbeat(self, worker: WorkerProcess) -> None:
        worker.timer = None
        if self._rows.get(worker.pid) is not worker or worker.killed:
            return
        if self.loop.time() < worker.deadline:
            worker.timer = self.loop.call_at(worker.deadline, self._check_heartbeat, worker)
            return
        timeout = self.worker_timeout
        if worker.ready:
            worker.killed = f"no heartbeat for {timeout:g} s"
            logger.error("worker %d sent no heartbeat for %g s (worker_timeout): its loop is "
                         "blocked; killing it", worker.pid, timeout)
        else:
            worker.killed = f"not ready within {timeout:g} s"
            logger.error("worker %d was not ready within %g s (worker_timeout); killing it",
                         worker.pid, timeout)
        self.signal(worker, signal.SIGKILL)

    def _kill_late(self, worker: WorkerProcess, grace: float) -> None:
        worker.kill_timer = None
        if self._rows.get(worker.pid) is worker:
            worker.killed = f"still running {grace:g} s after SIGTERM"
            logger.error("worker %d still runs %g s after SIGTERM; killing it", worker.pid,
                         grace)
            self.signal(worker, signal.SIGKILL)

    # ------------------------------------------------------------------ listening, reaping
    def _read_pipe(self, worker: WorkerProcess) -> bool:
        """Read what the worker sent; False once nothing more is waiting."""
        try:
            data = os.read(worker.pipe, 65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:  # EOF: the worker has exited; its pidfd (or the poll) says how
            self.loop.remove_reader(worker.pipe)
            return False
        worker.deadline = self.loop.time() + self.worker_timeout
        if worker.error is not None:
            worker.error += data
            return True
        head, failed, text = data.partition(FAILED)
        if failed:
            worker.error = bytearray(text)
        if READY in head and not worker.ready:
            worker.ready = True
            self._on_ready(worker)
        if RETIRE in head and not (worker.retiring or worker.stopping):
            worker.retiring = True
            self._on_retire(worker)
        return True

    def _poll_exit(self, worker: WorkerProcess) -> None:
        if self._rows.get(worker.pid) is worker:
            self.reap(worker)
            if self._rows.get(worker.pid) is worker:
                self.loop.call_later(_EXIT_POLL_SECONDS, self._poll_exit, worker)

    def reap(self, worker: WorkerProcess) -> None:
        """If the worker has exited: read its last messages, drop it, report its status."""
        try:
            pid, status = os.waitpid(worker.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = worker.pid, -1  # reaped by someone else: how it ended is unknown
        if pid == 0:
            return
        while self._read_pipe(worker):
            pass
        self._release(worker)
        self._on_exit(worker, status)

    def _release(self, worker: WorkerProcess) -> None:
        self._rows.pop(worker.pid, None)
        for timer in (worker.timer, worker.kill_timer):
            if timer is not None:
                timer.cancel()
        worker.timer = worker.kill_timer = None
        for fd in (worker.pipe, worker.pidfd):
            if fd >= 0:
                if not self.loop.closed:
                    self.loop.forget(fd)
                os.close(fd)
        worker.pipe = worker.pidfd = -1


class ForkSafeSelector(selectors.BaseSelector):
    """The supervisor loop's selector; a forked worker calls `abandon()` (see the module
    docstring) before closing the supervisor's reactor."""

    def __init__(self) -> None:
        self._inner = selectors.DefaultSelector()
        self._abandoned = False

    def abandon(self) -> None:
        self._abandoned = True
        try:
            self._inner.close()  # closes our descriptor only: no unregister reaches the kernel
        except OSError:  # pragma: no cover - kqueue descriptors are not inherited by a child
            pass

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        if self._abandoned:
            return selectors.SelectorKey(fileobj, -1, 0, None)
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return self._inner.select(timeout)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()

    def close(self) -> None:
        if not self._abandoned:
            self._inner.close()


def describe_exit(status: int) -> str:
    """A wait status as a log line says it: `exit status 3`, `killed by SIGKILL`."""
    if status < 0:
        return "exit status unknown: reaped elsewhere"
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:  # pragma: no cover - a real-time signal
        return f"killed by signal {-code}"


def _open_pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError) as exc:  # pragma: no cover - kernels before 5.3
        if isinstance(exc, OSError) and exc.errno not in (errno.ENOSYS, errno.EPERM,
                                                          errno.EINVAL):
            raise
        return -1  # no pidfds here: exits are polled
