"""`python -m servers ... --workers N`: the command line with worker processes.

(cli.py calls `add_options`, `check_options` and `main`; this module imports cli.py's public
parts only when called, so the two import each other safely.)

The servers are bound here (or taken over: `fd:N`, `systemd:NAME`), in the supervising
process, which then runs a `Supervisor`; each worker imports the handler module itself
(`_load_handlers`, the supervisor's `worker_setup`), so that a SIGHUP reload serves the code
as it is on disk now. This process never imports the handler module: the arguments are
checked, and the mode chosen, by `cli.make_plans()` in a forked child that reports the outcome
and exits (`_plan_in_a_child`). The mode chosen at start stays across reloads; the handler's
code is what a reload deploys. Under systemd the supervisor sends the notifications.

Exit status as without workers: 0 after a graceful stop, 1 when an address cannot be bound
or the workers cannot start, 2 for bad arguments, 128 + signal number when a second signal
stopped the workers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any, Callable, NoReturn, Sequence

import handlers

from . import builtin, cli
from .base import BaseServer
from .supervisor import Supervisor, WorkerStartError

__all__ = ["add_options", "check_options", "main"]

WORKER_OPTIONS = ("reuse_port", "worker_timeout", "max_requests", "max_requests_jitter")


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the `--workers` group of options to the command line's parser (where the
    platform can fork)."""
    if not hasattr(os, "fork"):  # pragma: no cover - POSIX systems have fork()
        return
    group = parser.add_argument_group(
        "worker processes (see docs/workers.md)", argument_default=argparse.SUPPRESS)
    group.add_argument("--workers", type=_positive_int, metavar="N", default=None,
                       help="serve from N worker processes, each importing the handler and "
                            "running its own reactor; SIGHUP replaces them with fresh code, "
                            "SIGTTIN / SIGTTOU add / remove one")
    group.add_argument("--reuse-port", action="store_true",
                       help="with --workers: a SO_REUSEPORT socket per worker for tcp:// and "
                            "udp:// (a reload may then reset queued connections)")
    group.add_argument("--worker-timeout", type=_positive_seconds, metavar="SECONDS",
                       help="with --workers: kill and replace a worker whose loop sends no "
                            "heartbeat for this long (default 30)")
    group.add_argument("--max-requests", type=_positive_int, metavar="N",
                       help="with --workers: replace a worker gracefully after N requests")
    group.add_argument("--max-requests-jitter", type=_natural, metavar="N",
                       help="with --max-requests: add 0..N to each worker's limit")


def check_options(args: argparse.Namespace, error: Callable[[str], NoReturn]) -> None:
    """Refuse worker options given without `--workers`."""
    given = [name for name in WORKER_OPTIONS if name in vars(args)]
    if given and getattr(args, "workers", None) is None:
        error(f"--{given[0].replace('_', '-')} applies with --workers N")
    if "max_requests_jitter" in given and "max_requests" not in given:
        error("--max-requests-jitter applies with --max-requests")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Serve with `args.workers` worker processes; returns the exit status."""
    planned = _plan_in_a_child(args, parser)
    if isinstance(planned, int):
        return planned
    mode, names = planned
    try:  # the child checked the same binds; it took its own copies of inherited sockets
        binds = cli.take_inherited_binds([cli.parse_bind(text) for text in args.bind])
    except ValueError as exc:
        parser.error(str(exc))
    settings = {name: vars(args)[name] for name in cli.SERVER_OPTIONS if name in vars(args)}
    reuse_port = "reuse_port" in vars(args)
    made: list[Any] = []
    try:
        for bind in binds:
            extra = {"allow_reuse_port": True} if reuse_port and bind.kind in ("tcp", "udp") \
                else {}
            server_class: type[BaseServer] = cli.server_class_for(mode, bind.kind,
                                                                  {**settings, **extra})
            if bind.socket is not None:  # inherited: served as it is
                made.append(server_class.from_socket(bind.socket, handlers.BaseRequestHandler))
            else:
                made.append(server_class(bind.address, handlers.BaseRequestHandler))
        supervisor = Supervisor(
            made, args.workers, reuse_port=reuse_port,
            worker_timeout=vars(args).get("worker_timeout", 30.0),
            max_requests=vars(args).get("max_requests"),
            max_requests_jitter=vars(args).get("max_requests_jitter", 0),
            worker_setup=lambda servers: _load_handlers(args, mode, binds, servers))
    except (OSError, ValueError) as exc:  # ValueError: an inherited socket that cannot serve
        for server in made:
            server.server_close()
        for bind in binds[len(made):]:
            if bind.socket is not None:
                bind.socket.close()
        where = binds[len(made)].url if len(made) < len(binds) else "the addresses"
        print(f"{parser.prog}: error: cannot listen on {where}: {exc}", file=sys.stderr)
        return 1
    try:
        for name, server in zip(names, made):
            print(f"serving {name} on {builtin.server_url(server)} ({mode} mode, "
                  f"{args.workers} workers)", file=sys.stderr, flush=True)
        supervisor.serve_forever()
    except WorkerStartError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        for server in made:
            server.server_close()
    return 0 if supervisor.forced_by is None else 128 + supervisor.forced_by


def _load_handlers(args: argparse.Namespace, mode: str, binds: Sequence[cli.Bind],
                   servers: Sequence[Any]) -> None:
    """In a new worker: import the handler module (fresh from disk) and give each server its
    handler class. A problem is this worker's start failure, with the message as the cause.

    Raises:
        ValueError: the module or class is missing, or the handler no longer fits the mode
            chosen at start (a `def handle()` in reactor mode would stall the loop).
    """
    handler = cli.load_handler(args.handler)
    for bind, server in zip(binds, servers):
        cls = cli.handler_for(handler, bind)
        if (mode == "reactor" and not cli.is_async(cls)) or \
                (mode == "sync" and cli.is_async(cls)):
            kind = "async def" if cli.is_async(cls) else "a plain def"
            raise ValueError(f"{cls.__name__}.handle is {kind}, which {mode} mode (chosen at "
                             "start) cannot run; restart to change the mode")
        if "timeout" in vars(args):
            cls = type(cls.__name__, (cls,), {"timeout": args.timeout,
                                              "__module__": cls.__module__,
                                              "__qualname__": cls.__qualname__})
        server.RequestHandlerClass = cls


def _plan_in_a_child(args: argparse.Namespace,
                     parser: argparse.ArgumentParser) -> tuple[str, list[str]] | int:
    """Run `cli.make_plans()` in a forked child, which imports the handler module, so that
    this process never does. Returns the mode and the handler class name of each address,
    or the exit status when the arguments are wrong (the child printed why)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then exit without returning
        status = 1
        try:
            os.close(read_end)
            if os.environ.get("LISTEN_PID") == str(os.getppid()):
                # sockets passed to the supervisor: this child checks them on its behalf
                os.environ["LISTEN_PID"] = str(os.getpid())
            plans = cli.make_plans(args, parser.error)
            report = {"mode": plans[0].mode, "names": [p.handler_class.__name__ for p in plans]}
            os.write(write_end, json.dumps(report).encode())
            status = 0
        except SystemExit as exc:  # parser.error() printed the usage and the message
            status = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - the handler module's own error: show it
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)
    os.close(write_end)
    with open(read_end, "rb") as reader:
        data = reader.read()
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code != 0 or not data:
        return code if code > 0 else 1
    report = json.loads(data)
    return report["mode"], report["names"]


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"write a whole number >= 1, not {text!r}")
    return int(text)


def _natural(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"write a whole number >= 0, not {text!r}")
    return int(text)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"write a number of seconds, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"write a number of seconds > 0, not {text!r}")
    return value

