"""What `import servers` loads: only what every server needs. TLS (`ssl`), the PROXY parser,
the Supervisor and systemd support load when a program first uses them. Each module in the
process is memory that `os.fork()` copies, and ForkingMixIn forks once per request."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import servers
from servers import proxy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OPTIONAL = ["ssl", "inspect", "dataclasses", "ipaddress", "servers.proxy", "servers.supervisor",
            "servers.systemd", "servers.worker", "servers.processes", "servers.cli"]


def loaded_after(code: str) -> list[str]:
    # Only what the code loads: the interpreter's start-up (site, an editable install's
    # finder) may have loaded some already.
    probe = (f"import sys\nbefore = set(sys.modules)\n{code}\nimport json\n"
             f"print(json.dumps([m for m in {OPTIONAL!r} if m in set(sys.modules) - before]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=ROOT, timeout=20, check=True,
                         env={**os.environ, "PYTHONPATH": ROOT})
    return list(json.loads(out.stdout))


def test_import_servers_loads_none_of_the_optional_parts() -> None:
    assert loaded_after("import servers") == []


def test_a_plain_server_serving_a_request_loads_none_of_them() -> None:
    code = """
import socket, threading, servers
class Echo(servers.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())
with servers.TCPServer(("127.0.0.1", 0), Echo) as server:
    with socket.create_connection(server.server_address, timeout=10) as client:
        client.sendall(b"hi\\n")
        server.handle_request()
        assert client.recv(10) == b"hi\\n"
"""
    assert loaded_after(code) == []


def test_the_optional_parts_load_on_first_use() -> None:
    code = "import servers\nservers.Supervisor, servers.listen_fds"
    assert set(loaded_after(code)) >= {"servers.supervisor", "servers.systemd"}


def test_the_default_trusted_proxies_are_the_parsers() -> None:
    assert servers.TCPServer.proxy_trusted == proxy.DEFAULT_TRUSTED_NETWORKS
