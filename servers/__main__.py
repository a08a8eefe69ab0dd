"""`python -m servers`: serve a handler class on one or more addresses (see `servers.cli`)."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
