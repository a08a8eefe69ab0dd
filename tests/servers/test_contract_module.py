"""The module surface of `servers` as a drop-in for `socketserver`: names, class tree, MRO and
the default of every documented attribute."""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import servers
import servers.accepting
import servers.lifecycle

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ALWAYS = ["BaseServer", "TCPServer", "UDPServer", "ThreadingUDPServer", "ThreadingTCPServer",
          "BaseRequestHandler", "StreamRequestHandler", "DatagramRequestHandler",
          "ThreadingMixIn"]
WITH_FORK = ["ForkingUDPServer", "ForkingTCPServer", "ForkingMixIn"]
WITH_UNIX = ["UnixStreamServer", "UnixDatagramServer", "ThreadingUnixStreamServer",
             "ThreadingUnixDatagramServer"]
WITH_BOTH = ["ForkingUnixStreamServer", "ForkingUnixDatagramServer"]


def expected_all(fork: bool, unix: bool) -> list[str]:
    return (ALWAYS + (WITH_FORK if fork else []) + (WITH_UNIX if unix else [])
            + (WITH_BOTH if fork and unix else []))


# ------------------------------------------------------------------------ names
def test_all_lists_exactly_the_standard_names_for_this_platform() -> None:
    names = expected_all(hasattr(os, "fork"), hasattr(socket, "AF_UNIX"))
    assert sorted(servers.__all__) == sorted(names)
    assert len(servers.__all__) == len(set(servers.__all__))
    for name in servers.__all__:
        assert isinstance(getattr(servers, name), type)


# The library's own additions: public, but not in __all__, so that `from servers import *`
# gives exactly the standard module's names.
ADDITIONS = {"Supervisor", "WorkerStartError"} if hasattr(os, "fork") else set()


def test_every_public_class_of_the_module_is_in_all_or_a_documented_addition() -> None:
    # dir(): the additions load on first use, so they are not in vars() before that
    public = {name for name in dir(servers)
              if not name.startswith("_") and isinstance(getattr(servers, name), type)}
    assert public == set(servers.__all__) | ADDITIONS


def test_version_matches_the_standard_module() -> None:
    assert servers.__version__ == "0.4"


def test_star_import_gives_the_standard_names() -> None:
    namespace: dict[str, Any] = {}
    exec("from servers import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(servers.__all__)


PROBE = textwrap.dedent("""
    import json, os, socket, sys
    if sys.argv[1] == "nofork":
        del os.fork
    elif sys.argv[1] == "nounix":
        del socket.AF_UNIX
    elif sys.argv[1] == "neither":
        del os.fork, socket.AF_UNIX
    import servers
    names = ["ForkingMixIn", "ForkingTCPServer", "ForkingUDPServer", "UnixStreamServer",
             "UnixDatagramServer", "ThreadingUnixStreamServer",
             "ThreadingUnixDatagramServer", "ForkingUnixStreamServer",
             "ForkingUnixDatagramServer"]
    print(json.dumps({"all": servers.__all__,
                      "defined": [n for n in names if hasattr(servers, n)]}))
""")


@pytest.mark.parametrize("variant,fork,unix", [
    ("nofork", False, True), ("nounix", True, False), ("neither", False, False)])
def test_conditional_names_follow_os_fork_and_af_unix(variant: str, fork: bool,
                                                      unix: bool) -> None:
    if unix and not hasattr(socket, "AF_UNIX"):
        pytest.skip("the platform has no AF_UNIX to keep")
    result = subprocess.run([sys.executable, "-c", PROBE, variant], cwd=ROOT,
                            capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected = expected_all(fork, unix)
    assert sorted(report["all"]) == sorted(expected)
    conditional = set(WITH_FORK + WITH_UNIX + WITH_BOTH)
    assert set(report["defined"]) == set(expected) & conditional


# ------------------------------------------------------------------------ class tree
BASES = {
    "TCPServer": ("BaseServer",),
    "UDPServer": ("TCPServer",),
    "UnixStreamServer": ("TCPServer",),
    "UnixDatagramServer": ("UDPServer",),
    "ThreadingUDPServer": ("ThreadingMixIn", "UDPServer"),
    "ThreadingTCPServer": ("ThreadingMixIn", "TCPServer"),
    "ForkingUDPServer": ("ForkingMixIn", "UDPServer"),
    "ForkingTCPServer": ("ForkingMixIn", "TCPServer"),
    "ThreadingUnixStreamServer": ("ThreadingMixIn", "UnixStreamServer"),
    "ThreadingUnixDatagramServer": ("ThreadingMixIn", "UnixDatagramServer"),
    "ForkingUnixStreamServer": ("ForkingMixIn", "UnixStreamServer"),
    "ForkingUnixDatagramServer": ("ForkingMixIn", "UnixDatagramServer"),
    "StreamRequestHandler": ("BaseRequestHandler",),
    "DatagramRequestHandler": ("BaseRequestHandler",),
    "ThreadingMixIn": ("object",),
    "ForkingMixIn": ("object",),
    "BaseServer": ("object",),
    "BaseRequestHandler": ("object",),
}


# BaseServer is written in three modules: its own bases are those halves, whose only base is
# object, as the standard library's BaseServer's is.
INTERNAL_HALVES = {"BaseServer": (servers.accepting.Accepting, servers.lifecycle.RequestLifecycle)}


@pytest.mark.parametrize("name", sorted(BASES))
def test_class_has_the_standard_bases_in_order(name: str) -> None:
    if not hasattr(servers, name):
        pytest.skip(f"{name} does not exist on this platform")
    cls = getattr(servers, name)
    expected = tuple(object if base == "object" else getattr(servers, base)
                     for base in BASES[name])
    if name in INTERNAL_HALVES:
        halves = INTERNAL_HALVES[name]
        assert cls.__bases__ == halves
        assert all(half.__bases__ == expected for half in halves)
        assert cls.__mro__[len(halves) + 1:] == expected  # then object, as in the stdlib
    else:
        assert cls.__bases__ == expected


def test_mixins_come_first_in_the_mro_of_the_combined_classes() -> None:
    mro = servers.ThreadingTCPServer.__mro__
    assert mro.index(servers.ThreadingMixIn) < mro.index(servers.TCPServer)
    assert servers.ThreadingTCPServer.process_request is servers.ThreadingMixIn.process_request
    if hasattr(servers, "ForkingTCPServer"):
        assert servers.ForkingTCPServer.process_request is servers.ForkingMixIn.process_request


def test_user_classes_combining_mixins_and_servers_have_a_valid_mro() -> None:
    class Mine(servers.ThreadingMixIn, servers.UDPServer):
        pass

    class Stacked(servers.ThreadingTCPServer):
        pass

    classes = [Mine, Stacked]
    if hasattr(servers, "UnixStreamServer"):
        class UnixOverTcpSubclass(servers.UnixStreamServer, Stacked):
            pass
        classes.append(UnixOverTcpSubclass)
    for cls in classes:
        assert cls.__mro__[-1] is object


def test_handlers_are_the_handlers_package_classes() -> None:
    import handlers
    assert servers.BaseRequestHandler is handlers.BaseRequestHandler
    assert servers.StreamRequestHandler is handlers.StreamRequestHandler
    assert servers.DatagramRequestHandler is handlers.DatagramRequestHandler


# ------------------------------------------------------------------------ defaults
DEFAULTS = [
    ("BaseServer", "timeout", None),
    ("TCPServer", "timeout", None),
    ("TCPServer", "address_family", socket.AF_INET),
    ("TCPServer", "socket_type", socket.SOCK_STREAM),
    ("TCPServer", "request_queue_size", 5),
    ("TCPServer", "allow_reuse_address", False),
    ("TCPServer", "allow_reuse_port", False),
    ("UDPServer", "address_family", socket.AF_INET),
    ("UDPServer", "socket_type", socket.SOCK_DGRAM),
    ("UDPServer", "allow_reuse_address", False),
    ("UDPServer", "allow_reuse_port", False),
    ("UDPServer", "max_packet_size", 8192),
    ("UDPServer", "request_queue_size", 5),
    ("ThreadingMixIn", "daemon_threads", False),
    ("ThreadingMixIn", "block_on_close", True),
    ("ThreadingTCPServer", "daemon_threads", False),
    ("ThreadingTCPServer", "block_on_close", True),
    ("ThreadingTCPServer", "timeout", None),
    ("ThreadingUDPServer", "max_packet_size", 8192),
    ("ForkingMixIn", "timeout", 300),
    ("ForkingMixIn", "active_children", None),
    ("ForkingMixIn", "max_children", 40),
    ("ForkingMixIn", "block_on_close", True),
    ("ForkingTCPServer", "timeout", 300),
    ("ForkingUDPServer", "timeout", 300),
    ("ForkingTCPServer", "active_children", None),
    ("StreamRequestHandler", "rbufsize", -1),
    ("StreamRequestHandler", "wbufsize", 0),
    ("StreamRequestHandler", "timeout", None),
    ("StreamRequestHandler", "disable_nagle_algorithm", False),
]
UNIX_DEFAULTS = [
    ("UnixStreamServer", "socket_type", socket.SOCK_STREAM),
    ("UnixDatagramServer", "socket_type", socket.SOCK_DGRAM),
    ("UnixDatagramServer", "max_packet_size", 8192),
    ("ThreadingUnixStreamServer", "daemon_threads", False),
    ("ForkingUnixStreamServer", "timeout", 300),
    ("ForkingUnixDatagramServer", "timeout", 300),
]


@pytest.mark.parametrize("name,attribute,value", DEFAULTS + UNIX_DEFAULTS,
                         ids=[f"{n}.{a}" for n, a, _ in DEFAULTS + UNIX_DEFAULTS])
def test_class_attribute_has_the_standard_default(name: str, attribute: str,
                                                   value: Any) -> None:
    if not hasattr(servers, name):
        pytest.skip(f"{name} does not exist on this platform")
    actual = getattr(getattr(servers, name), attribute)
    assert actual == value and type(actual) is type(value)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX")
@pytest.mark.parametrize("name", WITH_UNIX + WITH_BOTH)
def test_unix_classes_use_af_unix(name: str) -> None:
    if not hasattr(servers, name):
        pytest.skip(f"{name} does not exist on this platform")
    assert getattr(servers, name).address_family == socket.AF_UNIX


METHODS = {
    "BaseServer": ["__init__", "server_activate", "serve_forever", "shutdown",
                   "service_actions", "handle_request", "handle_timeout", "verify_request",
                   "process_request", "server_close", "finish_request", "shutdown_request",
                   "close_request", "handle_error", "__enter__", "__exit__"],
    "TCPServer": ["server_bind", "server_activate", "server_close", "fileno", "get_request",
                  "shutdown_request", "close_request"],
    "UDPServer": ["get_request", "server_activate", "shutdown_request", "close_request"],
    "ThreadingMixIn": ["process_request_thread", "process_request", "server_close"],
    "ForkingMixIn": ["collect_children", "handle_timeout", "service_actions",
                     "process_request", "server_close"],
    "BaseRequestHandler": ["__init__", "setup", "handle", "finish"],
    "StreamRequestHandler": ["setup", "finish"],
    "DatagramRequestHandler": ["setup", "finish"],
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_class_has_the_standard_methods(name: str) -> None:
    if not hasattr(servers, name):
        pytest.skip(f"{name} does not exist on this platform")
    cls = getattr(servers, name)
    for method in METHODS[name]:
        assert callable(getattr(cls, method, None)), f"{name}.{method} is missing"


@pytest.mark.parametrize("function,expected", [
    (servers.BaseServer.__init__, "(self, server_address, RequestHandlerClass)"),
    (servers.BaseServer.serve_forever, "(self, poll_interval=0.5)"),
    (servers.BaseServer.handle_request, "(self)"),
    (servers.BaseServer.shutdown, "(self)"),
    (servers.BaseServer.handle_error, "(self, request, client_address)"),
    (servers.BaseServer.verify_request, "(self, request, client_address)"),
    (servers.TCPServer.__init__,
     "(self, server_address, RequestHandlerClass, bind_and_activate=True)"),
    (servers.ThreadingMixIn.process_request_thread, "(self, request, client_address)"),
    (servers.BaseRequestHandler.__init__, "(self, request, client_address, server)"),
])
def test_signatures_match_the_standard_ones(function: Any, expected: str) -> None:
    parameters = inspect.signature(function).parameters.values()
    text = "(" + ", ".join(p.name if p.default is inspect.Parameter.empty
                           else f"{p.name}={p.default!r}" for p in parameters) + ")"
    assert text == expected


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_collect_children_takes_blocking_as_keyword_only() -> None:
    parameter = inspect.signature(servers.ForkingMixIn.collect_children).parameters["blocking"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
    assert parameter.default is False


def test_base_server_init_stores_arguments_and_creates_no_socket() -> None:
    handler = servers.BaseRequestHandler
    server = servers.BaseServer(("somewhere", 1234), handler)
    assert server.server_address == ("somewhere", 1234)
    assert server.RequestHandlerClass is handler
    assert not hasattr(server, "socket")
    assert server.verify_request(None, None) is True
    assert server.handle_timeout() is None
    assert server.service_actions() is None
    assert server.server_activate() is None
    assert server.close_request(None) is None
    assert server.shutdown_request(None) is None
    server.server_close()


def test_base_server_subclass_with_its_own_socket_is_served_by_handle_request() -> None:
    received = []

    class PipeServer(servers.BaseServer):
        """A BaseServer whose 'requests' are messages on one end of a socketpair."""

        def __init__(self, sock: socket.socket) -> None:
            super().__init__("pair", Handler)
            self.socket = sock

        def fileno(self) -> int:
            return self.socket.fileno()

        def get_request(self) -> Any:
            return self.socket.recv(100), "peer"

    class Handler(servers.BaseRequestHandler):
        def handle(self) -> None:
            received.append((self.request, self.client_address))

    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"message")
        with PipeServer(ours) as server:
            server.handle_request()
    assert received == [(b"message", "peer")]
