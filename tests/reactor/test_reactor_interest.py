"""InterestTable over a real selector and socket pairs: slots, lazy kernel updates, forget."""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterator

import pytest
from conftest import SELECTOR_CLASSES

from reactor.interest import READ, WRITE, InterestTable



class Waiter:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def run(self) -> None:
        self.log.append(self.name)


@pytest.fixture(params=SELECTOR_CLASSES, ids=lambda cls: cls.__name__)
def selector(request: pytest.FixtureRequest) -> Iterator[selectors.BaseSelector]:
    sel = request.param()
    try:
        yield sel
    finally:
        sel.close()



def registered_mask(selector: selectors.BaseSelector, fd: int) -> int:
    key = selector.get_map().get(fd)
    return 0 if key is None else key.events


def turn(selector: selectors.BaseSelector, table: InterestTable) -> None:
    table.dispatch(selector.select(0))


def test_set_reader_registers_read_interest_and_runs_the_waiter_when_readable(selector, pair) -> None:
    a, b = pair
    table, log = InterestTable(selector), []
    table.set_reader(a.fileno(), Waiter(log, "r"))
    assert registered_mask(selector, a.fileno()) == READ
    assert a.fileno() in table and len(table) == 1
    turn(selector, table)
    assert log == []  # nothing to read yet
    b.send(b"x")
    turn(selector, table)
    assert log == ["r"]
    turn(selector, table)
    assert log == ["r", "r"]  # level-triggered: still readable, still wanted


def test_reader_and_writer_share_one_registration(selector, pair) -> None:
    a, b = pair
    table, log = InterestTable(selector), []
    table.set_reader(a.fileno(), Waiter(log, "r"))
    table.set_writer(a.fileno(), Waiter(log, "w"))
    assert registered_mask(selector, a.fileno()) == READ | WRITE
    assert len(table) == 1
    b.send(b"x")
    turn(selector, table)
    assert sorted(log) == ["r", "w"]


def test_reader_of_and_writer_of_report_the_slots(selector, pair) -> None:
    a, _ = pair
    table = InterestTable(selector)
    reader, writer = Waiter([], "r"), Waiter([], "w")
    assert table.reader_of(a.fileno()) is None and table.writer_of(a.fileno()) is None
    table.set_reader(a.fileno(), reader)
    table.set_writer(a.fileno(), writer)
    assert table.reader_of(a.fileno()) is reader and table.writer_of(a.fileno()) is writer
    table.clear_writer(a.fileno())
    assert table.writer_of(a.fileno()) is None and table.reader_of(a.fileno()) is reader


def test_setting_a_new_reader_replaces_the_old_one_without_a_selector_call(selector, pair) -> None:
    a, b = pair
    table, log = InterestTable(selector), []
    table.set_reader(a.fileno(), Waiter(log, "old"))
    key_before = selector.get_key(a.fileno())
    table.set_reader(a.fileno(), Waiter(log, "new"))
    assert selector.get_key(a.fileno()) is key_before
    b.send(b"x")
    turn(selector, table)
    assert log == ["new"]


def test_clear_reader_is_lazy_and_the_unwanted_interest_is_dropped_at_the_next_event(selector,
                                                                                     pair) -> None:
    a, b = pair
    table, log = InterestTable(selector), []
    table.set_reader(a.fileno(), Waiter(log, "r"))
    table.clear_reader(a.fileno())
    assert registered_mask(selector, a.fileno()) == READ  # no selector call on clear
    turn(selector, table)
    assert registered_mask(selector, a.fileno()) == READ  # no event: still registered
    b.send(b"x")
    turn(selector, table)
    assert log == []
    assert registered_mask(selector, a.fileno()) == 0  # dropped when the event came
    assert a.fileno() not in table and len(table) == 0


def test_waiting_again_before_any_event_costs_no_selector_call(selector, pair) -> None:
    a, b = pair
    table, log = InterestTable(selector), []
    table.set_reader(a.fileno(), Waiter(log, "r"))
    key = selector.get_key(a.fileno())
    for _ in range(3):
        table.clear_reader(a.fileno())
        table.set_reader(a.fileno(), Waiter(log, "r"))
    assert selector.get_key(a.fileno()) is key
    b.send(b"x")
    turn(selector, table)
    assert log == ["r"]


def test_clearing_the_writer_drops_only_write_interest(selector, pair) -> None:
    a, b = pair
    table, log = InterestTable(selector), []
    table.set_reader(a.fileno(), Waiter(log, "r"))
    table.set_writer(a.fileno(), Waiter(log, "w"))
    table.clear_writer(a.fileno())
    turn(selector, table)  # writable at once: the unwanted write interest goes
    assert log == []
    assert registered_mask(selector, a.fileno()) == READ
    assert table.reader_of(a.fileno()) is not None
    b.send(b"x")
    turn(selector, table)
    assert log == ["r"]


def test_clearing_the_reader_keeps_a_pending_writer(selector, pair) -> None:
    a, b = pair
    table, log = InterestTable(selector), []
    table.set_reader(a.fileno(), Waiter(log, "r"))
    table.set_writer(a.fileno(), Waiter(log, "w"))
    table.clear_reader(a.fileno())
    b.send(b"x")
    turn(selector, table)
    assert log == ["w"]
    assert registered_mask(selector, a.fileno()) == WRITE
    assert a.fileno() in table


def test_an_entry_with_only_a_cleared_slot_stays_until_its_event(selector, pair) -> None:
    a, b = pair
    table = InterestTable(selector)
    table.set_writer(a.fileno(), Waiter([], "w"))
    table.clear_writer(a.fileno())
    assert a.fileno() in table  # lazily kept
    turn(selector, table)
    assert a.fileno() not in table
    assert a.fileno() not in selector.get_map()


def test_clearing_unknown_descriptors_is_harmless(selector) -> None:
    table = InterestTable(selector)
    table.clear_reader(999)
    table.clear_writer(999)
    table.forget(999)
    assert len(table) == 0 and len(selector.get_map()) == 0


def test_forget_unregisters_at_once(selector, pair) -> None:
    a, b = pair
    table, log = InterestTable(selector), []
    table.set_reader(a.fileno(), Waiter(log, "r"))
    table.set_writer(a.fileno(), Waiter(log, "w"))
    table.forget(a.fileno())
    assert a.fileno() not in selector.get_map()
    assert a.fileno() not in table
    b.send(b"x")
    turn(selector, table)
    assert log == []


def test_forget_of_a_cleared_but_registered_descriptor_unregisters_it(selector, pair) -> None:
    a, _ = pair
    table = InterestTable(selector)
    table.set_reader(a.fileno(), Waiter([], "r"))
    table.clear_reader(a.fileno())
    table.forget(a.fileno())
    assert a.fileno() not in selector.get_map()


def test_forget_then_close_lets_a_new_socket_reuse_the_number(selector) -> None:
    table, log = InterestTable(selector), []
    a, b = socket.socketpair()
    try:
        fd = a.fileno()
        table.set_reader(fd, Waiter(log, "old"))
        table.forget(fd)
        a.close()
        c, d = socket.socketpair()
        try:
            if c.fileno() != fd:  # pragma: no cover - the kernel hands out the lowest number
                pytest.skip("descriptor number was not reused")
            table.set_reader(c.fileno(), Waiter(log, "new"))
            d.send(b"x")
            turn(selector, table)
            assert log == ["new"]
            table.forget(c.fileno())
        finally:
            c.close()
            d.close()
    finally:
        a.close()
        b.close()


def test_forget_tolerates_a_descriptor_its_owner_already_closed(selector) -> None:
    table = InterestTable(selector)
    a, b = socket.socketpair()
    fd = a.fileno()
    table.set_reader(fd, Waiter([], "r"))
    a.close()
    b.close()
    table.forget(fd)  # the kernel (epoll) already dropped it; must not raise
    assert fd not in table


def test_an_event_fetched_before_forget_wakes_nobody(selector, pair) -> None:
    a, b = pair
    table, log = InterestTable(selector), []
    table.set_reader(a.fileno(), Waiter(log, "r"))
    table.set_writer(a.fileno(), Waiter(log, "w"))
    b.send(b"x")
    events = selector.select(0)
    assert events
    table.forget(a.fileno())
    table.dispatch(events)
    assert log == []
    assert a.fileno() not in selector.get_map()


def test_an_event_fetched_before_forget_does_not_touch_a_new_interest_in_the_same_fd(
        selector, pair) -> None:
    a, b = pair
    table, log = InterestTable(selector), []
    table.set_reader(a.fileno(), Waiter(log, "old"))
    b.send(b"x")
    events = selector.select(0)
    table.forget(a.fileno())
    table.set_writer(a.fileno(), Waiter(log, "new-writer"))
    table.dispatch(events)  # the stale read event belongs to the forgotten interest
    assert log == []
    assert registered_mask(selector, a.fileno()) == WRITE


def test_a_waiter_may_clear_its_own_slot_while_running(selector, pair) -> None:
    a, b = pair
    table, log = InterestTable(selector), []

    class OneShot:
        def run(self) -> None:
            log.append("once")
            table.clear_reader(a.fileno())

    table.set_reader(a.fileno(), OneShot())
    b.send(b"x")
    turn(selector, table)
    turn(selector, table)
    turn(selector, table)
    assert log == ["once"]
    assert a.fileno() not in selector.get_map()


def test_events_of_several_descriptors_are_all_dispatched(selector) -> None:
    table, log = InterestTable(selector), []
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for n, (a, b) in enumerate(pairs):
            table.set_reader(a.fileno(), Waiter(log, f"r{n}"))
            b.send(b"x")
        turn(selector, table)
        assert sorted(log) == ["r0", "r1", "r2"]
        for a, _ in pairs:
            table.forget(a.fileno())
        assert len(table) == 0 and len(selector.get_map()) == 0
    finally:
        for a, b in pairs:
            a.close()
            b.close()
