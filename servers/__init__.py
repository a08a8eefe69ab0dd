"""servers: the standard library's `socketserver`, on a reactor.

`import servers as socketserver` is a drop-in: every class, method and attribute of the
standard module, with the same defaults. Servers are components of a `reactor.Reactor`:
`server.serve_forever()` runs a private reactor with that one server on it, and
`Reactor.register(server)` puts several servers on one loop. A handler whose `handle()` is
`async def` runs as a task in the reactor's request table, thousands at once on one thread.
Beyond the standard names (and so outside `__all__`): `listen_fds()` and the `systemd` module
(sockets from a service manager, readiness notifications), `Server.from_socket()`.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from handlers import BaseRequestHandler, DatagramRequestHandler, StreamRequestHandler

from .base import BaseServer
from .mixins import ForkingMixIn, ThreadingMixIn
from .tcp import TCPServer, UnixStreamServer
from .udp import UDPServer, UnixDatagramServer

__version__ = "0.4"  # the standard module's version, which this module matches

__all__ = ["BaseServer", "TCPServer", "UDPServer",
           "ThreadingUDPServer", "ThreadingTCPServer",
           "BaseRequestHandler", "StreamRequestHandler",
           "DatagramRequestHandler", "ThreadingMixIn"]


class ThreadingUDPServer(ThreadingMixIn, UDPServer): pass
class ThreadingTCPServer(ThreadingMixIn, TCPServer): pass


if hasattr(os, "fork"):
    __all__.extend(["ForkingUDPServer", "ForkingTCPServer", "ForkingMixIn"])

    class ForkingUDPServer(ForkingMixIn, UDPServer): pass
    class ForkingTCPServer(ForkingMixIn, TCPServer): pass


if hasattr(socket, "AF_UNIX"):
    __all__.extend(["UnixStreamServer", "UnixDatagramServer",
                    "ThreadingUnixStreamServer", "ThreadingUnixDatagramServer"])

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer): pass
    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer): pass

    if hasattr(os, "fork"):
        __all__.extend(["ForkingUnixStreamServer", "ForkingUnixDatagramServer"])

        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer): pass
        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer): pass
else:  # pragma: no cover - platforms without Unix sockets
    del UnixStreamServer, UnixDatagramServer

# The library's own additions: importable by name, but not in __all__, which lists exactly the
# standard module's names (so `from servers import *` stays a drop-in). They are loaded on
# first use: a program that never asks for them does not pay for their imports (each module
# in the process is memory that every os.fork() copies, which ForkingMixIn does per request).
if TYPE_CHECKING:
    from .supervisor import Supervisor as Supervisor, WorkerStartError as WorkerStartError
    from .systemd import listen_fds as listen_fds
else:
    _LAZY = ("Supervisor", "WorkerStartError", "listen_fds") if hasattr(os, "fork") else (
        "listen_fds",)

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})

    def __getattr__(name: str) -> object:
        if name in ("Supervisor", "WorkerStartError") and hasattr(os, "fork"):
            from . import supervisor
            return getattr(supervisor, name)
        if name == "listen_fds":
            from .systemd import listen_fds
            return listen_fds
        raise AttributeError(f"module 'servers' has no attribute {name!r}")

if not hasattr(os, "fork"):  # pragma: no cover - platforms without fork
    del ForkingMixIn  # the standard module defines it only where os.fork exists
