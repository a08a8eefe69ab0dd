"""TLS for stream servers: wrapping accepted connections, the handshake, and closing.

A TLS connection starts as a plain accepted socket. The server wraps it (with its
`ssl_context`, or with the context of a listening socket that a standard-library recipe
wrapped) without handshaking, so that the handshake never runs inside `accept()` on the loop:
- on a plain server the reactor drives it without blocking, as the HANDSHAKING stage of the
  request's table entry (`servers/stages.py`), bounded by `ssl_handshake_timeout`;
- with the mixins the thread or child completes it (`complete_handshake`), bounded the same.
Either way the handler then gets a blocking (or, for async handlers on the reactor, a
non-blocking) `ssl.SSLSocket`, and a failed or stalled handshake ends that connection alone
with one log line.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the functions here run only once a TLS socket exists: ssl is loaded then
    import ssl


__all__ = ["wrap_accepted", "handshake_pending", "complete_handshake", "send_close_notify",
           "log_handshake_failure"]

logger = logging.getLogger("servers")


def wrap_accepted(context: ssl.SSLContext, sock: socket.socket,
                  suppress_ragged_eofs: bool = True) -> ssl.SSLSocket:
    """Wrap an accepted connection for the server side, leaving the handshake for later."""
    return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False,
                               suppress_ragged_eofs=suppress_ragged_eofs)


def handshake_pending(tls: ssl.SSLSocket) -> bool:
    """True while the connection's handshake has not completed (nothing negotiated yet)."""
    return tls.version() is None


def complete_handshake(tls: ssl.SSLSocket, timeout: float | None, server_name: str,
                       client_address: Any) -> bool:
    """Finish a pending handshake with blocking I/O bounded by `timeout` (in a thread or a
    child). Returns False after logging one line when it fails; the socket's own timeout is
    restored either way."""
    previous = tls.gettimeout()
    try:
        tls.settimeout(timeout)
        tls.do_handshake()
    except (OSError, ValueError) as exc:
        log_handshake_failure(server_name, client_address, exc, timeout)
        return False
    finally:
        try:
            tls.settimeout(previous)
        except OSError:
            pass  # closed meanwhile; the caller shuts it down
    return True


def send_close_notify(tls: ssl.SSLSocket) -> None:
    """Send TLS close_notify if the peer may still be there, never waiting for its answer."""
    try:
        tls.setblocking(False)
        tls.unwrap()
    except (OSError, ValueError):
        pass  # want-read (the peer's close_notify is not awaited), peer gone, or no session


def log_handshake_failure(server_name: str, client_address: Any, exc: BaseException,
                          timeout: float | None) -> None:
    """One line per failed handshake: WARNING for a TLS protocol failure (bad certificate,
    no shared cipher, not TLS at all), INFO when the client left or stalled."""
    if isinstance(exc, TimeoutError) or (isinstance(exc, OSError) and exc.errno in (
            errno.ETIMEDOUT,)):
        logger.info("%s: TLS handshake with %s did not complete within "
                    "ssl_handshake_timeout=%ss; closing", server_name, client_address, timeout)
    elif isinstance(exc, sys.modules["ssl"].SSLError) and \
            not isinstance(exc, sys.modules["ssl"].SSLEOFError):
        logger.warning("%s: TLS handshake with %s failed: %s", server_name, client_address,
                       getattr(exc, "reason", None) or exc)
    else:
        logger.info("%s: TLS handshake with %s ended: %s", server_name, client_address,
                    exc or type(exc).__name__)
