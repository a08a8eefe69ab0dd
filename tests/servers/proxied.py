"""A supervised server behind a PROXY v2 load balancer, for tests/servers/test_behind_haproxy.py
(run as a script, not collected).

    python proxied.py --workers 2 [--max-connections N] [--proxy-header-timeout S]

One TCPServer on 127.0.0.1 (port 0) with `proxy_protocol = "v2"`, served by a Supervisor. A
request is one line `LINE`, answered `HOST PORT pid PID vVERSION DSTPORT LINE`: the handler's
`client_address`, its worker's pid, and what `self.proxy` says (the header's version and the
port the client connected to). The line `slow` is first
acknowledged with `waiting PID` and answered only once a second line arrives; the line
`linger` is answered after twice `proxy_header_timeout`. Everything goes
to stderr, line by line: `listening HOST PORT`, then the supervisor's and workers' log lines,
then `returned` when serve_forever() returns.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import reactor
import servers


class RealClient(servers.StreamRequestHandler):
    async def handle(self) -> None:
        line = await self.rfile.readline()
        if line == b"slow\n":
            self.wfile.write(b"waiting %d\n" % os.getpid())
            await self.wfile.drain()
            await self.rfile.readline()
        if line == b"linger\n":  # a request that outlasts the PROXY header's timeout
            await reactor.sleep(2 * float(getattr(self.server, "proxy_header_timeout", 0)))
        address = self.client_address
        assert isinstance(address, tuple)  # an IP address: the client's, from the header
        host, port = str(address[0]), int(address[1])
        info = self.proxy
        assert info is not None and info.destination is not None
        self.wfile.write(b"%s %d pid %d v%d %d %s" % (
            host.encode(), port, os.getpid(), info.version, info.destination[1], line))


class ProxiedTCPServer(servers.TCPServer):
    proxy_protocol = "v2"
    # socketserver's default backlog of 5 overflows under a few concurrent connections from
    # the balancer: the kernel then drops the handshake's last ACK, and that connection
    # waits a 1 s retransmission
    request_queue_size = 128


def say(line: str) -> None:
    os.write(2, line.encode() + b"\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-connections", type=int)
    parser.add_argument("--proxy-header-timeout", type=float)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(message)s")
    server = ProxiedTCPServer(("127.0.0.1", 0), RealClient)
    if args.max_connections is not None:
        server.max_connections = args.max_connections
    if args.proxy_header_timeout is not None:
        server.proxy_header_timeout = args.proxy_header_timeout
    supervisor = servers.Supervisor([server], args.workers)
    host, port = server.server_address[:2]
    say(f"listening {host} {port}")
    try:
        supervisor.serve_forever()
    finally:
        server.server_close()
    say("returned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
