"""Reuse-port mode of `servers.Supervisor`: a socket per worker, a placeholder in the supervisor.

With SO_REUSEPORT every worker binds its own socket to the same TCP or UDP address, and the
kernel spreads new connections and datagrams over the sockets of the group by a hash of the
peer's address. The supervisor keeps a socket bound to the address too, so that nothing else
can take it while workers come and go, and that socket must receive nothing, which is not
what a plain copy of the server's socket does (measured on Linux 6.x):

- TCP: a *listening* reuse-port socket is part of the group and gets its share of new
  connections (a third of them with two workers); nobody accepts there, so those clients
  would hang. A socket that is bound but not listening reserves the port and gets none.
- UDP: every bound socket is part of the group, except connected ones (Linux 5.x and later
  leave connected sockets out of the hash choice). The placeholder is connected to its own
  address, so it only ever receives its own datagrams, of which there are none.

The caller bound the server, and `listen()` cannot be undone, so `reserve_address()` swaps the
server's socket for a placeholder and closes the original; each worker then binds a fresh
socket with the server's own `server_bind()` / `server_activate()` (`bind_own_socket()`).

What this costs: when a worker's listening socket closes, the kernel resets the connections
still queued on it (not yet accepted): a reload or a `max_requests` recycle in this mode can
drop a few connections under load, which the shared socket never does. Linux 5.14 and later
can move them to another socket of the group instead: `sysctl net.ipv4.tcp_migrate_req=1`.
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["reserve_address", "bind_own_socket", "is_inet"]


def is_inet(server: Any) -> bool:
    """True for servers on a TCP or UDP socket (the ones reuse-port mode applies to)."""
    sock = getattr(server, "socket", None)
    return isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6)


def reserve_address(server: Any) -> None:
    """In the supervisor: swap a TCP or UDP server's socket for a placeholder bound to the same
    address that receives nothing (see the module docstring). Other servers are left alone.

    Raises:
        ValueError: the platform lacks SO_REUSEPORT, or the server was bound without it.
    """
    if not is_inet(server):
        return
    sock = server.socket
    if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - Linux and the BSDs have it
        raise ValueError("reuse_port=True needs SO_REUSEPORT, which this platform lacks")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
        raise ValueError(f"reuse_port=True needs servers bound with SO_REUSEPORT; set "
                         f"allow_reuse_port = True on {type(server).__name__} (a subclass), "
                         "or ReusePort=yes for a socket systemd passes")
    placeholder = socket.socket(sock.family, sock.type)
    try:
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if sock.family == socket.AF_INET6:
            placeholder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, sock.getsockopt(
                socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
        address = sock.getsockname()
        placeholder.bind(address)
        if sock.type == socket.SOCK_DGRAM:
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address[0], address[0])
            placeholder.connect((host, *address[1:]))
    except BaseException:
        placeholder.close()
        raise
    server.socket = placeholder
    sock.close()


def bind_own_socket(server: Any) -> None:
    """In a worker: give this process's copy of `server` a socket of its own, bound (by the
    server's own `server_bind()`, which sets SO_REUSEPORT) to the same address and activated;
    the inherited placeholder is closed."""
    placeholder = server.socket
    server.socket = socket.socket(placeholder.family, placeholder.type)
    try:
        server.server_bind()
        server.server_activate()
    finally:
        placeholder.close()
