"""The ``http.server`` "hello" handler shared by the stdlib and ours HTTP subjects."""

from __future__ import annotations

import http.server

from subj_common import HTTP_BODY


class HelloHTTPHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler answering every GET with a fixed body."""

    # The handler is left as http.server users write it (Nagle's algorithm on): the target
    # is to serve it unchanged faster than the standard library does. Its two writes per
    # response (headers, body) wait ~40 ms for a delayed ACK on a server that leaves Nagle
    # on (the standard library's); ours sets TCP_NODELAY on accepted connections.
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(HTTP_BODY)))
        self.end_headers()
        self.wfile.write(HTTP_BODY)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Silence the per-request access log (it would dominate the profile)."""
