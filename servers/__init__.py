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

from handlers import BaseRequestHandler, DatagramRequestHandler, StreamRequestHandler

from .base import BaseServer
from .mixins import ForkingMixIn, ThreadingMixIn
from .systemd import listen_fds
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

    # The library's own additions: importable by name, but not in __all__, which lists
    # exactly the standard module's names (so `from servers import *` stays a drop-in).
    from .supervisor import Supervisor as Supervisor, WorkerStartError as WorkerStartError

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

if not hasattr(os, "fork"):  # pragma: no cover - platforms without fork
    del ForkingMixIn  # the standard module defines it only where os.fork exists
