"""Running under a service manager: inherited sockets in, readiness notifications out.

systemd (and the tools that speak its protocols: `systemd-socket-activate`, s6, ...) hands a
service its listening sockets as descriptors 3, 4, ..., described by `LISTEN_PID`,
`LISTEN_FDS` and `LISTEN_FDNAMES` (sd_listen_fds(3)), and listens on `NOTIFY_SOCKET` for
datagrams such as `READY=1`, `STOPPING=1` and `WATCHDOG=1` (sd_notify(3)). This module reads
the first (`listen_fds()`, `socket_from_fd()`) and sends the second (`notify()`, `Notifier`);
a server is then made on an inherited socket with `TCPServer.from_socket(sock, Handler)`.
It never binds, listens or forks, and outside a service manager every call does nothing.

Why it is this way, where it differs from the obvious:
- We clear the `LISTEN_*` variables even when `LISTEN_PID` names another process, as
  `sd_listen_fds(unset_environment=1)` does: they describe another process's descriptors, and
  a program we start must not take its own descriptors 3, 4, ... for them.
- A descriptor that is not a socket (systemd passes FIFOs and devices too: `ListenFIFO=`,
  `ListenSpecial=`) is skipped with a warning rather than refused, so that a program that
  reads its FIFO by number can still take its sockets from `listen_fds()`.
- Notifications never raise for a transport error and never block the loop: the socket is
  sent to without waiting, and a failure is one warning (systemd then acts on its own
  timeouts, which is what would happen without the message anyway).
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import time
from typing import Final

import reactor

__all__ = ["listen_fds", "take_inherited", "socket_from_fd", "notify", "Notifier",
           "LISTEN_FDS_START"]

logger = logging.getLogger("servers")

#: The first descriptor a service manager passes (SD_LISTEN_FDS_START in sd-daemon.h).
LISTEN_FDS_START: Final = 3

_LISTEN_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


# --------------------------------------------------------------------------- inherited sockets
def listen_fds(unset_environment: bool = True) -> dict[str, socket.socket]:
    """The sockets a service manager passed to this process, by name.

    Reads `LISTEN_PID` (must be this process's id, else there are none), `LISTEN_FDS` (how
    many descriptors, from 3 up) and `LISTEN_FDNAMES` (their names, colon-separated; without
    it the names are "fd3", "fd4", ...). Each socket's family and type are read from its
    descriptor, and FD_CLOEXEC is set on it, as sd_listen_fds(3) does. A name given to several
    sockets (systemd names every socket of a .socket unit after the unit unless
    `FileDescriptorName=` says otherwise) keys the first one; the others are keyed by their
    descriptor ("fd4", ...). A passed descriptor that is not a socket is skipped with a
    warning (and left open).

    The sockets are the caller's: make servers on them with `from_socket()`, or close them.
    Call it once: the second call finds the variables gone and returns {}.

    Args:
        unset_environment: remove the three variables from `os.environ` (whether or not they
            were for this process), so that programs this process starts do not take them
            for their own.

    Returns:
        {name: socket}, in descriptor order; {} when nothing was passed to this process.

    Raises:
        ValueError: the variables are malformed, or a descriptor they announce is not open;
            the message says which.
    """
    pairs = take_inherited(unset_environment)
    sockets: dict[str, socket.socket] = {}
    for name, sock in pairs:
        key = name if name not in sockets else f"fd{sock.fileno()}"
        if key in sockets:  # a name "fd4" given to fd 3, and fd 4 also named like fd 3
            for _, each in pairs:
                each.close()
            raise ValueError(f"LISTEN_FDNAMES gives the name {key!r} twice; give each socket "
                             "its own FileDescriptorName=")
        sockets[key] = sock
    return sockets


def take_inherited(unset_environment: bool = True) -> list[tuple[str, socket.socket]]:
    """Like `listen_fds()`, but (name, socket) pairs in descriptor order, with the names as
    the service manager gave them, repeated ones included (the command line's `systemd:NAME`
    serves every socket of a name). Same argument, same errors."""
    try:
        announced = _announced()
    finally:
        if unset_environment:
            for variable in _LISTEN_VARIABLES:
                os.environ.pop(variable, None)
    found = []
    for fd, name in announced:
        kind = _file_kind(fd)
        if kind == "socket":
            found.append((name, socket_from_fd(fd)))
        else:
            os.set_inheritable(fd, False)
            logger.warning("descriptor %d (%r) passed by the service manager is %s, not a "
                           "socket; skipped (it stays open)", fd, name, kind)
    return found


def _announced() -> list[tuple[int, str]]:
    """The (descriptor, name) pairs the `LISTEN_*` variables announce for this process."""
    pid_text = os.environ.get("LISTEN_PID")
    if pid_text is None:
        return []
    if _positive_int(pid_text, "LISTEN_PID") != os.getpid():
        logger.debug("LISTEN_PID=%s is not this process (%d): no inherited sockets",
                     pid_text, os.getpid())
        return []
    count_text = os.environ.get("LISTEN_FDS")
    if count_text is None:
        return []
    count = _positive_int(count_text, "LISTEN_FDS")
    fds = range(LISTEN_FDS_START, LISTEN_FDS_START + count)
    names_text = os.environ.get("LISTEN_FDNAMES")
    names = [f"fd{fd}" for fd in fds] if names_text is None else names_text.split(":")
    if len(names) != count:
        raise ValueError(f"LISTEN_FDNAMES={names_text!r} has {len(names)} names for "
                         f"LISTEN_FDS={count} descriptors; the service manager must name each")
    for fd in fds:
        if _file_kind(fd) == "closed":
            raise ValueError(f"LISTEN_FDS={count} announces descriptor {fd}, which is not "
                             "open in this process (was it closed, or not passed on?)")
    return list(zip(fds, names))


def socket_from_fd(fd: int) -> socket.socket:
    """A socket object for the inherited descriptor `fd`, which then owns it (closing the
    socket closes `fd`). Family, type and protocol are read from the descriptor; FD_CLOEXEC
    is set, so programs this process starts do not inherit it.

    Raises:
        ValueError: `fd` is not open, or is not a socket.
    """
    kind = _file_kind(fd)
    if kind != "socket":
        raise ValueError(f"descriptor {fd} is {kind}, not a socket; pass the number of an "
                         "inherited socket")
    os.set_inheritable(fd, False)
    return socket.socket(fileno=fd)


def _file_kind(fd: int) -> str:
    """"socket", or what else `fd` is ("closed", "a FIFO", ...)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return "closed"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a socket"


def _positive_int(text: str, name: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError(f"{name}={text!r} is not a positive whole number; check the service "
                         "manager's (or launcher's) environment")
    return int(text)


# --------------------------------------------------------------------------- notifications
_warned: set[tuple[str, str]] = set()  # (socket, problem) pairs already logged: no log floods


def notify(*states: str) -> bool:
    """Send `states` ("READY=1", "STATUS=starting", ...) to the service manager, in one
    datagram to `NOTIFY_SOCKET` (a path, or "@name" for an abstract socket). Never blocks.

    Returns:
        True if the datagram was sent; False where `NOTIFY_SOCKET` is unset (not run by a
        service manager) or the datagram could not be sent (one warning per socket and
        problem is logged; no OSError is raised).

    Raises:
        ValueError: a state is not NAME=VALUE, or holds a newline.
    """
    for state in states:
        if "=" not in state or "\n" in state:
            raise ValueError(f"a notification is NAME=VALUE on one line, e.g. 'READY=1' "
                             f"(got {state!r})")
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    if target.startswith("@"):
        address = "\0" + target[1:]
    elif target.startswith("/"):
        address = target
    else:
        _warn_once(target, "unsupported", "NOTIFY_SOCKET=%r is neither a path nor @name; "
                   "notifications are not sent")
        return False
    message = "\n".join(states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(message, address)
    except OSError as exc:
        problem = exc.strerror or str(exc)
        _warn_once(target, problem, "cannot notify the service manager at %r: %s", problem)
        return False
    return True


def _warn_once(target: str, problem: str, message: str, *args: object) -> None:
    if (target, problem) not in _warned:
        _warned.add((target, problem))
        logger.warning(message, target, *args)


class Notifier:
    """The notifications of one serving process, sent where `NOTIFY_SOCKET` is set (systemd's
    `Type=notify`, `Type=notify-reload`, `WatchdogSec=`); without it every method does nothing.

    Only the process that made it sends (systemd's default `NotifyAccess=main` ignores the
    others): in a forked child its methods do nothing.

    Args:
        loop: the reactor that serves. Where `WATCHDOG_USEC` is set for this process (and
            `WATCHDOG_PID`, if set, is this process), a timer on it sends `WATCHDOG=1` every
            half `WATCHDOG_USEC`. It fires only while the loop turns, so a loop stuck in a
            handler stops the pings and systemd restarts the service, as it should.

    Attributes:
        enabled: `NOTIFY_SOCKET` is set.
        watchdog_interval: seconds between two `WATCHDOG=1`, or None (no watchdog).
    """

    def __init__(self, loop: reactor.Reactor) -> None:
        self._loop = loop
        self._pid = os.getpid()
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self.watchdog_interval = _watchdog_interval() if self.enabled else None
        self._timer: reactor.TimerHandle | None = None
        if self.watchdog_interval is not None:
            self._timer = loop.call_later(self.watchdog_interval, self._ping)

    def ready(self, status: str | None = None) -> None:
        """Send `READY=1` (and `STATUS=status`): every server accepts. After `reloading()`,
        the reload is done."""
        self._send("READY=1", *([] if status is None else [f"STATUS={status}"]))

    def reloading(self) -> None:
        """Send `RELOADING=1` with `MONOTONIC_USEC` (as `Type=notify-reload` requires): a
        reload has begun; call `ready()` once it is done."""
        # The protocol's clock is CLOCK_MONOTONIC itself, whatever clock the reactor uses.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """Send `STOPPING=1`: a graceful stop has begun."""
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        """Send `STATUS=text` (shown by `systemctl status`)."""
        self._send(f"STATUS={text}")

    def close(self) -> None:
        """Stop the watchdog pings (the reactor may then be closed). Closing twice is
        harmless."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _send(self, *states: str) -> None:
        if self.enabled and os.getpid() == self._pid:
            notify(*states)

    def _ping(self) -> None:
        self._send("WATCHDOG=1")
        if self._timer is not None and self.watchdog_interval is not None:
            self._timer = self._loop.call_later(self.watchdog_interval, self._ping)

    def __repr__(self) -> str:
        watchdog = "off" if self.watchdog_interval is None else f"every {self.watchdog_interval:g}s"
        return f"<Notifier {'on' if self.enabled else 'off'}, watchdog {watchdog}>"


def _watchdog_interval() -> float | None:
    """Half of `WATCHDOG_USEC` in seconds, if the watchdog is on for this process."""
    usec_text = os.environ.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    pid_text = os.environ.get("WATCHDOG_PID")
    try:
        usec = _positive_int(usec_text, "WATCHDOG_USEC")
        if pid_text and _positive_int(pid_text, "WATCHDOG_PID") != os.getpid():
            return None
    except ValueError as exc:
        logger.warning("%s; the watchdog is off", exc)
        return None
    return usec / 2_000_000
