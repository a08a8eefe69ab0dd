"""The command line: `python -m servers MODULE:CLASS --bind URL [--bind URL ...]`.

Serves one handler class on any number of addresses in one process: every server is
registered on ONE `reactor.Reactor`, whose `serve_forever()` runs them all. The mode picks the
server classes (`--mode threading` + `tcp://` -> `ThreadingTCPServer`, ...); limits and
timeouts are set on subclasses made for this run with `type()`, never on the library's classes.
SIGINT/SIGTERM stop it gracefully (see `Run.stop`). See docs/cli.md for the whole story.

Why stopping is done in two phases: the reactor's `shutdown()` drains the requests that run on
the loop, but requests handed to threads and children are not the loop's to wait for. After
the loop returns we therefore keep turning it until they have ended too (threads and children
report their end through the loop), up to the same deadline. A SIGALRM armed for the deadline
cuts off what is left, from the signal handler, because a classic handler running inline
(`--mode sync`) keeps the loop from turning: requests in threads and inline get their socket
shut down (their blocked reads see EOF), children get SIGTERM. Request threads are daemon
threads, so one that does not end then cannot hold the exit. Children ignore SIGINT, so that a
Ctrl-C sent to the whole terminal process group lets them finish, as the parent does.

The module is long (about 750 lines) but reads top to bottom in the order a command is
handled: addresses, handlers, server classes, arguments, the plan, running and stopping.

Exit status: 0 after a graceful stop, 1 when an address cannot be bound (also with `--check`),
2 for bad arguments (argparse's convention), 128 + signal number when a second signal cut the
drain short.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import logging
import os
import signal
import socket
import socketserver
import sys
from typing import Any, Callable, NoReturn, Sequence

import handlers
import reactor
import servers
from reactor import Stage

from . import builtin, cli_workers, proxy, systemd
from .base import BaseServer
from .unix import StaleSocketFile

__all__ = ["main", "build_parser", "parse_bind", "take_inherited_binds", "load_handler",
           "handler_for", "is_async", "server_class_for", "make_plans", "Bind", "Plan", "Run", "StopNow", "MODES",
           "SERVER_OPTIONS", "STOP_SIGNALS", "EPILOG"]

logger = logging.getLogger("servers")

MODES = ("reactor", "threading", "forking", "sync")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: Options that become class attributes of this run's server classes (same names).
SERVER_OPTIONS = ("max_connections", "max_threads", "max_children", "shutdown_timeout",
                  "read_ahead", "remove_stale_socket")

EPILOG = """\
addresses (--bind, repeatable):
  tcp://HOST:PORT    udp://HOST:PORT    tcp://[::1]:PORT (IPv6 in brackets)
  unix:PATH          unixgram:PATH      unix:@NAME (Linux abstract socket)
  systemd:NAME       fd:N               sockets passed by systemd (or another process)
  Port 0 picks a free port; the real address is printed at start.

modes (--mode):
  reactor    async handlers: every request a task on one thread (default for them)
  threading  classic handlers: a thread per request (default for them)
  forking    a child process per request (classic or async handlers)
  sync       classic handlers inline, one request at a time, as socketserver does;
             a slow client stalls every address of the process (see --read-ahead)

examples:
  python -m servers servers.builtin:Echo --bind tcp://127.0.0.1:9000
  python -m servers servers.builtin:Echo --bind tcp://127.0.0.1:9000 --bind udp://127.0.0.1:9000
  python -m servers servers.builtin:Status --bind unix:/tmp/status.sock
  python -m servers myhandlers:Shout --bind tcp://[::1]:9000 --bind unix:/tmp/shout.sock
  python -m servers myhandlers:Classic --mode sync --read-ahead '\\n' --timeout 10 \\
      --bind tcp://127.0.0.1:9000

Ctrl-C or SIGTERM stops gracefully: no new connections, requests in flight finish (up to
--shutdown-timeout seconds), then exit 0; a second signal cuts the wait short.
"""


# --------------------------------------------------------------------------- addresses
@dataclasses.dataclass(frozen=True)
class Bind:
    """One `--bind` address.

    Attributes:
        url: the text as given.
        kind: "tcp", "udp", "unix" or "unixgram"; "systemd" and "fd" until
            `take_inherited_binds()` replaces them.
        address: what the server class takes: `(host, port)` or a Unix path (a leading
            NUL for an abstract socket); the name or descriptor of `systemd:`/`fd:`.
        socket: an inherited socket to serve (`from_socket()`), or None: bind `address`.
    """

    url: str
    kind: str
    address: Any
    socket: socket.socket | None = dataclasses.field(default=None, compare=False)

    @property
    def datagram(self) -> bool:
        return self.kind in ("udp", "unixgram")


def parse_bind(text: str) -> Bind:
    """Parse a `--bind` value.

    Raises:
        ValueError: the message says what to write instead.
    """
    scheme, sep, rest = text.partition("://")
    if sep and scheme in ("tcp", "udp"):
        return Bind(text, scheme, _host_port(rest, scheme))
    if sep and scheme in ("unix", "unixgram"):
        return Bind(text, scheme, _unix_path(rest, scheme))
    if sep:
        raise ValueError(f"unknown scheme {scheme + '://'!r} in {text!r}; write "
                         "tcp://HOST:PORT, udp://HOST:PORT, unix:PATH or unixgram:PATH")
    scheme, sep, rest = text.partition(":")
    if sep and scheme in ("unix", "unixgram"):
        return Bind(text, scheme, _unix_path(rest, scheme))
    if sep and scheme == "systemd":
        if not rest:
            raise ValueError("write systemd:NAME with the socket's name (its "
                             "FileDescriptorName=, or else its .socket unit's name)")
        return Bind(text, scheme, rest)
    if sep and scheme == "fd":
        if not (rest.isascii() and rest.isdigit()):
            raise ValueError(f"write fd:N with N an inherited socket's descriptor number, "
                             f"e.g. fd:3 (got {text!r})")
        return Bind(text, scheme, int(rest))
    if sep and scheme in ("tcp", "udp"):
        raise ValueError(f"write {scheme}://{rest} (with //) instead of {text!r}")
    if "/" in text and ":" not in text:
        raise ValueError(f"{text!r} has no scheme; write unix:{text} (or unixgram:{text})")
    raise ValueError(f"{text!r} has no scheme; write tcp://{text} or udp://{text} "
                     "(for example tcp://127.0.0.1:9000)")


def _host_port(rest: str, scheme: str) -> tuple[str, int]:
    if rest.startswith("["):
        host, bracket, port = rest[1:].partition("]")
        if not bracket or not port.startswith(":"):
            raise ValueError(f"write {scheme}://[IPV6]:PORT, e.g. {scheme}://[::1]:9000 "
                             f"(got {scheme}://{rest})")
        port = port[1:]
    else:
        host, colon, port = rest.rpartition(":")
        if not colon:
            raise ValueError(f"{scheme}://{rest} has no port; write {scheme}://{rest}:PORT "
                             "(PORT 0 picks a free one)")
        if ":" in host:
            raise ValueError(f"put IPv6 addresses in brackets: {scheme}://[{host}]:{port}")
    if not host:
        raise ValueError(f"{scheme}://{rest} has no host; write {scheme}://127.0.0.1:{port} "
                         f"for this machine only, or {scheme}://0.0.0.0:{port} for every "
                         "interface")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"port {port!r} in {scheme}://{rest} is not a number from 0 to 65535 "
                         "(0 picks a free port)")
    return host, int(port)


def _unix_path(path: str, scheme: str) -> str:
    if not path:
        raise ValueError(f"{scheme}: needs a path, e.g. {scheme}:/tmp/server.sock")
    if path.startswith("@"):
        return "\0" + path[1:]
    return path


# (family, type) -> the kind of address an inherited socket serves as
_KIND_OF_SOCKET = {(socket.AF_INET, socket.SOCK_STREAM): "tcp",
                   (socket.AF_INET6, socket.SOCK_STREAM): "tcp",
                   (socket.AF_INET, socket.SOCK_DGRAM): "udp",
                   (socket.AF_INET6, socket.SOCK_DGRAM): "udp"}
if hasattr(socket, "AF_UNIX"):
    _KIND_OF_SOCKET[socket.AF_UNIX, socket.SOCK_STREAM] = "unix"
    _KIND_OF_SOCKET[socket.AF_UNIX, socket.SOCK_DGRAM] = "unixgram"


def take_inherited_binds(binds: list[Bind]) -> list[Bind]:
    """Replace each `systemd:NAME` with one bind per socket of that name the service manager
    passed (`servers.systemd.take_inherited()`), and each `fd:N` with the socket on
    descriptor N (passed that way or another); the kind is read from the socket. Passed
    sockets that no bind names are logged (they stay open, unserved).

    Raises:
        ValueError: no such socket, a descriptor that is not a socket or is named twice, or a
            kind of socket no server class serves; the message says what was passed.
    """
    if all(bind.kind not in ("systemd", "fd") for bind in binds):
        return binds
    passed = systemd.take_inherited()
    taken: dict[int, str] = {}  # descriptor -> the --bind that took it
    found = []
    for bind in binds:
        if bind.kind not in ("systemd", "fd"):
            found.append(bind)
            continue
        for sock in _inherited_sockets(bind, passed, taken):
            if sock.fileno() in taken:
                raise ValueError(f"{bind.url} and {taken[sock.fileno()]} are the same socket; "
                                 "bind it once")
            taken[sock.fileno()] = bind.url
            kind = _KIND_OF_SOCKET.get((sock.family, sock.type))
            if kind is None:
                raise ValueError(f"{bind.url} is a {sock.family.name}/{sock.type.name} socket; "
                                 "the command line serves TCP, UDP and Unix sockets")
            found.append(Bind(bind.url, kind, sock.getsockname(), sock))
    for name, sock in passed:
        if sock.fileno() not in taken:
            logger.warning("socket %r (descriptor %d) was passed but no --bind names it; "
                           "it is not served", name, sock.fileno())
    return found


def _inherited_sockets(bind: Bind, passed: list[tuple[str, socket.socket]],
                       taken: dict[int, str]) -> list[socket.socket]:
    if bind.kind == "systemd":
        sockets = [sock for name, sock in passed if name == bind.address]
        if not sockets and not passed:
            raise ValueError(f"{bind.url}: no sockets were passed to this process; start it "
                             "from a systemd .socket unit or with systemd-socket-activate")
        if not sockets:
            names = ", ".join(dict.fromkeys(name for name, _ in passed))
            raise ValueError(f"{bind.url}: no socket named {bind.address!r} was passed to "
                             f"this process (passed: {names})")
        return sockets
    if bind.address in taken:  # before wrapping it in a second socket object
        raise ValueError(f"{bind.url} and {taken[bind.address]} are the same socket; bind it "
                         "once")
    passed_there = [sock for _, sock in passed if sock.fileno() == bind.address]
    return passed_there or [systemd.socket_from_fd(bind.address)]


# --------------------------------------------------------------------------- handlers
def load_handler(spec: str) -> type:
    """Import the handler class named by `module:Class` (`Class` may be dotted: `Outer.Inner`).

    Raises:
        ValueError: the spec is malformed, the module or attribute is missing, or the object
            is not a request handler class; the message says what to write instead. Errors raised by the
            module's own code while it is imported propagate unchanged.
    """
    module_name, colon, qualname = spec.partition(":")
    if not colon or not module_name or not qualname:
        raise ValueError(f"write the handler as MODULE:CLASS, e.g. servers.builtin:Echo "
                         f"(got {spec!r})")
    if module_name.endswith(".py") or "/" in module_name:
        dotted = module_name.removesuffix(".py").replace("/", ".")
        raise ValueError(f"write a module name, not a file: {dotted}:{qualname} (run from the "
                         "directory that holds it)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise  # the module exists but imports something missing: show the traceback
        raise ValueError(f"no module named {exc.name!r}; write MODULE:CLASS with a module "
                         "importable from the current directory or the Python path") from None
    obj: Any = module
    for part in qualname.split("."):
        if not hasattr(obj, part):
            choices = _handler_names(module)
            hint = f"; handler classes there: {', '.join(choices)}" if choices else ""
            raise ValueError(f"{module_name} has no attribute {qualname!r}{hint}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(
            obj, (handlers.BaseRequestHandler, socketserver.BaseRequestHandler))):
        raise ValueError(f"{spec} is not a request handler class; give a subclass of "
                         "servers.BaseRequestHandler, StreamRequestHandler or "
                         "DatagramRequestHandler")
    return obj


def _handler_names(module: Any) -> list[str]:
    """Handler classes defined in `module` (or, if none, any it offers)."""
    bases = (handlers.BaseRequestHandler, socketserver.BaseRequestHandler)
    found = {name: value for name, value in vars(module).items()
             if isinstance(value, type) and issubclass(value, bases) and name[:1] != "_"}
    own = [name for name, value in found.items() if value.__module__ == module.__name__]
    return sorted(own or found)


def is_async(handler: type) -> bool:
    """True when the handler's `handle()` is `async def`."""
    return inspect.iscoroutinefunction(getattr(handler, "handle", None))


def _is_stream_handler(handler: type) -> bool:
    return issubclass(handler, (handlers.StreamRequestHandler,
                                socketserver.StreamRequestHandler))


def _is_datagram_handler(handler: type) -> bool:
    return issubclass(handler, (handlers.DatagramRequestHandler,
                                socketserver.DatagramRequestHandler))


def handler_for(handler: type, bind: Bind) -> type:
    """The class that serves `bind`: `handler`, or for a datagram address its datagram
    counterpart named in `handler.datagram_handler` (declared on the class itself).

    Raises:
        ValueError: the handler reads a stream and the address is datagram, or the reverse.
    """
    if bind.datagram and _is_stream_handler(handler):
        twin = vars(handler).get("datagram_handler")
        if isinstance(twin, type):
            return twin
        raise ValueError(f"{handler.__name__} is a stream handler and cannot serve {bind.url}; "
                         "bind it to tcp:// or unix:, or give a DatagramRequestHandler "
                         "(e.g. servers.builtin:DatagramEcho)")
    if not bind.datagram and _is_datagram_handler(handler):
        raise ValueError(f"{handler.__name__} is a datagram handler and cannot serve "
                         f"{bind.url}; bind it to udp:// or unixgram:")
    return handler


# --------------------------------------------------------------------------- server classes
def _server_bases() -> dict[tuple[str, str], type]:
    """(mode, kind) -> the library's class, for the classes this platform has."""
    table: dict[tuple[str, str], type] = {}
    for kind, plain in (("tcp", "TCPServer"), ("udp", "UDPServer"),
                        ("unix", "UnixStreamServer"), ("unixgram", "UnixDatagramServer")):
        for mode, name in (("reactor", plain), ("sync", plain),
                           ("threading", "Threading" + plain), ("forking", "Forking" + plain)):
            cls = getattr(servers, name, None)
            if cls is not None:
                table[mode, kind] = cls
    return table


class _ChildSignals:
    """For forking servers: a child ignores SIGINT (a Ctrl-C reaches the whole process group;
    the parent decides when to stop) and dies on SIGTERM (what the parent sends when the
    drain deadline passes). It inherited the parent's reactor handlers, which do neither."""

    def finish_request(self, request: Any, client_address: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        super().finish_request(request, client_address)  # type: ignore[misc]


class _CutOffQuietly:
    """A request that the drain deadline cut off was logged once, when it was cut: the error
    its handler meets afterwards (a broken pipe) is not reported again."""

    cut_off_requests: Any = frozenset()  # Run sets its own set

    def handle_error(self, request: Any, client_address: Any) -> None:
        if request in self.cut_off_requests:
            return
        super().handle_error(request, client_address)  # type: ignore[misc]


def server_class_for(mode: str, kind: str, settings: dict[str, Any]) -> type:
    """A subclass, made for this run, of the library's server class for `mode` and `kind`
    (e.g. threading + tcp -> `ThreadingTCPServer`), with `settings` as class attributes.

    Raises:
        ValueError: the platform lacks it (no `os.fork`, no Unix sockets).
    """
    base = _server_bases().get((mode, kind))
    if base is None:
        missing = "os.fork()" if mode == "forking" else "Unix sockets"
        raise ValueError(f"--mode {mode} with {kind} addresses needs {missing}, which this "
                         "platform lacks; choose another mode or address")
    attrs = dict(settings)
    if kind == "tcp":
        attrs.setdefault("allow_reuse_address", True)  # restart at once, as http.server does
    if kind not in ("unix", "unixgram"):
        attrs.pop("remove_stale_socket", None)
    if mode == "threading":
        # Run waits for request threads itself, up to the drain deadline; a thread that does
        # not end when its socket is cut off must not hold the process (server_close() joins
        # non-daemon threads without a bound).
        attrs.setdefault("daemon_threads", True)
    bases: tuple[type, ...] = (_CutOffQuietly, base)
    if mode == "forking":
        bases = (_ChildSignals, _CutOffQuietly, base)
    attrs["__module__"] = __name__
    return type(base.__name__, bases, attrs)


def _handler_subclass(handler: type, settings: dict[str, Any]) -> type:
    if not settings:
        return handler
    attrs = dict(settings, __module__=handler.__module__, __qualname__=handler.__qualname__)
    return type(handler.__name__, (handler,), attrs)


# --------------------------------------------------------------------------- arguments
def _count_or_none(text: str) -> int | None:
    if text.lower() == "none":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"write a whole number >= 1 or 'none', not {text!r}")
    return int(text)


def _count(text: str) -> int:
    value = _count_or_none(text)
    if value is None:
        raise argparse.ArgumentTypeError("write a whole number >= 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"write a number of seconds, not {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"write a number of seconds >= 0, not {text!r}")
    return value


def _seconds_or_none(text: str) -> float | None:
    if text.lower() == "none":
        return None
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("write a number of seconds > 0, or 'none'")
    return value


def _terminator(text: str) -> bytes:
    try:
        value = text.encode("latin-1").decode("unicode_escape").encode("latin-1")
    except (UnicodeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"write the terminator with backslash escapes, e.g. '\\n' or '\\r\\n\\r\\n' "
            f"(got {text!r})") from None
    if not value:
        raise argparse.ArgumentTypeError("the terminator cannot be empty; e.g. '\\n'")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with the error first: the message, then the short usage and where to read
    more (argparse prints the whole usage block before the one line that matters)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n{self.format_usage()}"
                     f"run '{self.prog} --help' for the addresses, modes and options\n")


USAGE = "%(prog)s MODULE:CLASS --bind URL [--bind URL ...] [--mode MODE] [options]"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m servers`."""
    parser = _Parser(
        prog="python -m servers", usage=USAGE,
        description="Serve a request handler class on one or more addresses, in one process.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("handler", metavar="MODULE:CLASS",
                        help="the handler class, e.g. servers.builtin:Echo or myhandlers:Shout "
                             "(modules in the current directory are found)")
    parser.add_argument("--bind", "-b", metavar="URL", action="append", default=[],
                        help="an address to serve on (required, repeatable); see 'addresses' "
                             "below")
    parser.add_argument("--mode", choices=MODES,
                        help="how requests run (default: reactor for async handlers, threading "
                             "for classic ones); see 'modes' below")
    # Given-or-not matters (an option given as 'none' overrides a class default), so these
    # options are absent from the namespace unless given.
    limits = parser.add_argument_group("limits and timeouts (default: the library's)",
                                       argument_default=argparse.SUPPRESS)
    limits.add_argument("--max-connections", type=_count_or_none, metavar="N",
                        help="requests in flight per address; at the bound the server stops "
                             "accepting until one ends (default 4096; 'none': no bound)")
    limits.add_argument("--max-threads", type=_count_or_none, metavar="N",
                        help="--mode threading: request threads per address (default 256)")
    limits.add_argument("--max-children", type=_count, metavar="N",
                        help="--mode forking: child processes per address (default 40)")
    limits.add_argument("--timeout", type=_seconds_or_none, metavar="SECONDS",
                        help="the handler's timeout: a read or write that waits longer raises "
                             "TimeoutError in handle() (default: none)")
    limits.add_argument("--shutdown-timeout", type=_seconds, metavar="SECONDS",
                        help="how long a graceful stop lets requests in flight finish before "
                             "cutting them off (default 30)")
    limits.add_argument("--read-ahead", type=_terminator, metavar="TERMINATOR",
                        help="classic handlers on stream addresses: hold each new connection "
                             "until its first request, up to TERMINATOR (e.g. '\\n' or "
                             "'\\r\\n\\r\\n'), has arrived, so a slow client cannot stall "
                             "--mode sync")
    secure = parser.add_argument_group("TLS and load balancers (stream addresses)",
                                       argument_default=argparse.SUPPRESS)
    secure.add_argument("--tls-cert", metavar="FILE",
                        help="serve TLS with this certificate chain (PEM); needs --tls-key")
    secure.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    secure.add_argument("--tls-client-ca", metavar="FILE",
                        help="require client certificates signed by these CAs (PEM)")
    secure.add_argument("--tls-handshake-timeout", type=_seconds_or_none, metavar="SECONDS",
                        help="seconds a client has to complete its handshake (default 30)")
    secure.add_argument("--proxy-protocol", choices=("v1", "v2", "any"),
                        help="every connection starts with a PROXY protocol header of this "
                             "version (HAProxy's send-proxy / send-proxy-v2)")
    secure.add_argument("--proxy-trusted", metavar="CIDR", action="append",
                        help="a network allowed to send PROXY headers (repeatable; default "
                             "loopback only)")
    parser.add_argument("--remove-stale-socket", action="store_true",
                        default=argparse.SUPPRESS,
                        help="unix: and unixgram: addresses: replace a socket file left by a "
                             "crashed run (nothing listens on it) instead of refusing to start")
    parser.add_argument("--log-level", default="warning", type=str.lower,
                        choices=("debug", "info", "warning", "error", "critical"),
                        help="log messages of at least this level to stderr (default warning)")
    parser.add_argument("--check", action="store_true",
                        help="check the arguments and the handler, bind every address and "
                             "release it at once, print what would be served, and exit")
    cli_workers.add_options(parser)
    return parser


# --------------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class Plan:
    """One server to start: its class, address and handler class."""

    bind: Bind
    server_class: type
    handler_class: type
    mode: str

    def describe(self, url: str | None = None) -> str:
        where = self.bind.url if url is None else url
        if url is not None and self.bind.socket is not None:
            where = f"{url} from {self.bind.url}"  # an inherited socket: say which
        return f"{self.handler_class.__name__} on {where} ({self.mode} mode)"


def make_plans(args: argparse.Namespace, error: Callable[[str], NoReturn]) -> list[Plan]:
    """Check the parsed arguments together and decide the servers; `error(message)` is
    called (argparse's `parser.error`, which exits 2) for any combination that cannot work."""
    if not args.bind:
        error("give at least one address to serve on, e.g. --bind tcp://127.0.0.1:9000")
    try:
        handler = load_handler(args.handler)
        binds = take_inherited_binds([parse_bind(text) for text in args.bind])
        pairs = [(bind, handler_for(handler, bind)) for bind in binds]
    except ValueError as exc:
        error(str(exc))
    _check_duplicates(binds, error)
    mode = args.mode or ("reactor" if is_async(handler) else "threading")
    _check_options(args, mode, pairs, error)
    stream_settings = _stream_settings(args, pairs, error)
    plans = []
    for bind, cls in pairs:
        _check_mode(mode, cls, error)
        settings = _server_settings(args)
        if not bind.datagram:
            settings.update(stream_settings)
        try:
            server_class = server_class_for(mode, bind.kind, settings)
        except ValueError as exc:
            error(str(exc))
        handler_settings = {"timeout": args.timeout} if "timeout" in vars(args) else {}
        plans.append(Plan(bind, server_class, _handler_subclass(cls, handler_settings), mode))
    return plans


def _check_duplicates(binds: list[Bind], error: Callable[[str], NoReturn]) -> None:
    """The same address twice would fail when the second server binds; say so up front."""
    seen: dict[Any, str] = {}
    for bind in binds:
        if bind.kind in ("tcp", "udp"):
            if bind.address[1] == 0:
                continue  # each port 0 is a different free port
            key: Any = (bind.kind, bind.address)
        else:  # unix: and unixgram: would both create the same file
            path = bind.address
            key = ("unix", path if path.startswith("\0") else os.path.abspath(path))
        if key in seen:
            same = (f"{bind.url} is given twice" if seen[key] == bind.url
                    else f"{seen[key]} and {bind.url} are the same address")
            error(f"{same}; each address can be served once")
        seen[key] = bind.url


def _check_mode(mode: str, handler: type, error: Callable[[str], NoReturn]) -> None:
    name = handler.__name__
    if mode == "reactor" and not is_async(handler):
        error(f"{name}.handle is a plain def: on the reactor it would run inline and stall "
              "every other client; use --mode threading (or forking), or --mode sync to "
              "accept one request at a time")
    if mode == "sync" and is_async(handler):
        error(f"{name}.handle is async def: it runs as a task on the reactor, never one "
              "request at a time; use --mode reactor")


def _check_options(args: argparse.Namespace, mode: str, pairs: list[tuple[Bind, type]],
                   error: Callable[[str], NoReturn]) -> None:
    given = vars(args)
    if "max_threads" in given and mode != "threading":
        error(f"--max-threads applies to --mode threading, not {mode}; use --max-connections")
    if "max_children" in given and mode != "forking":
        error(f"--max-children applies to --mode forking, not {mode}; use --max-connections")
    if "remove_stale_socket" in given and not any(b.kind in ("unix", "unixgram")
                                                   for b, _ in pairs):
        error("--remove-stale-socket applies to unix: and unixgram: addresses; drop it")
    if "read_ahead" in given:
        classic_streams = [b for b, cls in pairs if not b.datagram and not is_async(cls)]
        if not classic_streams:
            error("--read-ahead applies to classic (def handle) handlers on tcp:// or unix: "
                  "addresses; async handlers never block the loop, so drop it")


def _stream_settings(args: argparse.Namespace, pairs: list[tuple[Bind, type]],
                     error: Callable[[str], NoReturn]) -> dict[str, Any]:
    """Server attributes for stream addresses only: TLS and the PROXY protocol."""
    given = vars(args)
    settings: dict[str, Any] = {}
    tls_options = [name for name in ("tls_cert", "tls_key", "tls_client_ca",
                                     "tls_handshake_timeout") if name in given]
    proxy_options = [name for name in ("proxy_protocol", "proxy_trusted") if name in given]
    if (tls_options or proxy_options) and all(bind.datagram for bind, _ in pairs):
        error("TLS and PROXY protocol options apply to tcp:// and unix: addresses; there is no "
              "DTLS, so drop them for udp:// and unixgram:")
    if tls_options:
        if "tls_cert" not in given or "tls_key" not in given:
            error("TLS needs both --tls-cert FILE and --tls-key FILE")
        settings["ssl_context"] = _tls_context(given["tls_cert"], given["tls_key"],
                                               given.get("tls_client_ca"), error)
        if "tls_handshake_timeout" in given:
            settings["ssl_handshake_timeout"] = given["tls_handshake_timeout"]
    if "proxy_trusted" in given and "proxy_protocol" not in given:
        error("--proxy-trusted needs --proxy-protocol v1|v2|any")
    if "proxy_protocol" in given:
        settings["proxy_protocol"] = given["proxy_protocol"]
        if "proxy_trusted" in given:
            try:
                proxy.ProxyTrust(given["proxy_trusted"])
            except ValueError as exc:
                error(f"--proxy-trusted: {exc}")
            settings["proxy_trusted"] = tuple(given["proxy_trusted"])
    return settings


def _tls_context(cert: str, key: str, client_ca: str | None,
                 error: Callable[[str], NoReturn]) -> Any:
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        error(f"cannot load --tls-cert {cert} / --tls-key {key}: {exc}")
    if client_ca is not None:
        try:
            context.load_verify_locations(client_ca)
        except (OSError, ssl.SSLError) as exc:
            error(f"cannot load --tls-client-ca {client_ca}: {exc}")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _server_settings(args: argparse.Namespace) -> dict[str, Any]:
    given = vars(args)
    return {name: given[name] for name in SERVER_OPTIONS if name in given}


# --------------------------------------------------------------------------- running
#: Once the drain deadline has cut requests off (their sockets shut down, children sent
#: SIGTERM), how long their threads and children get to end before the process exits anyway.
CUT_OFF_GRACE = 0.5


class StopNow(BaseException):
    """Raised by a second stop signal (on the loop, between requests) or a third one
    (wherever the main thread is): stop without waiting for the drain. Not an `Exception`, so
    that a handler's `except Exception` cannot swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


class Run:
    """The servers of one `python -m servers` run on one reactor, and how they stop.

    Args:
        loop: the reactor every server is registered on.
        servers: the servers, already bound.

    Stop signals are handled in the signal handler itself (`stop()` for the first one), not
    between requests: a classic handler running inline (`--mode sync`) can hold the loop
    for as long as its client does, and the user must hear at once that the server is
    draining, and be able to cut it short.
    """

    def __init__(self, loop: reactor.Reactor, servers: list[BaseServer],
                 notifier: systemd.Notifier | None = None) -> None:
        self.loop = loop
        self.servers = servers
        self.notifier = notifier
        self.deadline: float | None = None
        self.forced: int | None = None
        self.closing = False
        self.cut: set[Any] = set()  # requests cut off: their errors are not reported again
        self._cut_entries: set[int] = set()
        for server in servers:
            server.cut_off_requests = self.cut  # type: ignore[attr-defined]

    def serve(self) -> int:
        """Serve until a stop signal; then drain and close. Returns the exit status."""
        previous_alarm = signal.signal(signal.SIGALRM, self._on_deadline)
        for signum in STOP_SIGNALS:
            # The reactor's handler makes a signal wake the loop even just before select();
            # ours then replaces its Python half, so that a signal acts at once.
            self.loop.add_signal_handler(signum, self.stop, signum)
            signal.signal(signum, self._on_signal)
        try:
            try:
                self.loop.serve_forever()
            except StopNow:
                logger.warning("second signal: stopping without waiting for requests in flight")
            self._wait_for_offloaded()
        except StopNow:
            pass  # yet another signal: stop waiting
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            try:
                self.close()
            except StopNow:
                pass
            finally:
                signal.signal(signal.SIGALRM, previous_alarm)
        return 0 if self.forced is None else 128 + self.forced

    def stop(self, signum: int) -> None:
        """The first stop signal: stop accepting, drain until the deadline, and say so on
        stderr (whatever the log level)."""
        if self.notifier is not None:
            self.notifier.stopping()
        timeout = self._timeout()
        self.deadline = self.loop.time() + timeout
        in_flight = len(self.loop.requests)
        name = signal.Signals(signum).name
        if in_flight:
            again = "Ctrl-C again" if signum == signal.SIGINT else "signal again (or Ctrl-C)"
            _say(f"stopping ({name}): no new connections; draining "
                 f"{_count_of(in_flight, 'request')} for up to {timeout:g} s; {again} to stop "
                 "now")
        else:
            _say(f"stopping ({name}): no requests in flight")
        if timeout > 0:
            signal.setitimer(signal.ITIMER_REAL, timeout)
        else:
            self._on_deadline(signal.SIGALRM, None)
        self.loop.shutdown()  # on the loop's thread: returns at once, the loop drains

    def close(self) -> None:
        """Close every server. Children still alive now (they ignored the deadline's SIGTERM)
        are killed; request threads still running are daemon threads, left behind."""
        self.closing = True
        for server in self.servers:
            for pid in list(getattr(server, "active_children", None) or ()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # exited meanwhile; server_close() reaps it
        for server in self.servers:
            server.server_close()

    def _timeout(self) -> float:
        return max((float(getattr(s, "shutdown_timeout", 0.0)) for s in self.servers),
                   default=0.0)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.deadline is None:
            self.stop(signum)
        elif self.forced is None:
            self.forced = signum
            self._cut_off("a second signal")
            if not self.closing:
                self.loop.call_soon_threadsafe(self._stop_now, signum)  # between requests
        else:
            raise StopNow(signum)

    def _stop_now(self, signum: int) -> None:
        raise StopNow(signum)

    def _on_deadline(self, signum: int, frame: object) -> None:
        self._cut_off(f"the drain deadline ({self._timeout():g} s) passed")

    def _wait_for_offloaded(self) -> None:
        """Once the loop's own requests are drained: turn the loop until the requests in
        threads and children end too (their ends are reported through the loop), at most
        until the deadline (when they are cut off) plus `CUT_OFF_GRACE`."""
        if not self._offloaded():
            return
        if self.deadline is None:  # a handler called shutdown(): the same deadline applies
            self.deadline = self.loop.time() + self._timeout()
            signal.setitimer(signal.ITIMER_REAL, max(self._timeout(), 1e-6))
        start = self.loop.time() if self.forced is not None else self.deadline
        give_up = start + CUT_OFF_GRACE
        wake = self.loop.call_at(give_up, lambda: None)
        try:
            self.loop.run_until(lambda: not self._offloaded() or self.loop.time() >= give_up,
                                poll_interval=None)
        finally:
            wake.cancel()

    def _offloaded(self) -> list[Any]:
        return [entry for entry in self.loop.requests if entry.stage is Stage.OFFLOADED]

    def _cut_off(self, reason: str) -> None:
        """Shut down the socket of every request still running in a thread or inline (its
        blocked reads see end-of-file, its writes fail), and send children SIGTERM: one log
        line per request; its handler's errors from then on are not reported."""
        for entry in list(self.loop.requests):
            inline = entry.stage is Stage.RUNNING and entry.task is None
            if not (inline or entry.stage is Stage.OFFLOADED) or id(entry) in self._cut_entries:
                continue
            self._cut_entries.add(id(entry))
            self.cut.add(entry.request)
            logger.warning("%s: cutting off the request from %s (%s): %s",
                           builtin.server_url(entry.server),
                           builtin.format_address(entry.client_address),
                           "inline" if inline else "in a thread" if entry.where == "thread"
                           else f"in {entry.where}", reason)
            if isinstance(entry.request, socket.socket) and entry.request.fileno() >= 0:
                try:
                    entry.request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # the peer or the handler closed it meanwhile
        for server in self.servers:
            for pid in list(getattr(server, "active_children", None) or ()):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass  # exited meanwhile; it is reaped as usual


def _count_of(count: int, noun: str) -> str:
    """`1 request`, `2 requests`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _say(text: str) -> None:
    """One line on stderr, written with one system call: safe in a signal handler, where the
    interrupted code may be in the middle of a buffered write to stderr."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        sys.stderr.write(text + "\n")  # stderr replaced by an object without a descriptor
        return
    os.write(fd, (text + "\n").encode(errors="replace"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (`python -m servers` exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # MODULE:CLASS may live in the current directory
    cli_workers.check_options(args, parser.error)
    if getattr(args, "workers", None) is not None and not args.check:
        return cli_workers.main(args, parser)
    plans = make_plans(args, parser.error)
    with reactor.Reactor() as loop:
        started = _bind(plans, loop, parser.prog)
        if started is None:
            return 1
        if args.check:  # every address could be bound: release them at once
            for server in started:
                server.server_close()
            for plan in plans:
                print(f"would serve {plan.describe()}", file=sys.stderr)
            return 0
        for plan, server in zip(plans, started):
            print(f"serving {plan.describe(builtin.server_url(server))}", file=sys.stderr,
                  flush=True)
        notifier = systemd.Notifier(loop)  # where NOTIFY_SOCKET is set
        loop.call_soon(notifier.ready)  # on the loop's first turn: every server accepts
        return Run(loop, started, notifier).serve()


def _bind(plans: list[Plan], loop: reactor.Reactor, prog: str) -> list[BaseServer] | None:
    """Make and register every server (an inherited socket is served as it is); on an error,
    close those made and the inherited sockets not yet served, say which address failed and
    return None."""
    started: list[BaseServer] = []
    for index, plan in enumerate(plans):
        try:
            server_class: type[BaseServer] = plan.server_class
            if plan.bind.socket is not None:
                started.append(server_class.from_socket(plan.bind.socket, plan.handler_class))
            else:
                started.append(server_class(plan.bind.address, plan.handler_class))
            loop.register(started[-1])
        except (OSError, ValueError) as exc:  # ValueError: an inherited socket not listening
            for server in started:
                server.server_close()
            for each in plans[index + 1:]:
                if each.bind.socket is not None:
                    each.bind.socket.close()
            if isinstance(exc, StaleSocketFile):
                exc = StaleSocketFile(exc.path, "give --remove-stale-socket")
            print(f"{prog}: error: cannot listen on {plan.bind.url}: {exc}", file=sys.stderr)
            return None
    return started
