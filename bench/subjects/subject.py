"""Entry point for benchmark subjects.

Usage::

    python bench/subjects/subject.py --kind KIND --addr ADDR [--proto echo|http]

``KIND`` names one server implementation (see ``KINDS``); ``ADDR`` is
``tcp:HOST:PORT``, ``udp:HOST:PORT`` or ``unix:PATH`` (port 0 = any).
The process prints ``READY <address>`` once listening and serves until
SIGTERM.  An unsupported kind/transport/protocol combination exits with
status 2 and a message on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from subj_common import Address  # noqa: E402

#: kind -> module implementing ``serve(kind, addr, proto)``
KINDS = {
    "ours-async": "subj_ours",
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
    args = parser.parse_args(argv)
    addr = Address.parse(args.addr)
    module = __import__(KINDS[args.kind])
    module.serve(args.kind, addr, args.proto)


if __name__ == "__main__":
    main()
