"""`python -m servers` with --tls-* and --proxy-*: real subprocesses, real TLS clients."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from test_cli import command, connect, run_main  # noqa: F401 - fixtures and helpers

CERTS = Path(__file__).resolve().parent.parent / "certs"
TLS = ["--tls-cert", str(CERTS / "server.pem"), "--tls-key", str(CERTS / "server.key")]


def client_context(cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    if cert is not None:
        context.load_cert_chain(str(CERTS / f"{cert}.pem"), str(CERTS / f"{cert}.key"))
    return context


def tls_round_trip(url: str, context: ssl.SSLContext, data: bytes) -> bytes:
    with connect(url) as raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(data)
        reply = b""
        while len(reply) < len(data):
            chunk = tls.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["reactor", "threading"])
def test_tls_cert_and_key_serve_tls_on_tcp_and_unix(command, tmp_path: Path, mode: str) -> None:
    path = tmp_path / "echo.sock"
    run = command("servers.builtin:Echo", "--mode", mode, *TLS,
                  "--bind", "tcp://127.0.0.1:0", "--bind", f"unix:{path}")
    for url in run.serving(2):
        assert tls_round_trip(url, client_context(), b"secret\n") == b"secret\n"
    assert run.stop() == 0


@pytest.mark.slow
def test_tls_client_ca_requires_a_client_certificate(command) -> None:
    run = command("servers.builtin:Echo", *TLS, "--tls-client-ca", str(CERTS / "ca.pem"),
                  "--log-level", "warning", "--bind", "tcp://127.0.0.1:0")
    [url] = run.serving(1)
    assert tls_round_trip(url, client_context("client"), b"mine\n") == b"mine\n"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        # TLS 1.3: the refusal arrives with the first read after the handshake
        tls_round_trip(url, client_context(), b"no certificate\n")
    run.wait_for(r"TLS handshake with .* failed")  # one line says why
    assert tls_round_trip(url, client_context("client"), b"still\n") == b"still\n"
    assert run.stop() == 0


@pytest.mark.slow
def test_proxy_protocol_gives_the_handler_the_real_client(command, tmp_path: Path) -> None:
    handler = tmp_path / "whoami.py"
    handler.write_text(
        "import servers\n"
        "class WhoAmI(servers.StreamRequestHandler):\n"
        "    def handle(self):\n"
        "        self.wfile.write(f'{self.client_address[0]} {self.proxy.version}\\n'.encode())\n")
    run = command("whoami:WhoAmI", "--proxy-protocol", "v1", "--bind", "tcp://127.0.0.1:0",
                  cwd=tmp_path)
    [url] = run.serving(1)
    with connect(url) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 80\r\n")
        assert sock.recv(100) == b"203.0.113.7 1\n"
    assert run.stop() == 0


@pytest.mark.parametrize("argv, advice", [
    (["--tls-cert", str(CERTS / "server.pem")], "TLS needs both --tls-cert FILE and --tls-key"),
    (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"],
     "cannot load --tls-cert /nonexistent.pem"),
    ([*TLS, "--tls-client-ca", "/nonexistent-ca.pem"], "cannot load --tls-client-ca"),
    (["--proxy-trusted", "10.0.0.0/8"], "--proxy-trusted needs --proxy-protocol"),
    (["--proxy-protocol", "v2", "--proxy-trusted", "10.0.0.0/33"], "--proxy-trusted:"),
])
def test_bad_tls_and_proxy_options_exit_2_saying_what_to_do(
        argv: list[str], advice: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_main(["servers.builtin:Echo", *argv, "--bind", "tcp://127.0.0.1:0"],
                           capsys)
    assert status == 2 and advice in err, err


def test_tls_options_on_datagram_addresses_only_are_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_main(["servers.builtin:Echo", *TLS, "--bind", "udp://127.0.0.1:0"],
                           capsys)
    assert status == 2 and "there is no DTLS" in err


def test_check_loads_the_certificate_and_names_what_would_be_served(
        capsys: pytest.CaptureFixture[str]) -> None:
    from servers import cli
    assert cli.main(["servers.builtin:Echo", "--check", *TLS, "--bind", "tcp://127.0.0.1:0",
                     "--bind", "udp://127.0.0.1:0"]) == 0
    lines: Any = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("would serve Echo on tcp://127.0.0.1:0")
