"""The standard library's own consumers of `socketserver`, running on ours.

Each check runs in a fresh interpreter where `sys.modules["socketserver"]` is `servers` before
`http.server`, `xmlrpc.server`, `wsgiref.simple_server` or `logging.config` is imported, so
those modules subclass our classes (the test process itself is left untouched). The script
prints a JSON report; the test asserts on it. Dev mode (`-X dev`) makes unclosed sockets show
up as ResourceWarnings on stderr, which the tests reject.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

# Each check starts an interpreter and imports a consumer: about 0.2-0.5 s.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRELUDE = """\
import json, sys, threading
import servers
sys.modules["socketserver"] = servers
import socketserver
assert socketserver is servers
report = {}
"""


def run_consumer(body: str, tmp_path: Any) -> dict[str, Any]:
    script = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(report))\n"
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-c", script], cwd=tmp_path, capture_output=True,
        text=True, timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr
    assert "ResourceWarning" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


# ------------------------------------------------------------------------ http.server
HTTP_SERVER = """
import functools, http.client, http.server, os, urllib.error, urllib.request

assert http.server.socketserver is servers
assert issubclass(http.server.HTTPServer, servers.TCPServer)
assert issubclass(http.server.ThreadingHTTPServer, servers.ThreadingMixIn)

os.mkdir("site")
with open(os.path.join("site", "hello.txt"), "w") as f:
    f.write("hello from the temp dir\\n")


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def log_message(self, *args):
        pass


handler = functools.partial(Handler, directory="site")

for server_class in (http.server.HTTPServer, http.server.ThreadingHTTPServer):
    name = server_class.__name__
    with server_class(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, args=(0.05,))
        thread.start()
        try:
            port = httpd.server_address[1]
            result = report[name] = {"port_matches": httpd.server_port == port,
                                     "daemon_threads": getattr(httpd, "daemon_threads", None)}
            base = f"http://127.0.0.1:{port}"
            with urllib.request.urlopen(base + "/hello.txt", timeout=10) as response:
                result["body"] = response.read().decode()
            try:
                urllib.request.urlopen(base + "/missing", timeout=10)
            except urllib.error.HTTPError as error:
                result["missing"] = error.code
                error.close()
            with urllib.request.urlopen(base + "/", timeout=10) as response:
                result["listing_mentions_file"] = b"hello.txt" in response.read()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                statuses = []
                for _ in range(3):
                    connection.request("GET", "/hello.txt")
                    response = connection.getresponse()
                    response.read()
                    statuses.append(response.status)
                    if _ == 0:
                        first_socket = connection.sock
                result["keep_alive_statuses"] = statuses
                result["same_connection"] = connection.sock is first_socket
            finally:
                connection.close()
        finally:
            httpd.shutdown()
            thread.join()
"""


def test_http_server_serves_files_with_keep_alive_on_both_server_classes(tmp_path: Any
                                                                          ) -> None:
    report = run_consumer(HTTP_SERVER, tmp_path)
    for name in ("HTTPServer", "ThreadingHTTPServer"):
        result = report[name]
        assert result["port_matches"]
        assert result["body"] == "hello from the temp dir\n"
        assert result["missing"] == 404
        assert result["listing_mentions_file"]
        assert result["keep_alive_statuses"] == [200, 200, 200]
        assert result["same_connection"]
    assert report["HTTPServer"]["daemon_threads"] is None
    assert report["ThreadingHTTPServer"]["daemon_threads"] is True


HTTP_UNIX = """
import http.client, http.server, os, socket

class UnixHTTPServer(socketserver.UnixStreamServer, http.server.HTTPServer):
    def server_bind(self):
        socketserver.UnixStreamServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = 80

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"over a unix socket"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

path = os.path.abspath("http.sock")
with UnixHTTPServer(path, Handler) as httpd:
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(path)
        client.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        httpd.handle_request()
        data = b""
        while chunk := client.recv(4096):
            data += chunk
report["status_line"] = data.split(b"\\r\\n", 1)[0].decode()
report["body"] = data.split(b"\\r\\n\\r\\n", 1)[1].decode()
report["mro_ok"] = UnixHTTPServer.__mro__.index(socketserver.UnixStreamServer) < \\
    UnixHTTPServer.__mro__.index(http.server.HTTPServer)
"""


def test_unix_http_server_combining_our_unix_server_with_http_server(tmp_path: Any) -> None:
    report = run_consumer(HTTP_UNIX, tmp_path)
    assert report["status_line"].startswith("HTTP/1.0 200")
    assert report["body"] == "over a unix socket"
    assert report["mro_ok"]


# ------------------------------------------------------------------------ xmlrpc
XMLRPC = """
import xmlrpc.client, xmlrpc.server

assert issubclass(xmlrpc.server.SimpleXMLRPCServer, servers.TCPServer)

class Quiet(xmlrpc.server.SimpleXMLRPCRequestHandler):
    def log_message(self, *args):
        pass

# 1. handle_request() loop, the documented way
server = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), requestHandler=Quiet,
                                          allow_none=True)
with server:
    server.register_function(pow)
    server.register_function(lambda a, b: a + b, "add")
    server.register_introspection_functions()
    port = server.server_address[1]
    calls = 4
    loop = threading.Thread(target=lambda: [server.handle_request() for _ in range(calls)])
    loop.start()
    try:
        with xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}") as proxy:
            report["pow"] = proxy.pow(2, 10)
            report["add"] = proxy.add("con", "cat")
            report["methods"] = sorted(proxy.system.listMethods())
            try:
                proxy.nonexistent()
            except xmlrpc.client.Fault as fault:
                report["fault"] = fault.faultString
    finally:
        loop.join()

# 2. bind_and_activate=False, then the manual steps; serve_forever + multicall
server = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), requestHandler=Quiet,
                                          bind_and_activate=False)
with server:
    server.socket.settimeout(5)
    server.server_bind()
    server.server_activate()
    server.register_function(pow)
    server.register_multicall_functions()
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        with xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}") as proxy:
            multi = xmlrpc.client.MultiCall(proxy)
            multi.pow(3, 2)
            multi.pow(2, 5)
            report["multicall"] = list(multi())
    finally:
        server.shutdown()
        thread.join()
report["socket_closed"] = server.socket.fileno() == -1
"""


def test_xmlrpc_server_with_handle_request_loop_and_serve_forever(tmp_path: Any) -> None:
    report = run_consumer(XMLRPC, tmp_path)
    assert report["pow"] == 1024
    assert report["add"] == "concat"
    assert {"add", "pow", "system.listMethods"} <= set(report["methods"])
    assert "nonexistent" in report["fault"]
    assert report["multicall"] == [9, 32]
    assert report["socket_closed"]


XMLRPC_HANDLER = """
import socket, xmlrpc.client, xmlrpc.server

seen = {}

class Probe(xmlrpc.server.SimpleXMLRPCRequestHandler):
    def log_message(self, *args):
        pass

    def handle(self):
        seen["nodelay"] = bool(self.connection.getsockopt(socket.IPPROTO_TCP,
                                                           socket.TCP_NODELAY))
        seen["wfile"] = type(self.wfile).__name__
        super().handle()

with xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), requestHandler=Probe) as server:
    server.register_function(pow)
    loop = threading.Thread(target=server.handle_request)
    loop.start()
    try:
        with xmlrpc.client.ServerProxy(f"http://127.0.0.1:{server.server_address[1]}") as p:
            report["pow"] = p.pow(5, 2)
    finally:
        loop.join()
report.update(seen)
"""


def test_xmlrpc_handler_gets_tcp_nodelay_and_a_buffered_wfile(tmp_path: Any) -> None:
    report = run_consumer(XMLRPC_HANDLER, tmp_path)
    assert report == {"pow": 25, "nodelay": True, "wfile": "BufferedWriter"}


# ------------------------------------------------------------------------ wsgiref
WSGI = """
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

assert issubclass(WSGIServer, servers.TCPServer)

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

def app(environ, start_response):
    body = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} {environ['QUERY_STRING']}"
    if environ["REQUEST_METHOD"] == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body += " " + environ["wsgi.input"].read(length).decode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]

with make_server("127.0.0.1", 0, app, handler_class=Quiet) as httpd:
    report["server_port_matches"] = httpd.server_port == httpd.server_address[1]
    port = httpd.server_port
    loop = threading.Thread(target=lambda: [httpd.handle_request() for _ in range(2)])
    loop.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/path?q=1", timeout=10) as r:
            report["get"] = r.read().decode()
            report["content_type"] = r.headers["Content-Type"]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/form", data=b"a=b")
        with urllib.request.urlopen(request, timeout=10) as r:
            report["post"] = r.read().decode()
    finally:
        loop.join()
"""


def test_wsgiref_make_server_runs_a_wsgi_app(tmp_path: Any) -> None:
    report = run_consumer(WSGI, tmp_path)
    assert report == {"server_port_matches": True, "get": "GET /path q=1",
                      "content_type": "text/plain", "post": "POST /form  a=b"}


# ------------------------------------------------------------------------ logging.config
LOGGING = """
import logging, logging.config, socket, struct

assert issubclass(logging.config.ThreadingTCPServer, servers.ThreadingTCPServer) or \\
    logging.config.ThreadingTCPServer is servers.ThreadingTCPServer

def send(port, payload):
    with socket.create_connection(("localhost", port), timeout=10) as sock:
        sock.sendall(struct.pack(">L", len(payload)) + payload)

config = {"version": 1, "incremental": False, "disable_existing_loggers": False,
          "loggers": {"consumer.probe": {"level": "ERROR"}}}
before = logging.getLogger("consumer.probe").level

listener = logging.config.listen(0)
listener.start()
listener.ready.wait(10)
port = listener.port
listener.ready.clear()
try:
    send(port, json.dumps(config).encode())
    report["applied"] = listener.ready.wait(10)
finally:
    logging.config.stopListening()
    # wake the listener's select() at once instead of waiting for its 1 s timeout
    try:
        socket.create_connection(("localhost", port), timeout=10).close()
    except OSError:
        pass
    listener.join(10)
report["port_is_real"] = port != 0
report["stopped"] = not listener.is_alive()
report["level_before"] = before
report["level_after"] = logging.getLogger("consumer.probe").level
"""


def test_logging_config_listen_receives_and_applies_a_configuration(tmp_path: Any) -> None:
    report = run_consumer(LOGGING, tmp_path)
    assert report == {"applied": True, "port_is_real": True, "stopped": True,
                      "level_before": 0, "level_after": 40}
