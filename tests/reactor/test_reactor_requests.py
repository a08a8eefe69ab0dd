"""The request table: entries, stages, the allowed moves, reprs. Pure units: no sockets."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

import reactor
from reactor import NEXT_STAGES, ReactorInternalError, RequestEntry, RequestTable, Stage
from reactor.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=500.0)


@pytest.fixture
def table(clock: FakeClock) -> RequestTable:
    return RequestTable(clock.now)


SERVER = object()


def test_new_table_is_an_empty_read_only_sequence(table: RequestTable) -> None:
    assert isinstance(table, Sequence)
    assert len(table) == 0
    assert list(table) == []
    assert repr(table) == "<RequestTable 0 in flight>"
    assert not hasattr(table, "append") and not hasattr(table, "__setitem__")
    with pytest.raises(TypeError):
        del table[0]  # type: ignore[attr-defined]


def test_open_adds_an_accepted_entry_with_what_the_server_gave(table: RequestTable,
                                                             clock: FakeClock) -> None:
    request = object()
    entry = table.open(SERVER, request, ("127.0.0.1", 4000), fd=9)
    assert isinstance(entry, RequestEntry)
    assert entry.server is SERVER and entry.request is request
    assert entry.client_address == ("127.0.0.1", 4000)
    assert entry.stage is Stage.ACCEPTED
    assert entry.fd == 9
    assert entry.accepted_at == clock.now()
    assert (entry.waiting_for, entry.where, entry.bytes_in, entry.bytes_out, entry.task) == (
        None, None, None, None, None)
    assert list(table) == [entry]
    assert repr(table) == "<RequestTable 1 in flight>"


def test_entry_ids_increase_and_are_never_reused(table: RequestTable) -> None:
    first = table.open(SERVER, None, "a")
    second = table.open(SERVER, None, "b")
    table.close(first)
    table.close(second)
    third = table.open(SERVER, None, "c")
    assert first.id < second.id < third.id


def test_close_removes_the_entry_and_marks_it_closed(table: RequestTable) -> None:
    keep = table.open(SERVER, None, "a")
    gone = table.open(SERVER, None, "b")
    table.close(gone)
    assert gone.stage is Stage.CLOSED
    assert list(table) == [keep]
    assert len(table) == 1


def test_closing_an_entry_twice_is_harmless(table: RequestTable) -> None:
    entry = table.open(SERVER, None, "a")
    other = table.open(SERVER, None, "b")
    table.close(entry)
    table.close(entry)
    assert list(table) == [other]
    assert entry.stage is Stage.CLOSED


def test_closing_an_entry_of_another_table_leaves_it_alone(clock: FakeClock) -> None:
    mine, theirs = RequestTable(clock.now), RequestTable(clock.now)
    foreign = theirs.open(SERVER, None, "x")
    mine.close(foreign)
    assert foreign.stage is Stage.ACCEPTED and list(theirs) == [foreign]


def test_indexing_and_slicing_follow_opening_order(table: RequestTable) -> None:
    entries = [table.open(SERVER, None, n) for n in range(4)]
    assert table[0] is entries[0]
    assert table[-1] is entries[-1]
    assert table[1:3] == entries[1:3]
    with pytest.raises(IndexError):
        table[4]
    assert table.index(entries[2]) == 2
    assert entries[3] in table


def test_iteration_is_a_snapshot_so_closing_while_iterating_is_safe(table: RequestTable) -> None:
    entries = [table.open(SERVER, None, n) for n in range(5)]
    seen = []
    for entry in table:
        seen.append(entry)
        table.close(entry)
    assert seen == entries
    assert len(table) == 0


def test_iteration_does_not_see_entries_opened_after_it_started(table: RequestTable) -> None:
    table.open(SERVER, None, "a")
    iterator = iter(table)
    table.open(SERVER, None, "b")
    assert [e.client_address for e in iterator] == ["a"]


def test_for_server_lists_only_that_servers_entries(table: RequestTable) -> None:
    other = object()
    mine = [table.open(SERVER, None, 1), table.open(SERVER, None, 3)]
    table.open(other, None, 2)
    assert table.for_server(SERVER) == mine
    assert table.for_server(object()) == []


def test_age_follows_the_clock(table: RequestTable, clock: FakeClock) -> None:
    entry = table.open(SERVER, None, "a")
    assert entry.age == 0.0
    clock.advance(2.5)
    assert entry.age == 2.5
    later = table.open(SERVER, None, "b")
    clock.advance(1.0)
    assert (entry.age, later.age) == (3.5, 1.0)


@pytest.mark.parametrize(("stage", "waiting_for", "where", "word"), [
    (Stage.ACCEPTED, None, None, "accepted"),
    (Stage.READING_AHEAD, None, None, "reading-ahead"),
    (Stage.RUNNING, None, None, "handling"),
    (Stage.WAITING, reactor.WaitReadable(3), None, "reading"),
    (Stage.WAITING, reactor.WaitWritable(3), None, "writing"),
    (Stage.WAITING, reactor.Sleep(1.0), None, "sleeping"),
    (Stage.WAITING, None, None, "waiting"),
    (Stage.WAITING, object(), None, "waiting"),
    (Stage.OFFLOADED, None, "thread", "in-thread"),
    (Stage.OFFLOADED, None, "child 4242", "in-child"),
    (Stage.OFFLOADED, None, None, "in-thread"),
    (Stage.CLOSING, None, None, "closing"),
    (Stage.CLOSED, None, None, "closed"),
])
def test_state_is_a_short_word_for_the_stage(table: RequestTable, stage: Stage, waiting_for: object,
                                             where: str | None, word: str) -> None:
    entry = table.open(SERVER, None, "a")
    entry.stage, entry.waiting_for, entry.where = stage, waiting_for, where
    assert entry.state == word


ALLOWED = sorted(((a, b) for a, nexts in NEXT_STAGES.items() for b in nexts),
                 key=lambda p: (p[0].name, p[1].name))
FORBIDDEN = sorted(((a, b) for a in Stage for b in Stage if b not in NEXT_STAGES[a]),
                   key=lambda p: (p[0].name, p[1].name))


def test_next_stages_covers_every_stage_and_closed_is_final() -> None:
    assert set(NEXT_STAGES) == set(Stage)
    assert NEXT_STAGES[Stage.CLOSED] == frozenset()
    assert all(Stage.CLOSED not in nexts or a is Stage.CLOSING for a, nexts in NEXT_STAGES.items())


def test_next_stages_is_read_only() -> None:
    before = dict(NEXT_STAGES)
    try:
        with pytest.raises(TypeError):
            NEXT_STAGES[Stage.CLOSED] = frozenset({Stage.RUNNING})  # type: ignore[index]
        with pytest.raises(AttributeError):
            NEXT_STAGES[Stage.CLOSED].add(Stage.RUNNING)  # type: ignore[attr-defined]
    finally:
        if dict(NEXT_STAGES) != before:  # keep other tests sane if this one fails
            NEXT_STAGES.clear()  # type: ignore[attr-defined]
            NEXT_STAGES.update(before)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("start", "target"), ALLOWED,
                         ids=[f"{a.name}->{b.name}" for a, b in ALLOWED])
def test_move_to_accepts_every_allowed_move(table: RequestTable, start: Stage,
                                            target: Stage) -> None:
    entry = table.open(SERVER, None, "a")
    entry.stage = start
    entry.move_to(target)
    assert entry.stage is target


@pytest.mark.parametrize(("start", "target"), FORBIDDEN,
                         ids=[f"{a.name}->{b.name}" for a, b in FORBIDDEN])
def test_move_to_refuses_a_forbidden_move_as_an_internal_error(table: RequestTable, start: Stage,
                                                               target: Stage) -> None:
    entry = table.open(SERVER, None, ("10.0.0.1", 80))
    entry.stage = start
    with pytest.raises(ReactorInternalError, match=f"cannot go to {target.name}"):
        entry.move_to(target)
    assert entry.stage is start


def test_some_moves_that_must_stay_forbidden() -> None:
    # Sanity anchors independent of how the table above was computed.
    assert Stage.WAITING not in NEXT_STAGES[Stage.ACCEPTED]   # a task runs before it waits
    assert Stage.RUNNING not in NEXT_STAGES[Stage.OFFLOADED]  # a thread's request stays there
    assert Stage.CLOSED not in NEXT_STAGES[Stage.RUNNING]     # closing always comes first
    assert Stage.ACCEPTED not in NEXT_STAGES[Stage.CLOSING]


def test_internal_error_is_a_reactor_error() -> None:
    assert issubclass(ReactorInternalError, reactor.ReactorError)
    assert issubclass(reactor.ReactorError, RuntimeError)


def test_repr_of_a_request_waiting_to_read(table: RequestTable) -> None:
    for _ in range(11):
        table.close(table.open(SERVER, None, None))
    entry = table.open(SERVER, None, ("127.0.0.1", 53122), fd=7)
    entry.stage = Stage.WAITING
    entry.waiting_for = reactor.WaitReadable(7, 30.0)
    assert repr(entry) == "<RequestEntry #12 WAITING reading fd=7 from 127.0.0.1:53122>"


@pytest.mark.parametrize(("setup", "expected"), [
    ({}, "<RequestEntry #1 ACCEPTED from 127.0.0.1:80>"),
    ({"stage": Stage.RUNNING, "fd": 5}, "<RequestEntry #1 RUNNING fd=5 from 127.0.0.1:80>"),
    ({"stage": Stage.WAITING}, "<RequestEntry #1 WAITING from 127.0.0.1:80>"),
    ({"stage": Stage.WAITING, "waiting_for": reactor.Sleep(2)},
     "<RequestEntry #1 WAITING sleeping from 127.0.0.1:80>"),
    ({"stage": Stage.OFFLOADED, "where": "child 77"},
     "<RequestEntry #1 OFFLOADED child 77 from 127.0.0.1:80>"),
    ({"stage": Stage.CLOSING, "fd": 0}, "<RequestEntry #1 CLOSING fd=0 from 127.0.0.1:80>"),
])
def test_repr_shows_stage_detail_and_fd(table: RequestTable, setup: dict,
                                        expected: str) -> None:
    entry = table.open(SERVER, None, ("127.0.0.1", 80))
    for name, value in setup.items():
        setattr(entry, name, value)
    assert repr(entry) == expected


@pytest.mark.parametrize(("address", "shown"), [
    (("::1", 8080, 0, 0), "[::1]:8080"),
    (("example.org", 443), "example.org:443"),
    ("/run/app.sock", "/run/app.sock"),
    ("", "unnamed"),
    (b"\0abstract", repr(b"\0abstract")),
    (None, "None"),
])
def test_repr_formats_every_address_family(table: RequestTable, address: object,
                                           shown: str) -> None:
    entry = table.open(SERVER, None, address)
    assert repr(entry).endswith(f" from {shown}>")


def test_entries_can_be_weakly_referenced(table: RequestTable) -> None:
    import weakref
    entry = table.open(SERVER, None, "a")
    assert weakref.ref(entry)() is entry
