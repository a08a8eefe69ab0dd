"""Reactor: callbacks, timers, descriptor callbacks, signals, statistics, close."""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SELECTOR_CLASSES

import reactor
from reactor import ClosedResourceError, Reactor, ReactorError
from reactor.testing import FakeClock, run_until_idle






def fill(sock: socket.socket) -> int:
    """Write to a non-blocking socket until the kernel refuses more; return the byte count."""
    total = 0
    chunk = b"x" * 65536
    while True:
        try:
            total += sock.send(chunk)
        except BlockingIOError:
            return total


def drain(sock: socket.socket) -> int:
    total = 0
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return total
        if not data:
            return total
        total += len(data)


# ------------------------------------------------------------------------ call_soon
def test_call_soon_runs_callbacks_in_order_with_their_args(loop: Reactor) -> None:
    log: list[object] = []
    loop.call_soon(log.append, 1)
    loop.call_soon(log.extend, [2, 3])
    loop.call_soon(log.append, 4)
    assert log == []  # nothing runs before the loop turns
    assert loop.run_once(0) == 3
    assert log == [1, 2, 3, 4]


def test_callbacks_queued_during_a_batch_wait_for_the_next_turn(loop: Reactor) -> None:
    log: list[str] = []

    def first() -> None:
        log.append("first")
        loop.call_soon(log.append, "queued-by-first")

    loop.call_soon(first)
    loop.call_soon(log.append, "second")
    assert loop.run_once(0) == 2
    assert log == ["first", "second"]
    assert loop.run_once(0) == 1
    assert log == ["first", "second", "queued-by-first"]
    assert loop.run_once(0) == 0


def test_a_callback_that_requeues_itself_cannot_starve_the_others(loop: Reactor) -> None:
    log: list[str] = []

    def greedy() -> None:
        log.append("greedy")
        loop.call_soon(greedy)

    loop.call_soon(greedy)
    loop.call_soon(log.append, "other")
    loop.run_once(0)
    assert log == ["greedy", "other"]
    loop.run_once(0)
    assert log == ["greedy", "other", "greedy"]


def test_a_cancelled_call_soon_handle_does_not_run(loop: Reactor) -> None:
    log: list[str] = []
    handle = loop.call_soon(log.append, "no")
    loop.call_soon(log.append, "yes")
    handle.cancel()
    assert handle.cancelled
    assert "cancelled" in repr(handle)
    loop.run_once(0)
    assert log == ["yes"]


def test_pending_callbacks_make_run_once_none_return_at_once(loop: Reactor) -> None:
    log: list[str] = []
    loop.call_soon(log.append, "ran")
    loop.run_once(None)  # would block forever if the budget ignored ready callbacks
    assert log == ["ran"]


def test_an_exception_from_a_callback_propagates_out_of_run_once(loop: Reactor) -> None:
    def boom() -> None:
        raise ValueError("boom")

    loop.call_soon(boom)
    with pytest.raises(ValueError, match="boom"):
        loop.run_once(0)


# ------------------------------------------------------------------------ timers
def test_call_later_runs_once_the_fake_clock_reaches_the_deadline(fake_loop: Reactor,
                                                                  clock: FakeClock) -> None:
    log: list[str] = []
    handle = fake_loop.call_later(10, log.append, "fired")
    assert isinstance(handle, reactor.TimerHandle)
    assert handle.deadline == clock.now() + 10
    clock.advance(9.999)
    fake_loop.run_once(0)
    assert log == []
    clock.advance(0.001)
    assert fake_loop.run_once(0) == 1
    assert log == ["fired"]
    clock.advance(100)
    fake_loop.run_once(0)
    assert log == ["fired"]  # once only


def test_call_at_uses_the_reactor_clock(fake_loop: Reactor, clock: FakeClock) -> None:
    log: list[str] = []
    assert fake_loop.time() == clock.now()
    fake_loop.call_at(clock.now() + 5, log.append, "at")
    clock.advance(5)
    fake_loop.run_once(0)
    assert log == ["at"]


def test_call_at_in_the_past_runs_on_the_next_turn(fake_loop: Reactor, clock: FakeClock) -> None:
    log: list[str] = []
    fake_loop.call_at(clock.now() - 100, log.append, "late")
    fake_loop.run_once(0)
    assert log == ["late"]


def test_call_later_with_a_negative_delay_means_now(fake_loop: Reactor, clock: FakeClock) -> None:
    handle = fake_loop.call_later(-5, lambda: None)
    assert handle.deadline == clock.now()


def test_timers_run_in_deadline_order_and_ties_in_scheduling_order(fake_loop: Reactor,
                                                                   clock: FakeClock) -> None:
    log: list[str] = []
    fake_loop.call_later(3, log.append, "c")
    fake_loop.call_later(1, log.append, "a1")
    fake_loop.call_later(2, log.append, "b")
    fake_loop.call_later(1, log.append, "a2")
    clock.advance(3)
    assert fake_loop.run_once(0) == 4
    assert log == ["a1", "a2", "b", "c"]


def test_timers_run_before_callbacks_of_the_same_turn(fake_loop: Reactor, clock: FakeClock) -> None:
    log: list[str] = []
    fake_loop.call_soon(log.append, "soon")
    fake_loop.call_later(1, log.append, "timer")
    clock.advance(1)
    fake_loop.run_once(0)
    assert log == ["timer", "soon"]


def test_a_cancelled_timer_never_runs_and_leaves_the_count(fake_loop: Reactor,
                                                           clock: FakeClock) -> None:
    log: list[str] = []
    handle = fake_loop.call_later(1, log.append, "no")
    assert fake_loop.statistics()["timers"] == 1
    handle.cancel()
    handle.cancel()
    assert fake_loop.statistics()["timers"] == 0
    clock.advance(5)
    assert fake_loop.run_once(0) == 0
    assert log == []


def test_a_timer_cancelled_by_an_earlier_timer_of_the_same_batch_does_not_run(
        fake_loop: Reactor, clock: FakeClock) -> None:
    log: list[str] = []
    victim: list[reactor.TimerHandle] = []

    def killer() -> None:
        log.append("killer")
        victim[0].cancel()

    fake_loop.call_later(1, killer)
    victim.append(fake_loop.call_later(1, log.append, "victim"))
    clock.advance(1)
    fake_loop.run_once(0)
    assert log == ["killer"]


def test_a_timer_scheduled_by_a_timer_for_now_runs_on_the_next_turn(fake_loop: Reactor,
                                                                    clock: FakeClock) -> None:
    log: list[str] = []

    def first() -> None:
        log.append("first")
        fake_loop.call_later(0, log.append, "second")

    fake_loop.call_later(1, first)
    clock.advance(1)
    fake_loop.run_once(0)
    assert log == ["first"]
    fake_loop.run_once(0)
    assert log == ["first", "second"]


def test_a_due_timer_makes_run_once_none_return_at_once(fake_loop: Reactor,
                                                        clock: FakeClock) -> None:
    log: list[str] = []
    fake_loop.call_later(60, log.append, "due")
    clock.advance(60)
    fake_loop.run_once(None)  # the budget is 0 s: the fake clock says it is already due
    assert log == ["due"]


class RecordingSelector(selectors.DefaultSelector):
    """A real selector that records how long each turn would wait, and never waits."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def select(self, timeout: float | None = None) -> list[Any]:
        self.waits.append(timeout)
        return super().select(0)


def test_a_turn_waits_until_the_next_timer_at_most_and_never_past_the_cap(
        clock: FakeClock) -> None:
    from reactor.loop import MAX_SLEEP_SECONDS
    selector = RecordingSelector()
    with Reactor(selector, clock=clock) as r:
        r.run_once(None)
        r.run_once(7.0)
        r.run_once(-1.0)
        handle = r.call_later(3, lambda: None)
        r.run_once(None)
        r.run_once(1.0)
        handle.cancel()
        r.call_later(10 * MAX_SLEEP_SECONDS, lambda: None)
        r.run_once(None)
        r.call_soon(lambda: None)
        r.run_once(None)
    assert selector.waits == [None, 7.0, 0.0, 3.0, 1.0, MAX_SLEEP_SECONDS, 0.0]


def test_real_clock_timer_with_zero_delay_runs_on_the_next_turn(loop: Reactor) -> None:
    log: list[str] = []
    loop.call_later(0, log.append, "now")
    loop.run_once(None)
    assert log == ["now"]


# ------------------------------------------------------------------------ threads
class SignallingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Sets `entered` each time the reactor starts waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()

    def select(self, timeout: float | None = None):  # type: ignore[no-untyped-def]
        if timeout is None or timeout > 0:
            self.entered.set()
        return super().select(timeout)


@pytest.mark.threads
def test_call_soon_threadsafe_wakes_a_loop_blocked_without_timeout() -> None:
    selector = SignallingSelector()
    with Reactor(selector) as r:
        log: list[int] = []

        def other_thread() -> None:
            assert selector.entered.wait(10)
            r.call_soon_threadsafe(log.append, threading.get_ident())

        thread = threading.Thread(target=other_thread)
        thread.start()
        try:
            for _ in range(5):  # the first turn may only drain the wake-up byte
                r.run_once(None)
                if log:
                    break
        finally:
            thread.join()
        assert log == [thread.ident]  # the sender's id, recorded when it called


@pytest.mark.threads
def test_call_soon_threadsafe_callback_runs_on_the_loop_thread() -> None:
    selector = SignallingSelector()
    with Reactor(selector) as r:
        ran_on: list[int] = []
        thread = threading.Thread(target=lambda: (
            selector.entered.wait(10),
            r.call_soon_threadsafe(lambda: ran_on.append(threading.get_ident()))))
        thread.start()
        try:
            for _ in range(5):
                r.run_once(None)
                if ran_on:
                    break
        finally:
            thread.join()
        assert ran_on == [threading.get_ident()]


def test_call_soon_threadsafe_from_the_loop_thread_runs_next_turn(loop: Reactor) -> None:
    log: list[str] = []
    loop.call_soon_threadsafe(log.append, "x")
    loop.run_once(None)
    assert log == ["x"]


def test_call_soon_threadsafe_on_a_closed_reactor_is_dropped() -> None:
    r = Reactor()
    r.close()
    handle = r.call_soon_threadsafe(lambda: None)
    assert isinstance(handle, reactor.Handle)
    assert r.statistics()["callbacks"] == 0


# ------------------------------------------------------------------------ descriptors
def test_add_reader_calls_back_with_args_while_readable(loop: Reactor, pair) -> None:
    a, b = pair
    log: list[tuple[str, int]] = []
    handle = loop.add_reader(a, lambda tag: log.append((tag, len(a.recv(10)))), "got")
    assert isinstance(handle, reactor.Handle)
    loop.run_once(0)
    assert log == []
    b.send(b"abc")
    loop.run_once(0)
    assert log == [("got", 3)]
    loop.run_once(0)
    assert log == [("got", 3)]  # consumed: no longer readable
    loop.remove_reader(a)


def test_add_reader_accepts_a_raw_descriptor_and_replaces_an_earlier_reader(loop: Reactor,
                                                                          pair) -> None:
    a, b = pair
    log: list[str] = []
    loop.add_reader(a.fileno(), log.append, "old")
    loop.add_reader(a, log.append, "new")
    b.send(b"x")
    loop.run_once(0)
    assert log == ["new"]
    assert loop.statistics()["descriptors"] == 1
    loop.remove_reader(a.fileno())


def test_remove_reader_stops_callbacks_and_releases_the_descriptor(loop: Reactor, pair) -> None:
    a, b = pair
    log: list[str] = []
    loop.add_reader(a, log.append, "r")
    loop.remove_reader(a)
    assert loop.statistics()["descriptors"] == 0
    b.send(b"x")
    loop.run_once(0)
    assert log == []


def test_remove_reader_of_an_unwatched_descriptor_is_harmless(loop: Reactor, pair) -> None:
    a, _ = pair
    loop.remove_reader(a)
    loop.remove_writer(a)
    assert loop.statistics()["descriptors"] == 0


def test_add_writer_calls_back_while_writable(loop: Reactor, pair) -> None:
    a, _ = pair
    log: list[str] = []
    loop.add_writer(a, log.append, "w")
    loop.run_once(0)
    loop.run_once(0)
    assert log == ["w", "w"]
    loop.remove_writer(a)
    loop.run_once(0)
    assert log == ["w", "w"]
    assert loop.statistics()["descriptors"] == 0


def test_add_writer_waits_while_the_socket_is_full(loop: Reactor, pair) -> None:
    a, b = pair
    fill(a)
    log: list[str] = []
    loop.add_writer(a, log.append, "w")
    loop.run_once(0)
    assert log == []
    drain(b)
    loop.run_once(1)
    assert log == ["w"]
    loop.remove_writer(a)


def test_remove_writer_keeps_the_reader_and_vice_versa(loop: Reactor, pair) -> None:
    a, b = pair
    log: list[str] = []
    loop.add_reader(a, log.append, "r")
    loop.add_writer(a, log.append, "w")
    loop.remove_writer(a)
    b.send(b"x")
    loop.run_once(0)
    assert log == ["r"]
    assert loop.statistics()["descriptors"] == 1
    loop.add_writer(a, log.append, "w")
    loop.remove_reader(a)
    log.clear()
    loop.run_once(0)
    assert log == ["w"]
    loop.remove_writer(a)
    assert loop.statistics()["descriptors"] == 0


def test_a_reader_removed_by_an_earlier_callback_of_the_same_turn_does_not_run(loop: Reactor,
                                                                               pair) -> None:
    a, b = pair
    c, d = socket.socketpair()
    try:
        log: list[str] = []

        def first(mine: socket.socket, other: socket.socket, name: str) -> None:
            log.append(name)
            loop.remove_reader(other)

        loop.add_reader(a, first, a, c, "a")
        loop.add_reader(c, first, c, a, "c")
        b.send(b"x")
        d.send(b"x")
        loop.run_once(0)
        assert log in (["a"], ["c"])  # whichever came first removed the other
        loop.forget(a.fileno())
        loop.forget(c.fileno())
    finally:
        c.close()
        d.close()


def test_forget_drops_reader_and_writer_at_once(loop: Reactor, pair) -> None:
    a, b = pair
    log: list[str] = []
    loop.add_reader(a, log.append, "r")
    loop.add_writer(a, log.append, "w")
    loop.forget(a.fileno())
    b.send(b"x")
    loop.run_once(0)
    assert log == []
    assert loop.statistics()["descriptors"] == 0


# ------------------------------------------------------------------------ signals
@pytest.fixture
def restore_sigusr1() -> Iterator[None]:
    before = signal.getsignal(signal.SIGUSR1)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, before)


@pytest.mark.threads
def test_a_signal_sent_while_the_loop_waits_runs_its_callback_on_the_loop(restore_sigusr1) -> None:
    selector = SignallingSelector()
    with Reactor(selector) as r:
        ran: list[tuple[str, int]] = []
        r.add_signal_handler(signal.SIGUSR1, lambda tag: ran.append((tag, threading.get_ident())),
                             "usr1")

        def sender() -> None:
            assert selector.entered.wait(10)
            os.kill(os.getpid(), signal.SIGUSR1)

        thread = threading.Thread(target=sender)
        thread.start()
        try:
            for _ in range(5):
                r.run_once(None)
                if ran:
                    break
        finally:
            thread.join()
        assert ran == [("usr1", threading.get_ident())]


def test_a_signal_callback_runs_on_the_next_turn_not_inside_the_handler(restore_sigusr1) -> None:
    with Reactor() as r:
        log: list[str] = []
        r.add_signal_handler(signal.SIGUSR1, log.append, "signal")

        def in_a_callback() -> None:
            os.kill(os.getpid(), signal.SIGUSR1)  # Python runs its handler right here
            log.append("callback continues")

        r.call_soon(in_a_callback)
        r.run_once(0)
        assert log == ["callback continues"]
        r.run_once(None)
        assert log == ["callback continues", "signal"]


def test_remove_signal_handler_restores_the_previous_handler(restore_sigusr1) -> None:
    def previous(signum: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGUSR1, previous)
    with Reactor() as r:
        r.add_signal_handler(signal.SIGUSR1, lambda: None)
        assert signal.getsignal(signal.SIGUSR1) is not previous
        r.add_signal_handler(signal.SIGUSR1, lambda: None)  # replacing keeps the original
        assert r.remove_signal_handler(signal.SIGUSR1) is True
        assert signal.getsignal(signal.SIGUSR1) is previous
        assert r.remove_signal_handler(signal.SIGUSR1) is False


def test_remove_signal_handler_restores_sig_ign_and_default(restore_sigusr1) -> None:
    with Reactor() as r:
        for original in (signal.SIG_IGN, signal.SIG_DFL):
            signal.signal(signal.SIGUSR1, original)
            r.add_signal_handler(signal.SIGUSR1, lambda: None)
            r.remove_signal_handler(signal.SIGUSR1)
            assert signal.getsignal(signal.SIGUSR1) == original


def test_close_restores_signal_handlers(restore_sigusr1) -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    r = Reactor()
    r.add_signal_handler(signal.SIGUSR1, lambda: None)
    r.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN


def test_the_replaced_callback_is_the_one_that_runs(restore_sigusr1) -> None:
    with Reactor() as r:
        log: list[str] = []
        r.add_signal_handler(signal.SIGUSR1, log.append, "old")
        r.add_signal_handler(signal.SIGUSR1, log.append, "new")
        os.kill(os.getpid(), signal.SIGUSR1)
        r.run_once(None)
        assert log == ["new"]


def test_a_signal_that_arrives_after_its_handler_was_removed_runs_nothing(restore_sigusr1) -> None:
    with Reactor() as r:
        log: list[str] = []
        r.add_signal_handler(signal.SIGUSR1, log.append, "signal")
        python_level = signal.getsignal(signal.SIGUSR1)
        python_level(signal.SIGUSR1, None)  # recorded by the Python-level handler...
        r.remove_signal_handler(signal.SIGUSR1)  # ...then removed before the loop turns
        r.run_once(None)
        assert log == []


def test_add_signal_handler_refuses_an_invalid_signal_number() -> None:
    with Reactor() as r:
        with pytest.raises(ValueError):
            r.add_signal_handler(0, lambda: None)
        assert r.remove_signal_handler(0) is False


@pytest.mark.threads
def test_add_signal_handler_off_the_main_thread_raises_value_error(restore_sigusr1) -> None:
    errors: list[BaseException] = []
    with Reactor() as r:
        def attempt() -> None:
            try:
                r.add_signal_handler(signal.SIGUSR1, lambda: None)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        thread = threading.Thread(target=attempt)
        thread.start()
        thread.join()
        assert len(errors) == 1 and isinstance(errors[0], ValueError)
        assert r.remove_signal_handler(signal.SIGUSR1) is False


# ------------------------------------------------------------------------ statistics, close
def test_statistics_count_what_is_pending(fake_loop: Reactor, pair) -> None:
    a, _ = pair
    assert fake_loop.statistics() == {"requests": 0, "descriptors": 0, "timers": 0,
                                      "callbacks": 0, "servers": 0}
    fake_loop.call_soon(lambda: None)
    fake_loop.call_later(5, lambda: None)
    fake_loop.call_later(6, lambda: None)
    fake_loop.add_reader(a, lambda: None)
    entry = fake_loop.open_request(object(), a, ("127.0.0.1", 1), a.fileno())
    assert fake_loop.statistics() == {"requests": 1, "descriptors": 1, "timers": 2,
                                      "callbacks": 1, "servers": 0}
    assert list(fake_loop.requests) == [entry]
    fake_loop.close_request(entry)
    fake_loop.close_request(entry)
    fake_loop.remove_reader(a)
    fake_loop.run_once(0)
    assert fake_loop.statistics() == {"requests": 0, "descriptors": 0, "timers": 2,
                                      "callbacks": 0, "servers": 0}


def test_close_releases_the_reactors_descriptors() -> None:
    before = {fd for fd in open_fds() if _is_socket_or_selector(fd)}
    r = Reactor()
    during = {fd for fd in open_fds() if _is_socket_or_selector(fd)}
    assert len(during - before) >= 2  # at least the waker pair (and the selector's own fd)
    r.close()
    after = {fd for fd in open_fds() if _is_socket_or_selector(fd)}
    assert after <= before


def open_fds() -> set[int]:
    if not os.path.isdir("/proc/self/fd"):  # pragma: no cover - Linux only
        pytest.skip("needs /proc/self/fd")
    return {int(name) for name in os.listdir("/proc/self/fd")}


def _is_socket_or_selector(fd: int) -> bool:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return target.startswith(("socket:", "anon_inode:"))


def test_close_twice_is_harmless_and_closed_reports_it() -> None:
    r = Reactor()
    assert not r.closed
    r.close()
    r.close()
    assert r.closed
    assert repr(r).startswith("<Reactor closed ")


@pytest.mark.parametrize("use", [
    lambda r: r.run_once(0),
    lambda r: r.register(object()),
    lambda r: r.spawn(None),
    lambda r: r.add_signal_handler(signal.SIGUSR1, lambda: None),
    lambda r: r.run_until(lambda: True),
    lambda r: r.serve_forever(),
], ids=["run_once", "register", "spawn", "add_signal_handler", "run_until", "serve_forever"])
def test_a_closed_reactor_refuses_to_be_used(use) -> None:  # type: ignore[no-untyped-def]
    r = Reactor()
    r.close()
    with pytest.raises(ClosedResourceError, match="closed"):
        use(r)
    assert issubclass(ClosedResourceError, ReactorError)


def test_shutdown_of_a_closed_reactor_is_a_no_op() -> None:
    r = Reactor()
    r.close()
    r.shutdown()
    assert r.closed and r.servers == () and "closed" in repr(r)


def test_context_manager_closes_the_reactor() -> None:
    with Reactor() as r:
        assert isinstance(r, Reactor)
        assert repr(r) == "<Reactor idle servers=0 requests=0>"
    assert r.closed


def test_context_manager_closes_on_error() -> None:
    with pytest.raises(KeyError):
        with Reactor() as r:
            raise KeyError
    assert r.closed


def test_close_runs_the_finally_blocks_of_live_tasks(loop: Reactor, pair) -> None:
    a, b = pair
    log: list[str] = []

    async def waiter(name: str, sock: socket.socket) -> None:
        try:
            await reactor.wait(reactor.WaitReadable(sock.fileno()))
        finally:
            log.append(name)

    entry = loop.open_request(object(), a, "peer", a.fileno())
    loop.spawn(waiter("with-entry", a), entry)
    loop.spawn(waiter("without-entry", b))
    run_until_idle(loop)
    assert log == []
    loop.close()
    assert sorted(log) == ["with-entry", "without-entry"]
    assert len(loop.requests) == 0


def test_a_second_task_waiting_on_the_same_descriptor_is_refused(loop: Reactor, pair) -> None:
    a, b = pair

    async def read_one() -> bytes:
        await reactor.wait(reactor.WaitReadable(a.fileno()))
        return a.recv(10)

    first = loop.spawn(read_one())
    second = loop.spawn(read_one())
    run_until_idle(loop)
    assert isinstance(second.error, reactor.ReactorError)
    assert "already awaited" in str(second.error)
    assert not first.done  # the first keeps its wait, and gets the data
    b.send(b"hi")
    run_until_idle(loop)
    assert first.result == b"hi"


def test_close_closes_tasks_that_never_started_without_warnings(loop: Reactor) -> None:
    log: list[str] = []

    async def never() -> None:
        log.append("started")  # pragma: no cover - must not run

    loop.spawn(never())
    loop.spawn(never(), loop.open_request(object(), None, "peer"))
    loop.close()  # an unclosed never-awaited coroutine would warn (an error here)
    assert log == []


def test_close_logs_a_task_that_refuses_to_close(loop: Reactor, caplog) -> None:
    async def stubborn() -> None:
        try:
            await reactor.sleep(100)
        finally:
            await reactor.sleep(100)  # awaiting while being closed: RuntimeError

    task = loop.spawn(stubborn(), loop.open_request(object(), None, "peer"))
    run_until_idle(loop)
    with caplog.at_level(logging.ERROR, logger="reactor"):
        loop.close()
    assert task.done
    assert any("closing" in record.getMessage() for record in caplog.records)


@pytest.mark.threads
def test_close_from_another_thread_is_done_by_the_loop_which_returns(pair) -> None:
    a, _ = pair
    r = Reactor()
    ran_on: list[int] = []
    parked = threading.Event()

    async def waiter() -> None:
        try:
            parked.set()
            await reactor.wait(reactor.WaitReadable(a.fileno()))
        finally:
            ran_on.append(threading.get_ident())

    r.spawn(waiter(), r.open_request(object(), a, "peer", a.fileno()))
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            r.serve_forever(poll_interval=None)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    assert parked.wait(10)
    r.close()  # the loop is in select(): woken, it returns and releases everything itself
    assert r.closed
    thread.join(10)
    assert not thread.is_alive() and errors == []
    assert ran_on == [thread.ident]  # the task's finally ran on the loop's thread
    assert len(r.requests) == 0


def test_close_from_a_callback_on_the_loop_takes_effect_when_the_turn_ends() -> None:
    r = Reactor()
    seen: list[bool] = []

    def close_then_look() -> None:
        r.close()
        seen.append(r.closed)  # the rest of this turn still runs on an open reactor

    r.call_soon(close_then_look)
    r.serve_forever(poll_interval=5)
    assert seen == [False] and r.closed


@pytest.mark.threads
def test_close_from_another_thread_waits_at_most_handover_timeout_for_a_busy_loop() -> None:
    r = Reactor()
    r.handover_timeout = 0.05
    returned = threading.Event()
    closed_when_returned: list[bool] = []

    def other() -> None:
        r.close()  # the loop is busy in busy(): close() gives up waiting, it does not raise
        closed_when_returned.append(r.closed)
        returned.set()

    def busy() -> None:
        thread = threading.Thread(target=other)
        thread.start()
        assert returned.wait(10)  # the loop stays in this callback until close() returned
        thread.join()

    r.call_soon(busy)
    r.serve_forever(poll_interval=5)  # returns after the busy turn: close() was asked for
    assert closed_when_returned == [False] and r.closed


@pytest.mark.threads
def test_call_and_wait_runs_the_callback_on_the_loops_thread() -> None:
    with Reactor() as r:
        ran_on: list[int] = []
        r.call_and_wait(lambda: ran_on.append(threading.get_ident()))  # not running: here
        assert ran_on == [threading.get_ident()]
        started = threading.Event()
        r.call_soon(started.set)
        thread = threading.Thread(target=r.serve_forever, args=(None,))
        thread.start()
        assert started.wait(10)
        assert r.call_and_wait(lambda: ran_on.append(threading.get_ident()))
        assert ran_on[1] == thread.ident
        r.shutdown()
        thread.join()


@pytest.mark.threads
def test_call_and_wait_gives_up_on_a_busy_loop_and_the_callback_runs_later() -> None:
    with Reactor() as r:
        r.handover_timeout = 0.05
        ran: list[str] = []
        outcome: list[bool] = []

        def other() -> None:
            outcome.append(r.call_and_wait(ran.append, "late"))

        def busy() -> None:
            thread = threading.Thread(target=other)
            thread.start()
            thread.join()  # the loop is busy until call_and_wait() has given up
            assert ran == []
            r.call_soon(r.shutdown)

        r.call_soon(busy)
        r.serve_forever(poll_interval=5)
        assert outcome == [False] and ran == ["late"]


# ------------------------------------------------------------------------ testing helpers
def test_fake_clock_moves_only_forward() -> None:
    clock = FakeClock(start=5.0)
    assert clock.now() == 5.0
    clock.advance(0)
    clock.advance(2.5)
    assert clock.now() == 7.5
    with pytest.raises(ValueError):
        clock.advance(-1)
    assert clock.now() == 7.5


def test_run_until_idle_counts_busy_turns(loop: Reactor) -> None:
    assert run_until_idle(loop) == 0
    loop.call_soon(lambda: loop.call_soon(lambda: None))
    assert run_until_idle(loop) == 2


def test_run_until_idle_gives_up_on_a_loop_that_never_idles(loop: Reactor) -> None:
    def forever() -> None:
        loop.call_soon(forever)

    loop.call_soon(forever)
    with pytest.raises(RuntimeError, match="still busy after 50 turns"):
        run_until_idle(loop, max_turns=50)


def test_monotonic_clock_is_the_default() -> None:
    with Reactor() as r:
        assert isinstance(r.clock, reactor.MonotonicClock)
        first = r.time()
        assert r.time() >= first


# ------------------------------------------------------------------------ waker, odd cases
def test_waker_wakes_a_selector_and_drains_every_pending_byte() -> None:
    from reactor.waker import Waker

    waker = Waker()
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(waker.fileno(), selectors.EVENT_READ)
            assert selector.select(0) == []
            for _ in range(3):
                waker.wake()
            assert len(selector.select(0)) == 1
            waker.drain()
            assert selector.select(0) == []
            waker.drain()  # nothing pending: harmless
            selector.unregister(waker.fileno())
    finally:
        waker.close()


def test_waker_wake_after_close_is_harmless() -> None:
    from reactor.waker import Waker

    waker = Waker()
    waker.close()
    waker.wake()
    waker.drain()


def test_waker_drain_stops_at_end_of_stream() -> None:
    from reactor.waker import Waker

    waker = Waker()
    try:
        waker.wake()
        waker._wsock.close()  # the write end gone: recv() returns b"" after the byte
        waker.drain()
    finally:
        waker.close()


def test_forget_after_close_is_harmless(pair) -> None:
    a, _ = pair
    r = Reactor()
    r.add_reader(a, lambda: None)
    r.close()
    r.forget(a.fileno())
    assert r.watched_for(a) == ""


def test_unregister_tolerates_a_server_whose_fileno_fails(loop: Reactor, pair) -> None:
    a, _ = pair

    class Closable:
        closed = False

        def fileno(self) -> int:
            if self.closed:
                raise ValueError("I/O operation on closed file")
            return a.fileno()

        def handle_request(self) -> None:  # pragma: no cover - nothing arrives
            pass

    server = Closable()
    loop.register(server)
    loop.forget(a.fileno())
    server.closed = True
    loop.unregister(server)
    assert loop.servers == ()


def test_service_actions_errors_are_logged_for_servers_without_handle_error(loop: Reactor,
                                                                           pair,
                                                                           caplog) -> None:
    a, _ = pair

    class NoHandleError:
        def fileno(self) -> int:
            return a.fileno()

        def handle_request(self) -> None:  # pragma: no cover - nothing arrives
            pass

        def service_actions(self) -> None:
            loop.shutdown()
            raise OSError("disk full")

    loop.register(NoHandleError())
    with caplog.at_level(logging.ERROR, logger="reactor"):
        loop.serve_forever(poll_interval=0)
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [OSError]


def test_statistics_of_a_closed_reactor_count_nothing() -> None:
    r = Reactor()
    r.call_soon(lambda: None)
    r.close()
    assert r.statistics() == {"requests": 0, "descriptors": 0, "timers": 0, "callbacks": 0,
                              "servers": 0}


def current_wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


def test_signal_handlers_make_the_c_level_handler_wake_the_loop(restore_sigusr1) -> None:
    # A signal that arrives after the loop's last bytecode but before select() blocks runs
    # no Python code until select() returns; only the wakeup fd can wake the loop then.
    before = current_wakeup_fd()
    with Reactor() as r:
        r.add_signal_handler(signal.SIGUSR1, lambda: None)
        ours = current_wakeup_fd()
        assert ours not in (before, -1)
        r.add_signal_handler(signal.SIGUSR2, lambda: None)
        r.remove_signal_handler(signal.SIGUSR1)
        assert current_wakeup_fd() == ours  # one handler is left
        r.remove_signal_handler(signal.SIGUSR2)
        assert current_wakeup_fd() == before
        r.add_signal_handler(signal.SIGUSR1, lambda: None)
    assert current_wakeup_fd() == before  # close() gives it back too


def test_a_signal_written_only_to_the_wakeup_fd_wakes_a_blocked_loop(restore_sigusr1) -> None:
    with Reactor() as r:
        log: list[str] = []
        r.add_signal_handler(signal.SIGUSR1, log.append, "signal")
        # What the C-level handler does when the Python one cannot run yet: one byte, the
        # signal number, into the wakeup fd; the Python handler runs once select() returns.
        os.write(current_wakeup_fd(), bytes([signal.SIGUSR1]))
        r.run_once(None)  # must not block
        python_level = signal.getsignal(signal.SIGUSR1)
        python_level(signal.SIGUSR1, None)  # the Python-level handler, now able to run
        for _ in range(3):
            r.run_once(None)
            if log:
                break
        assert log == ["signal"]


def test_the_monotonic_clock_reads_time_monotonic() -> None:
    import time
    clock = reactor.MonotonicClock()
    before = time.monotonic()
    now = clock.now()
    assert before <= now <= time.monotonic()


def test_watched_for_says_what_the_loop_watches_a_descriptor_for() -> None:
    a, b = socket.socketpair()
    with a, b, Reactor() as r:
        assert r.watched_for(a) == ""
        r.add_reader(a, lambda: None)
        assert r.watched_for(a.fileno()) == "read"
        r.add_writer(a, lambda: None)
        assert r.watched_for(a) == "read+write"
        r.remove_reader(a)
        assert r.watched_for(a) == "write"
        r.remove_writer(a)
        assert r.watched_for(a) == ""
        assert r.statistics()["descriptors"] == 0
