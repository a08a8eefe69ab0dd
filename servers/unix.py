"""Socket files of Unix-domain servers: binding over a stale file, and removing ours on close.

A crashed server leaves its socket file behind, and `bind()` then fails with EADDRINUSE. We
tell a stale file (nobody accepts on it) from a live one by trying to connect, and either say
what to do or, when the server opted in with `remove_stale_socket = True`, remove it.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any

__all__ = ["StaleSocketFile", "bind_unix", "remove_if_ours"]


class StaleSocketFile(OSError):
    """EADDRINUSE from a socket file that nothing listens on (left by a crashed run).

    Attributes:
        path: the socket file.
    """

    def __init__(self, path: Any, advice: str) -> None:
        super().__init__(errno.EADDRINUSE, f"{path!s} is a stale socket file (nothing listens "
                         f"on it, probably left by a crashed run); remove it, or {advice}")
        self.path = path


def bind_unix(sock: socket.socket, path: Any, remove_stale: bool) -> int | None:
    """Bind `sock` to `path`; return the inode of the new socket file (None if abstract).

    Raises:
        OSError(EADDRINUSE): `path` exists; the message says whether a server is using it and
            what to do (`StaleSocketFile` when nothing listens on it).
    """
    try:
        sock.bind(path)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or not _is_filesystem_path(path):
            raise
        if not _is_socket_file(path):
            raise OSError(errno.EADDRINUSE, f"{path!s} exists and is not a socket; move it "
                          "away or choose another path") from exc
        if not _is_stale(path, sock.type):
            raise OSError(errno.EADDRINUSE, f"{path!s} is in use by a running server; stop it "
                          "or choose another path") from exc
        if not remove_stale:
            raise StaleSocketFile(path, "set remove_stale_socket = True on the server "
                                  "class") from exc
        os.unlink(path)
        sock.bind(path)
    return os.stat(path).st_ino if _is_filesystem_path(path) else None


def remove_if_ours(path: Any, inode: int | None) -> None:
    """Remove the socket file at `path` if it is still the one we created."""
    if inode is None or not _is_filesystem_path(path):
        return
    try:
        info = os.stat(path)
        if stat.S_ISSOCK(info.st_mode) and info.st_ino == inode:
            os.unlink(path)
    except OSError:
        pass  # already gone, or not ours to remove


def _is_filesystem_path(path: Any) -> bool:
    if isinstance(path, (bytes, bytearray)):
        return bool(path) and path[:1] != b"\0"
    return isinstance(path, (str, os.PathLike)) and bool(os.fspath(path)) and \
        not os.fspath(path).startswith("\0")


def _is_socket_file(path: Any) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return True  # vanished meanwhile: let the stale/live probe decide


def _is_stale(path: Any, kind: int) -> bool:
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False  # a regular file: not ours to judge or remove
    except OSError:
        return False
    probe = socket.socket(socket.AF_UNIX, kind)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False
