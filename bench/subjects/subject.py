"""Entry point for benchmark subjects.

Usage::

    python bench/subjects/subject.py --kind KIND --addr ADDR [--proto echo|http]
                                     [--tls-cert FILE --tls-key FILE] [--cold-malloc]

``KIND`` names one server implementation (see ``KINDS``); ``ADDR`` is
``tcp:HOST:PORT``, ``udp:HOST:PORT`` or ``unix:PATH`` (port 0 = any).
The process prints ``READY <address>`` once listening and serves until
SIGTERM.  An unsupported kind/transport/protocol combination exits with
status 2 and a message on stderr; a subject whose library lacks a feature the
combination needs (our TLS before ``ssl_context`` exists) exits with status 3.

With ``--tls-cert``/``--tls-key`` the subject serves TLS with an
``ssl.SSLContext(PROTOCOL_TLS_SERVER)`` holding that certificate (the
context's defaults otherwise, as a user would write it).

Before serving, every subject frees one 1 MiB block (``warm_allocator``) unless
``--cold-malloc`` is given: see that function for why.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from subj_common import Address, server_tls_context, warm_allocator  # noqa: E402

#: kind -> module implementing ``serve(kind, addr, proto)``
KINDS = {
    "ours-async": "subj_ours",
    "ours-batch": "subj_ours",
    "ours-classic": "subj_ours",
    "ours-threading": "subj_ours",
    "ours-forking": "subj_ours",
    "stdlib-classic": "subj_stdlib",
    "stdlib-threading": "subj_stdlib",
    "stdlib-forking": "subj_stdlib",
    "asyncio-streams": "subj_asyncio",
    "asyncio-protocol": "subj_asyncio",
    "uvloop-streams": "subj_asyncio",
    "uvloop-protocol": "subj_asyncio",
    "selectors": "subj_floor",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", required=True, choices=sorted(KINDS))
    parser.add_argument("--addr", required=True, help="tcp:HOST:PORT | udp:HOST:PORT | unix:PATH")
    parser.add_argument("--proto", default="echo", choices=("echo", "http"))
    parser.add_argument("--tls-cert", help="serve TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", help="private key of --tls-cert (PEM)")
    parser.add_argument("--cold-malloc", action="store_true",
                        help="skip warm_allocator(): measure in a fresh process's malloc state")
    args = parser.parse_args(argv)
    addr = Address.parse(args.addr)
    tls = server_tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    if not args.cold_malloc:
        warm_allocator()
    module = __import__(KINDS[args.kind])
    module.serve(args.kind, addr, args.proto, tls)


if __name__ == "__main__":
    main()
