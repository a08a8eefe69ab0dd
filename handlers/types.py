"""Types shared by the handlers: what a handler may use of its server, and address shapes."""

from __future__ import annotations

from typing import Any, Protocol, Tuple, Union

__all__ = ["Address", "ServerLike"]

Address = Union[Tuple[str, int], Tuple[str, int, int, int], str, bytes, Any]


class ServerLike(Protocol):
    """What a request handler may rely on from `self.server` (the standard library's servers
    and ours both qualify)."""

    def handle_error(self, request: Any, client_address: Any) -> None: ...
