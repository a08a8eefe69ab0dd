"""The work due before a stream connection's handler runs, as stages of its one table entry.

After `verify_request()` a stream server hands the connection to an `Admission`, which owns
its table entry until the handler takes over, and moves it through the stages in one fixed
order, each on the reactor without blocking and each bounded in time:

    ACCEPTED -> PROXY_HEADER   the PROXY protocol header (`proxy_protocol`), every mode
             -> HANDSHAKING    the TLS handshake (`ssl_context`; plain servers: the mixins
                               complete it in the thread or child instead)
             -> READING_AHEAD  the first request (`read_ahead`, classic handlers)
             -> dispatch       `process_request()`, which adopts the same entry (same id/age)

A stage that fails or runs out of time ends the connection alone, with one log line
(`_fail`); nothing else is affected. A connection with no stage to go through never gets an
`Admission` (the server dispatches it at once: no allocation on the hot path).
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import TYPE_CHECKING, Any, Callable

from handlers.transport import tls_of
from reactor import Stage

from . import tls as tls_stage

if TYPE_CHECKING:
    from . import proxy as proxy_protocol

__all__ = ["Admission"]

logger = logging.getLogger("servers")



class Admission:
    """Moves one accepted stream connection through its stages (see the module docstring).

    `server` provides the attributes (`proxy_protocol`, `ssl_context`, `read_ahead`, their
    bounds) and the calls `_dispatch_request(request, client_address)`, `_abandon(entry)`,
    `_can_read_ahead(request)`, `_proxy_trust()`, `_remember_proxy_header(request, info)` and
    `_name()`.
    """

    __slots__ = ("server", "reactor", "entry", "proxy", "_timer", "_waiting", "_header",
                 "_low_water")

    def __init__(self, server: Any, entry: Any) -> None:
        self.server = server
        self.reactor = server.reactor
        self.entry = entry
        self.proxy: proxy_protocol.ProxyInfo | None = None  # the header, once read
        self._timer: Any = None
        self._waiting = ""  # "read" or "write" while a reader/writer is registered
        self._header = b""  # PROXY header bytes consumed so far
        self._low_water = 0

    # ------------------------------------------------------------------ the stage order
    def start(self) -> None:
        if self.server.proxy_protocol is not None:
            self._start_proxy_header()
        else:
            self._after_proxy_header()

    def _after_proxy_header(self) -> None:
        server, entry = self.server, self.entry
        context = server.ssl_context  # the value current now: rotation works per accept
        if context is not None and tls_of(entry.request) is None:
            try:
                entry.request = tls_stage.wrap_accepted(context, entry.request)
            except (OSError, ValueError) as exc:
                self._fail(logging.WARNING, "cannot start TLS: %s", exc)
                return
        tls = tls_of(entry.request)
        if tls is not None and tls_stage.handshake_pending(tls) and \
                not server.request_dispatch.handshake_in_worker:
            self._start_handshake()
        else:
            self._after_handshake()

    def _after_handshake(self) -> None:
        if self.server.read_ahead is not None and self.server._can_read_ahead(self.entry.request):
            self._start_read_ahead()
        else:
            self._dispatch()

    def _dispatch(self) -> None:
        entry = self.entry
        if self.proxy is not None:
            self.server._remember_proxy_header(entry.request, self.proxy)
        self.server._dispatch_request(entry.request, entry.client_address)

    # ------------------------------------------------------------------ PROXY header
    def _start_proxy_header(self) -> None:
        server, entry = self.server, self.entry
        peer = entry.client_address
        try:
            trusted = server._proxy_trust().trusts(peer)
        except ValueError as exc:  # proxy_trusted was made invalid while serving
            self._fail(logging.ERROR, "invalid setting: %s", exc)
            return
        if not trusted:
            self._fail(logging.WARNING, "PROXY header expected from an untrusted peer "
                       "(not in proxy_trusted)")
            return
        entry.move_to(Stage.PROXY_HEADER)
        self._arm(server.proxy_header_timeout, self._proxy_header_expired)
        self._wait("read", self._read_proxy_header)

    def _read_proxy_header(self) -> None:
        """Peek, parse, and consume exactly what belongs to the header: the bytes after it
        stay in the socket for TLS or the handler."""
        from . import proxy as proxy_protocol  # loaded once: only PROXY servers need it
        server, sock = self.server, self.entry.request
        wanted = max(server.proxy_header_max_size, proxy_protocol.V1_MAX_LINE_BYTES) - \
            len(self._header)
        try:
            peeked = sock.recv(wanted, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(logging.INFO, "connection lost during the PROXY header: %s", exc)
            return
        if not peeked:
            self._fail(logging.INFO, "connection closed before its PROXY header was complete")
            return
        try:
            parsed = proxy_protocol.parse_proxy_header(
                self._header + peeked, server.proxy_protocol, server.proxy_header_max_size)
            if parsed is None:  # all of it belongs to the header: take it, wait for more
                self._header += sock.recv(len(peeked))
                return
            info, length = parsed
            taken = length - len(self._header)
            if taken and len(sock.recv(taken)) != taken:
                raise proxy_protocol.ProxyHeaderError("the header was cut short")
        except proxy_protocol.ProxyHeaderError as exc:
            self._fail(logging.WARNING, "bad PROXY header: %s", exc)
            return
        except ValueError as exc:  # not the peer's fault: a setting made invalid while serving
            self._fail(logging.ERROR, "invalid setting (proxy_protocol=%r, "
                       "proxy_header_max_size=%r): %s", server.proxy_protocol,
                       server.proxy_header_max_size, exc)
            return
        except OSError as exc:
            self._fail(logging.INFO, "connection lost during the PROXY header: %s", exc)
            return
        self._end_wait()
        self._disarm()  # the header is in: its deadline must not cut the request later
        self._header = b""
        info = info.with_peer(self.entry.client_address)
        self.proxy = info
        if info.client_address is not None:
            self.entry.client_address = info.client_address
        self._after_proxy_header()

    def _proxy_header_expired(self) -> None:
        self._timer = None
        self._fail(logging.INFO, "no complete PROXY header within proxy_header_timeout=%ss",
                   self.server.proxy_header_timeout)

    # ------------------------------------------------------------------ TLS handshake
    def _start_handshake(self) -> None:
        self.entry.move_to(Stage.HANDSHAKING)
        self.entry.request.setblocking(False)
        self._arm(self.server.ssl_handshake_timeout, self._handshake_expired)
        self._handshake_step()

    def _handshake_step(self) -> None:
        """One non-blocking step: wait for whatever OpenSSL needs (readable or writable)."""
        tls = self.entry.request
        ssl = sys.modules["ssl"]  # loaded: a TLS socket exists
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            if self._waiting != "read":
                self._wait("read", self._handshake_step)
            return
        except ssl.SSLWantWriteError:
            if self._waiting != "write":
                self._wait("write", self._handshake_step)
            return
        except (OSError, ValueError) as exc:
            self._handshake_failed(exc)
            return
        self._end_wait()
        self._disarm()
        tls.setblocking(True)  # as accept() gives it; async handlers switch it back
        self._after_handshake()

    def _handshake_expired(self) -> None:
        self._timer = None
        self._handshake_failed(TimeoutError("the handshake did not complete"))

    def _handshake_failed(self, exc: BaseException) -> None:
        if self._ended_without_us():
            return
        tls_stage.log_handshake_failure(self.server._name(), self.entry.client_address, exc,
                                        self.server.ssl_handshake_timeout)
        self._close()

    # ------------------------------------------------------------------ read-ahead
    def _start_read_ahead(self) -> None:
        self.entry.move_to(Stage.READING_AHEAD)
        self._arm(self.server.read_ahead_timeout, self._read_ahead_expired)
        self._wait("read", self._read_ahead_ready)

    def _read_ahead_ready(self) -> None:
        server, request = self.server, self.entry.request
        if tls_of(request) is not None:
            # Encrypted bytes cannot be peeked at: a readable socket means the first record
            # of the request has arrived, which is as far as read-ahead can see.
            self._read_ahead_done()
            return
        limit = server.read_ahead_limit
        try:
            peeked = request.recv(limit, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            peeked = b""  # the handler will meet the error itself
        if peeked and len(peeked) < limit and server.read_ahead not in peeked and \
                not 0 < len(peeked) < self._low_water:  # woken with nothing new: EOF/error
            self._read_ahead_wait_for_more(len(peeked))
            return
        self._read_ahead_done()

    def _read_ahead_wait_for_more(self, buffered: int) -> None:
        """The peeked bytes stay in the socket, which therefore stays readable: wake again
        only once more arrive, so that a client that dribbles cannot spin the loop. TCP has a
        receive low-water mark for that; elsewhere (Unix sockets) look again a little later."""
        request = self.entry.request
        if request.family in (socket.AF_INET, socket.AF_INET6) and \
                hasattr(socket, "SO_RCVLOWAT"):
            try:
                request.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, buffered + 1)
            except OSError:
                pass
            else:
                self._low_water = buffered + 1
                return  # still registered as a reader
        self._end_wait()
        self.reactor.call_later(self.server.read_ahead_recheck, self._read_ahead_recheck)

    def _read_ahead_recheck(self) -> None:
        if self.entry.stage is Stage.READING_AHEAD and self.server.reactor is not None:
            self._wait("read", self._read_ahead_ready)

    def _read_ahead_done(self) -> None:
        self._end_wait()
        self._disarm()
        if self._low_water:
            try:
                self.entry.request.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            except OSError:
                pass  # the handler will meet the error itself
        self._dispatch()

    def _read_ahead_expired(self) -> None:
        self._timer = None
        self._fail(logging.INFO, "no complete request within read_ahead_timeout=%ss",
                   self.server.read_ahead_timeout)

    # ------------------------------------------------------------------ mechanics
    def _wait(self, what: str, callback: Callable[[], None]) -> None:
        fd = self.entry.fd
        if self._waiting:
            self.reactor.forget(fd)
        if what == "read":
            self.reactor.add_reader(fd, callback)
        else:
            self.reactor.add_writer(fd, callback)
        self._waiting = what

    def _end_wait(self) -> None:
        if self._waiting:
            self._waiting = ""
            self.reactor.forget(self.entry.fd)

    def _arm(self, timeout: float | None, on_expire: Callable[[], None]) -> None:
        self._disarm()
        if timeout is not None:
            self._timer = self.reactor.call_later(timeout, on_expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, level: int, message: str, *args: Any) -> None:
        """End the connection alone, with one log line naming the server and the peer."""
        if self._ended_without_us():
            return
        logger.log(level, "%s: closing connection from %s: " + message, self.server._name(),
                   self.entry.client_address, *args)
        self._close()

    def _ended_without_us(self) -> bool:
        """True when the connection was ended already, without us: a drain past
        `shutdown_timeout` abandons staged entries, and then only our timer can still fire.
        Its descriptor number may belong to another connection by now, and the server may
        have left the reactor: nothing may be touched or logged, only our state forgotten."""
        if self.entry.stage is not Stage.CLOSED:
            return False
        self._timer = None
        self._waiting = ""
        return True

    def _close(self) -> None:
        """End the connection without running its handler (its failure is logged already;
        callers check `_ended_without_us()` first)."""
        self._end_wait()
        self._disarm()
        entry = self.entry
        if entry.stage is Stage.ACCEPTED:
            entry.move_to(Stage.CLOSING)
        self.server._abandon(entry)
