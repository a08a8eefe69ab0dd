"""Byte transports: how one connection's bytes come in and go out, chosen once per request.

The reader and writer of an async handler (`handlers.io`) sit on a transport and never look at
the socket to learn which world they are in. The server that starts the request knows the mode
and picks the transport then (`choose_transport()` picks for callers that do not say):

- `SocketTransport`: a non-blocking plain socket on a reactor;
- `TLSTransport`: a non-blocking `ssl.SSLSocket` on a reactor (the handshake is done already);
- `BlockingTransport`: a blocking socket or `ssl.SSLSocket`, in a thread or a forked child, or
  wherever `reactor.run_blocking` drives the handler.

Every transport has the same surface: `recv(size)` gives bytes (b"" at end-of-file) or raises
`BlockingIOError` when nothing can be read now (non-blocking transports only); `send(data)`
returns how many bytes left (raising `BlockingIOError` when none could); `blocking` says
whether calls wait; `tls` is the connection's `ssl.SSLSocket`, or None. What the TLS peer did
wrong reaches the reader and writer as the `ConnectionError` a plain socket would raise (see
`_tls_peer_failure`), so that it ends an async request the same way, with one log line.

Why a non-blocking `SSLSocket` rather than an `SSLObject` over memory BIOs: OpenSSL then reads
and writes the descriptor itself, so a record costs no extra copy through Python bytes, and
`recv()` below drains `pending()` so that no decrypted byte is left inside the TLS layer where
the loop's readiness events could not see it (Tornado's `SSLIOStream` takes the same route).
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import ssl

__all__ = ["Transport", "SocketTransport", "TLSTransport", "BlockingTransport",
           "choose_transport", "tls_of", "NO_SIGNAL"]

# A send to a peer that has gone raises BrokenPipeError instead of raising SIGPIPE, even in a
# program that restored SIGPIPE's default action (which would kill the process). Plain sockets
# only: `SSLSocket` refuses flags (OpenSSL writes the descriptor itself).
NO_SIGNAL: int = getattr(socket, "MSG_NOSIGNAL", 0)


def tls_of(sock: Any) -> ssl.SSLSocket | None:
    """`sock` itself when it is an `ssl.SSLSocket`, else None (without importing `ssl`: a
    program that never imported it has no TLS socket)."""
    ssl_module = sys.modules.get("ssl")
    if ssl_module is not None and isinstance(sock, ssl_module.SSLSocket):
        return cast("ssl.SSLSocket", sock)
    return None


class Transport:
    """Bytes in and out of one connection (see the module docstring for the contract)."""

    __slots__ = ("sock", "fd")
    blocking = False

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.fd: int = sock.fileno()

    @property
    def tls(self) -> ssl.SSLSocket | None:
        """The connection's `ssl.SSLSocket`, or None for plain TCP / Unix sockets."""
        return None

    def recv(self, size: int) -> bytes:
        raise NotImplementedError

    def send(self, data: Any) -> int:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self.fd}>"


class SocketTransport(Transport):
    """A non-blocking plain socket driven by a reactor."""

    __slots__ = ()

    def recv(self, size: int) -> bytes:
        data: bytes = self.sock.recv(size)
        return data

    def send(self, data: Any) -> int:
        sent: int = self.sock.send(data, NO_SIGNAL)
        return sent


# ssl.SSLWantReadError / SSLWantWriteError, ssl.SSLError and ssl.SSLEOFError, filled in when
# the first TLS transport is made (so that importing this module does not import `ssl`).
_WANT_IO: tuple[type[BaseException], ...] = ()
_SSL_ERROR: tuple[type[BaseException], ...] = ()
_SSL_EOF: tuple[type[BaseException], ...] = ()


def _load_ssl_errors() -> None:
    global _WANT_IO, _SSL_ERROR, _SSL_EOF
    if not _WANT_IO:
        import ssl
        _WANT_IO = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
        _SSL_ERROR = (ssl.SSLError,)
        _SSL_EOF = (ssl.SSLEOFError,)


def _tls_peer_failure(exc: BaseException, sending: bool) -> ConnectionError:
    """The `ConnectionError` a plain socket would raise for what the TLS peer did: OpenSSL
    reports a peer that reset or closed without close_notify as `SSLEOFError` ("EOF occurred
    in violation of protocol") on a write, and records that do not decrypt as `SSLError`."""
    if isinstance(exc, _SSL_EOF):
        if sending:
            return BrokenPipeError(errno.EPIPE, "the TLS peer has gone (it reset the "
                                   "connection or closed it without close_notify)")
        return ConnectionResetError(errno.ECONNRESET, "the TLS peer closed the connection "
                                    "without close_notify")
    reason = getattr(exc, "reason", None) or exc
    return ConnectionAbortedError(errno.ECONNABORTED, f"TLS error in what the peer sent: "
                                  f"{reason}")


class TLSTransport(Transport):
    """A non-blocking `ssl.SSLSocket` driven by a reactor, after its handshake.

    OpenSSL's "want read" / "want write" become `BlockingIOError`. A peer that closes without
    close_notify is end-of-file, as the socket's `suppress_ragged_eofs` (default True) says.
    Renegotiation is not supported: a TLS 1.2 peer that asks for it is served until its own
    timeouts end the connection (TLS 1.3 has no renegotiation).
    """

    __slots__ = ()

    def __init__(self, sock: Any) -> None:
        _load_ssl_errors()
        super().__init__(sock)

    @property
    def tls(self) -> ssl.SSLSocket | None:
        tls: ssl.SSLSocket = self.sock
        return tls

    def recv(self, size: int) -> bytes:
        sock = self.sock
        try:
            data: bytes = sock.recv(size)
        except _WANT_IO:
            raise BlockingIOError("TLS record incomplete") from None
        except _SSL_ERROR as exc:
            raise _tls_peer_failure(exc, sending=False) from exc
        # One SSL_read gives at most one record (16 KiB): take what OpenSSL already holds
        # decrypted, which no readiness event would announce.
        if data and sock.pending():
            chunks = [data]
            size -= len(data)
            while size > 0 and sock.pending():
                chunk = sock.recv(min(size, sock.pending()))
                if not chunk:
                    break
                chunks.append(chunk)
                size -= len(chunk)
            data = b"".join(chunks)
        return data

    def send(self, data: Any) -> int:
        try:
            sent: int = self.sock.send(data)
        except _WANT_IO:
            raise BlockingIOError("TLS layer cannot write now") from None
        except _SSL_EOF as exc:
            raise _tls_peer_failure(exc, sending=True) from exc
        return sent


class BlockingTransport(Transport):
    """A blocking socket or `ssl.SSLSocket` (threads, forked children, `run_blocking`).

    `recv()` and `send()` wait, each bounded by `settimeout()` (`TimeoutError` after it);
    `send()` sends everything.
    """

    __slots__ = ("_flags", "_timeout")
    blocking = True

    def __init__(self, sock: Any) -> None:
        super().__init__(sock)
        self._flags = NO_SIGNAL
        if tls_of(sock) is not None:
            self._flags = 0
            _load_ssl_errors()
        self._timeout: float | None = sock.gettimeout()

    @property
    def tls(self) -> ssl.SSLSocket | None:
        return tls_of(self.sock)

    @property
    def timeout(self) -> float | None:
        """The socket's own timeout when the transport was made."""
        return self._timeout

    def settimeout(self, timeout: float | None) -> None:
        """Bound the next calls (None: no limit); a no-op when unchanged."""
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout

    def recv(self, size: int) -> bytes:
        try:
            data: bytes = self.sock.recv(size)
        except _SSL_ERROR as exc:  # matches nothing until a TLS socket was seen
            raise _tls_peer_failure(exc, sending=False) from exc
        return data

    def send(self, data: Any) -> int:
        try:
            self.sock.sendall(data, self._flags)
        except _SSL_EOF as exc:
            raise _tls_peer_failure(exc, sending=True) from exc
        return len(data) if type(data) is bytes else memoryview(data).nbytes


def choose_transport(sock: Any) -> Transport:
    """The transport for `sock` when no server chose one: a non-blocking socket (timeout 0) is
    driven by traps (a reactor, or `run_blocking`); any other socket blocks."""
    if sock.gettimeout() != 0.0:
        return BlockingTransport(sock)
    if tls_of(sock) is not None:
        return TLSTransport(sock)
    return SocketTransport(sock)
