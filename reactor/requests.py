"""The request table: one entry for every request in flight on a reactor.

An entry is created when a server hands a request to the reactor and removed when that request
ends, whatever way it ends. The entry's `stage` is the single source of truth about where the
request is; `NEXT_STAGES` lists the moves allowed, and a forbidden move is a bug in the library
(`ReactorInternalError`). This module does no I/O and reads no clock: ages are computed from a
clock the caller passes in.
"""

from __future__ import annotations

import enum
import itertools
import types
from typing import Any, Callable, Final, Iterator, Mapping, Sequence

from .errors import ReactorInternalError

__all__ = ["Stage", "NEXT_STAGES", "RequestEntry", "RequestTable"]


class Stage(enum.Enum):
    """Where a request is in its life."""

    ACCEPTED = "accepted"          # returned by get_request(), not yet dispatched
    PROXY_HEADER = "proxy-header"  # its PROXY protocol header is being read
    HANDSHAKING = "handshaking"    # its TLS handshake is under way on the reactor
    READING_AHEAD = "reading-ahead"  # held until its first request has arrived (classic handlers)
    RUNNING = "running"            # its handler is executing on the reactor thread right now
    WAITING = "waiting"            # its coroutine is parked on a trap (readable, writable, timer)
    OFFLOADED = "offloaded"        # a thread or a child process owns the request
    CLOSING = "closing"            # finish/flush/shutdown_request under way
    CLOSED = "closed"


NEXT_STAGES: Final[Mapping[Stage, frozenset[Stage]]] = types.MappingProxyType({
    Stage.ACCEPTED: frozenset({Stage.PROXY_HEADER, Stage.HANDSHAKING, Stage.READING_AHEAD,
                               Stage.RUNNING, Stage.OFFLOADED, Stage.CLOSING}),
    Stage.PROXY_HEADER: frozenset({Stage.HANDSHAKING, Stage.READING_AHEAD, Stage.RUNNING,
                                   Stage.OFFLOADED, Stage.CLOSING}),
    Stage.HANDSHAKING: frozenset({Stage.READING_AHEAD, Stage.RUNNING, Stage.OFFLOADED,
                                  Stage.CLOSING}),
    Stage.READING_AHEAD: frozenset({Stage.RUNNING, Stage.OFFLOADED, Stage.CLOSING}),
    Stage.RUNNING: frozenset({Stage.WAITING, Stage.CLOSING}),
    Stage.WAITING: frozenset({Stage.RUNNING, Stage.CLOSING}),
    Stage.OFFLOADED: frozenset({Stage.CLOSING}),
    Stage.CLOSING: frozenset({Stage.CLOSED, Stage.RUNNING, Stage.WAITING}),
    Stage.CLOSED: frozenset(),
})  # read-only: a mutated table would let forbidden moves through

_WAIT_NAMES: Final = {"WaitReadable": "reading", "WaitWritable": "writing", "Sleep": "sleeping"}


class RequestEntry:
    """One row of the table. Read its public attributes; only the reactor and servers write them.

    Attributes:
        id: unique within the reactor, increasing.
        server: the server (or other owner) that accepted the request.
        request: the request as the standard library defines it (a socket, or `(data, socket)`).
        client_address: the peer's address.
        stage: a `Stage`.
        waiting_for: the trap a coroutine is parked on, when `stage` is WAITING.
        where: for OFFLOADED entries, "thread" or "child <pid>".
        bytes_in / bytes_out: bytes read and written through the library's own streams
            (None where the handler uses the socket directly and the library cannot see it).
        accepted_at: the reactor clock's time when the entry was opened.
    """

    __slots__ = ("id", "server", "request", "client_address", "stage", "waiting_for", "where",
                 "bytes_in", "bytes_out", "accepted_at", "fd", "task", "_clock", "__weakref__")

    def __init__(self, id: int, server: Any, request: Any, client_address: Any,
                 accepted_at: float, clock: Callable[[], float], fd: int = -1) -> None:
        self.id = id
        self.server = server
        self.request = request
        self.client_address = client_address
        self.stage = Stage.ACCEPTED
        self.waiting_for: Any = None
        self.where: str | None = None
        self.bytes_in: int | None = None
        self.bytes_out: int | None = None
        self.accepted_at = accepted_at
        self.fd = fd
        self.task: Any = None
        self._clock = clock

    def count_in(self, size: int) -> None:
        """Add `size` to `bytes_in` (the library's streams report what they read here)."""
        self.bytes_in = (self.bytes_in or 0) + size

    def count_out(self, size: int) -> None:
        """Add `size` to `bytes_out` (the library's streams report what they sent here)."""
        self.bytes_out = (self.bytes_out or 0) + size

    @property
    def age(self) -> float:
        """Seconds since the request was accepted."""
        return self._clock() - self.accepted_at

    @property
    def state(self) -> str:
        """A short human word for the stage: reading, writing, sleeping, handling, in-thread…"""
        stage = self.stage
        if stage is Stage.WAITING:
            return _WAIT_NAMES.get(type(self.waiting_for).__name__, "waiting")
        if stage is Stage.RUNNING:
            return "handling"
        if stage is Stage.OFFLOADED:
            return f"in-{(self.where or 'thread').split()[0]}"
        return str(stage.value)

    def move_to(self, stage: Stage) -> None:
        """Change stage, refusing moves that `NEXT_STAGES` does not allow."""
        if stage not in NEXT_STAGES[self.stage]:
            raise ReactorInternalError(f"{self!r} cannot go to {stage.name}")
        self.stage = stage

    def __repr__(self) -> str:
        detail = self.stage.name
        trap = self.waiting_for
        if self.stage is Stage.WAITING and trap is not None:
            detail += f" {self.state}"
        if self.where:
            detail += f" {self.where}"
        if self.fd >= 0:
            detail += f" fd={self.fd}"
        return f"<RequestEntry #{self.id} {detail} from {_format_address(self.client_address)}>"


def _format_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return repr(address) if not isinstance(address, str) else (address or "unnamed")


class RequestTable(Sequence[RequestEntry]):
    """Every request in flight, in the order they were opened. A read-only sequence to callers."""

    __slots__ = ("_entries", "_ids", "_clock")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._entries: dict[int, RequestEntry] = {}
        self._ids = itertools.count(1)
        self._clock = clock

    def open(self, server: Any, request: Any, client_address: Any, fd: int = -1) -> RequestEntry:
        """Add and return a new ACCEPTED entry."""
        entry = RequestEntry(next(self._ids), server, request, client_address, self._clock(),
                             self._clock, fd)
        self._entries[entry.id] = entry
        return entry

    def close(self, entry: RequestEntry) -> None:
        """Mark `entry` CLOSED and remove it; closing an entry twice is harmless."""
        if self._entries.pop(entry.id, None) is not None:
            entry.stage = Stage.CLOSED

    def for_server(self, server: Any) -> list[RequestEntry]:
        """The entries that `server` accepted."""
        return [entry for entry in self._entries.values() if entry.server is server]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[RequestEntry]:
        return iter(list(self._entries.values()))

    def __getitem__(self, index: Any) -> Any:
        return list(self._entries.values())[index]

    def __repr__(self) -> str:
        return f"<RequestTable {len(self)} in flight>"
