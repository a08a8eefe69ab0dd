"""Tasks on the reactor: traps, fake-clock timeouts, cancellation, errors, request entries."""

from __future__ import annotations

import logging
import os
import selectors
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SELECTOR_CLASSES

import reactor
from reactor import Cancelled, Reactor, Stage, WaitReadable, WaitWritable
from reactor.testing import FakeClock, run_until_idle






def fill(sock: socket.socket) -> None:
    chunk = b"x" * 65536
    while True:
        try:
            sock.send(chunk)
        except BlockingIOError:
            return


def drain(sock: socket.socket) -> None:
    while True:
        try:
            if not sock.recv(1 << 20):
                return
        except BlockingIOError:
            return


def new_entry(r: Reactor, fd: int = -1) -> reactor.RequestEntry:
    return r.open_request("server", None, ("127.0.0.1", 40000), fd)


# ------------------------------------------------------------------------ basics
def test_a_spawned_task_starts_on_the_next_turn_and_keeps_its_result(loop: Reactor) -> None:
    log: list[str] = []

    async def work() -> str:
        log.append("ran")
        return "result"

    task = loop.spawn(work())
    assert isinstance(task, reactor.Task)
    assert log == [] and not task.done
    assert "runnable" in repr(task)
    loop.run_once(0)
    assert log == ["ran"]
    assert task.done and task.result == "result" and task.error is None
    assert "done" in repr(task)


def test_on_done_is_called_with_the_finished_task(loop: Reactor) -> None:
    finished: list[reactor.Task] = []

    async def work() -> int:
        await reactor.checkpoint()
        return 7

    task = loop.spawn(work(), on_done=finished.append)
    run_until_idle(loop)
    assert finished == [task] and task.result == 7


def test_checkpoint_lets_every_other_runnable_task_go_first(loop: Reactor) -> None:
    log: list[str] = []

    async def worker(name: str) -> None:
        for n in range(3):
            log.append(f"{name}{n}")
            await reactor.checkpoint()

    loop.spawn(worker("a"))
    loop.spawn(worker("b"))
    run_until_idle(loop)
    assert log == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_sleep_zero_is_a_checkpoint(fake_loop: Reactor) -> None:
    log: list[str] = []

    async def worker(name: str) -> None:
        log.append(f"{name}-before")
        await reactor.sleep(0)
        log.append(f"{name}-after")

    fake_loop.spawn(worker("a"))
    fake_loop.spawn(worker("b"))
    run_until_idle(fake_loop)
    assert log == ["a-before", "b-before", "a-after", "b-after"]
    assert fake_loop.statistics()["timers"] == 0


def test_negative_sleep_does_not_wait(fake_loop: Reactor) -> None:
    async def work() -> str:
        await reactor.sleep(-3)
        return "done"

    task = fake_loop.spawn(work())
    run_until_idle(fake_loop)
    assert task.result == "done"


def test_sleep_waits_for_the_fake_clock(fake_loop: Reactor, clock: FakeClock) -> None:
    async def work() -> float:
        start = fake_loop.time()
        await reactor.sleep(30)
        return fake_loop.time() - start

    entry = new_entry(fake_loop)
    task = fake_loop.spawn(work(), entry)
    run_until_idle(fake_loop)
    assert entry.stage is Stage.WAITING and entry.state == "sleeping"
    assert "parked" in repr(task)
    clock.advance(29.9)
    run_until_idle(fake_loop)
    assert not task.done
    clock.advance(0.1)
    run_until_idle(fake_loop)
    assert task.result == 30.0


def test_wait_readable_resumes_when_data_arrives(loop: Reactor, pair) -> None:
    a, b = pair

    async def reader() -> bytes:
        await reactor.wait(WaitReadable(a.fileno()))
        return a.recv(100)

    entry = new_entry(loop, a.fileno())
    task = loop.spawn(reader(), entry)
    run_until_idle(loop)
    assert not task.done
    assert entry.stage is Stage.WAITING and entry.state == "reading"
    assert entry.waiting_for == WaitReadable(a.fileno())
    b.send(b"hello")
    loop.run_once(1)
    assert task.result == b"hello"
    assert entry.stage is Stage.CLOSED and len(loop.requests) == 0


def test_wait_writable_resumes_when_the_peer_makes_room(loop: Reactor, pair) -> None:
    a, b = pair
    fill(a)

    async def writer() -> int:
        await reactor.wait(WaitWritable(a.fileno()))
        return a.send(b"more")

    entry = new_entry(loop, a.fileno())
    task = loop.spawn(writer(), entry)
    run_until_idle(loop)
    assert entry.state == "writing" and not task.done
    drain(b)
    for _ in range(10):
        loop.run_once(1)
        if task.done:
            break
    assert task.result == 4


def test_a_finished_task_releases_its_descriptor_interest(loop: Reactor, pair) -> None:
    a, b = pair

    async def reader() -> None:
        await reactor.wait(WaitReadable(a.fileno()))

    loop.spawn(reader())
    run_until_idle(loop)
    assert loop.statistics()["descriptors"] == 1
    b.send(b"x")
    loop.run_once(1)
    loop.run_once(0)  # the lazily kept interest is dropped at its next event
    assert loop.statistics()["descriptors"] == 0


def test_two_tasks_wait_on_two_descriptors_independently(loop: Reactor) -> None:
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        results: list[bytes] = []

        async def reader(sock: socket.socket) -> None:
            await reactor.wait(WaitReadable(sock.fileno()))
            results.append(sock.recv(10))

        for a, _ in pairs:
            a.setblocking(False)
            loop.spawn(reader(a))
        run_until_idle(loop)
        pairs[1][1].send(b"second")
        loop.run_once(1)
        assert results == [b"second"]
        pairs[0][1].send(b"first")
        loop.run_once(1)
        assert results == [b"second", b"first"]
    finally:
        for a, b in pairs:
            loop.forget(a.fileno())
            a.close()
            b.close()


def test_waiting_on_another_trap_releases_the_previous_descriptor(loop: Reactor, pair) -> None:
    a, b = pair
    log: list[str] = []

    async def work() -> None:
        try:
            await reactor.wait(WaitReadable(a.fileno(), timeout=0))
        except TimeoutError:
            log.append("timed out")
        await reactor.sleep(3600)

    task = loop.spawn(work())
    for _ in range(10):
        loop.run_once(0)
        if log:
            break
    assert log == ["timed out"]
    b.send(b"x")
    run_until_idle(loop)  # the old reader slot was cleared: the event wakes nobody
    assert not task.done and task.trap == reactor.Sleep(3600)
    loop.cancel(task)
    run_until_idle(loop)
    assert task.done


# ------------------------------------------------------------------------ timeouts
def test_a_read_wait_times_out_at_its_deadline(fake_loop: Reactor, clock: FakeClock,
                                               pair) -> None:
    a, _ = pair

    async def reader() -> str:
        try:
            await reactor.wait(WaitReadable(a.fileno(), timeout=5))
        except TimeoutError as exc:
            return str(exc)
        return "no timeout"  # pragma: no cover

    task = fake_loop.spawn(reader())
    run_until_idle(fake_loop)
    clock.advance(4.999)
    run_until_idle(fake_loop)
    assert not task.done
    clock.advance(0.001)
    fake_loop.run_once(0)
    assert task.done
    assert "did not send data within 5 s" in task.result


def test_many_waits_time_out_each_at_its_own_deadline(fake_loop: Reactor,
                                                      clock: FakeClock) -> None:
    """Wait deadlines of many tasks (equal ones too) share one loop timer; each task still
    times out at its own deadline, in order, and a task whose data came is not timed out."""
    socks = [socket.socketpair() for _ in range(6)]
    timeouts = [30, 10, 20, 10, 5, 20]
    log: list[int] = []
    timed_out: list[set[int]] = []

    async def reader(index: int) -> None:
        try:
            await reactor.wait(WaitReadable(socks[index][0].fileno(), timeout=timeouts[index]))
        except TimeoutError:
            log.append(index)

    try:
        tasks = [fake_loop.spawn(reader(i)) for i in range(len(socks))]
        run_until_idle(fake_loop)
        assert fake_loop.statistics()["timers"] == len(socks)
        socks[2][1].send(b"x")  # task 2 gets its data: it ends without timing out
        start = clock.now()
        for moment in (4.9, 5, 9.9, 10, 20, 29.9, 30):
            clock.advance(start + moment - clock.now())
            run_until_idle(fake_loop)
            timed_out.append(set(log))
            log.clear()
        # equal deadlines time out in the same turn, in no promised order
        assert timed_out == [set(), {4}, set(), {1, 3}, {5}, set(), {0}]
        assert all(task.done for task in tasks)
        assert fake_loop.statistics()["timers"] == 0
    finally:
        for pair_ in socks:
            for sock in pair_:
                fake_loop.forget(sock.fileno())
                sock.close()


def test_ended_tasks_do_not_pile_up_behind_a_long_wait_deadline(fake_loop: Reactor,
                                                                pair) -> None:
    """Connections that come and go while one waits for 300 s: the deadlines of the ended
    ones are dropped (the heap is rebuilt), not kept until their time comes."""
    a, b = pair

    async def idle() -> None:
        await reactor.wait(WaitReadable(a.fileno(), timeout=300))

    async def brief(sock: socket.socket) -> None:
        await reactor.wait(WaitReadable(sock.fileno(), timeout=300))

    fake_loop.spawn(idle())
    for _ in range(500):
        ours, peer = socket.socketpair()
        with ours, peer:
            fake_loop.spawn(brief(ours))
            run_until_idle(fake_loop)
            peer.send(b"x")
            run_until_idle(fake_loop)
            fake_loop.forget(ours.fileno())
    assert fake_loop.statistics()["timers"] == 1
    assert len(fake_loop._deadlines or ()) <= 2 * 64 + 2  # white box: what the heap holds


def test_a_write_wait_times_out_when_the_peer_reads_nothing(fake_loop: Reactor, clock: FakeClock,
                                                            pair) -> None:
    a, _ = pair
    fill(a)

    async def writer() -> None:
        await reactor.wait(WaitWritable(a.fileno(), timeout=2))

    task = fake_loop.spawn(writer())
    run_until_idle(fake_loop)
    clock.advance(2)
    fake_loop.run_once(0)
    assert isinstance(task.error, TimeoutError)
    assert "did not read what was sent within 2 s" in str(task.error)


def test_an_unhandled_timeout_is_logged_and_ends_the_request(fake_loop: Reactor, clock: FakeClock,
                                                             pair, caplog) -> None:
    a, _ = pair

    async def reader() -> None:
        await reactor.wait(WaitReadable(a.fileno(), timeout=1))

    entry = new_entry(fake_loop, a.fileno())
    fake_loop.spawn(reader(), entry)
    run_until_idle(fake_loop)
    clock.advance(1)
    with caplog.at_level(logging.ERROR, logger="reactor"):
        fake_loop.run_once(0)
    assert len(fake_loop.requests) == 0
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [TimeoutError]


def test_each_wait_gets_its_own_full_timeout(fake_loop: Reactor, clock: FakeClock, pair) -> None:
    a, b = pair
    got: list[bytes] = []

    async def reader() -> None:
        while True:
            await reactor.wait(WaitReadable(a.fileno(), timeout=5))
            got.append(a.recv(10))

    task = fake_loop.spawn(reader())
    run_until_idle(fake_loop)
    clock.advance(3)
    b.send(b"1")
    fake_loop.run_once(0)
    assert got == [b"1"]
    clock.advance(4)  # 7 s after start, 4 s into the second wait: no timeout
    run_until_idle(fake_loop)
    assert not task.done
    clock.advance(1)  # 5 s into the second wait
    run_until_idle(fake_loop)
    assert isinstance(task.error, TimeoutError)


def test_a_shorter_timeout_after_a_longer_one_is_honoured(fake_loop: Reactor, clock: FakeClock,
                                                          pair) -> None:
    a, b = pair

    async def reader() -> None:
        await reactor.wait(WaitReadable(a.fileno(), timeout=100))
        a.recv(10)
        await reactor.wait(WaitReadable(a.fileno(), timeout=2))

    task = fake_loop.spawn(reader())
    run_until_idle(fake_loop)
    b.send(b"x")
    fake_loop.run_once(0)
    clock.advance(2)
    run_until_idle(fake_loop)
    assert isinstance(task.error, TimeoutError)


def test_a_wait_without_timeout_after_one_with_never_times_out(fake_loop: Reactor,
                                                               clock: FakeClock, pair) -> None:
    a, b = pair

    async def reader() -> None:
        await reactor.wait(WaitReadable(a.fileno(), timeout=1))
        a.recv(10)
        await reactor.sleep(50)
        await reactor.wait(WaitReadable(a.fileno()))

    task = fake_loop.spawn(reader())
    run_until_idle(fake_loop)
    b.send(b"x")
    fake_loop.run_once(0)
    clock.advance(50)
    run_until_idle(fake_loop)
    clock.advance(1000)
    run_until_idle(fake_loop)
    assert not task.done
    assert task.trap == WaitReadable(a.fileno())
    fake_loop.cancel(task)
    run_until_idle(fake_loop)
    assert isinstance(task.error, Cancelled)


def test_a_task_that_finishes_early_leaves_no_timer_behind(fake_loop: Reactor, pair) -> None:
    a, b = pair

    async def reader() -> None:
        await reactor.wait(WaitReadable(a.fileno(), timeout=30))

    fake_loop.spawn(reader())
    run_until_idle(fake_loop)
    assert fake_loop.statistics()["timers"] == 1
    b.send(b"x")
    fake_loop.run_once(0)
    assert fake_loop.statistics()["timers"] == 0


def test_timeout_zero_times_out_on_the_next_turn_without_data(fake_loop: Reactor, pair) -> None:
    a, _ = pair

    async def reader() -> None:
        await reactor.wait(WaitReadable(a.fileno(), timeout=0))

    task = fake_loop.spawn(reader())
    run_until_idle(fake_loop)
    assert isinstance(task.error, TimeoutError)


# ------------------------------------------------------------------------ cancellation
def test_cancel_throws_cancelled_at_the_await_and_finally_runs(loop: Reactor, pair,
                                                               caplog) -> None:
    a, b = pair
    log: list[str] = []

    async def reader() -> None:
        try:
            await reactor.wait(WaitReadable(a.fileno()))
        except Cancelled:
            log.append("cancelled")
            raise
        finally:
            log.append("finally")

    entry = new_entry(loop, a.fileno())
    task = loop.spawn(reader(), entry)
    run_until_idle(loop)
    with caplog.at_level(logging.DEBUG, logger="reactor"):
        loop.cancel(task)
        run_until_idle(loop)
    assert log == ["cancelled", "finally"]
    assert task.done and isinstance(task.error, Cancelled)
    assert len(loop.requests) == 0
    assert caplog.records == []  # a cancellation is not an error
    b.send(b"x")  # nobody waits any more: the lazily kept interest goes at this event
    run_until_idle(loop)
    assert loop.statistics()["descriptors"] == 0


def test_cancelled_is_not_caught_by_except_exception() -> None:
    assert not issubclass(Cancelled, Exception)
    assert issubclass(Cancelled, BaseException)


def test_cancel_while_sleeping_stops_the_sleep(fake_loop: Reactor, clock: FakeClock) -> None:
    log: list[str] = []

    async def sleeper() -> None:
        try:
            await reactor.sleep(1000)
            log.append("woke")  # pragma: no cover
        finally:
            log.append("finally")

    task = fake_loop.spawn(sleeper())
    run_until_idle(fake_loop)
    assert fake_loop.statistics()["timers"] == 1
    fake_loop.cancel(task)
    run_until_idle(fake_loop)
    assert log == ["finally"] and isinstance(task.error, Cancelled)
    assert fake_loop.statistics()["timers"] == 0
    clock.advance(1000)
    run_until_idle(fake_loop)
    assert log == ["finally"]


def test_cancel_before_the_task_starts_runs_none_of_its_body(loop: Reactor) -> None:
    log: list[str] = []

    async def work() -> None:
        log.append("body")  # pragma: no cover

    entry = new_entry(loop)
    task = loop.spawn(work(), entry)
    loop.cancel(task)
    run_until_idle(loop)
    assert log == [] and task.done and isinstance(task.error, Cancelled)
    assert len(loop.requests) == 0


def test_cancel_of_a_running_task_is_delivered_at_its_next_suspension(loop: Reactor) -> None:
    log: list[str] = []
    holder: list[reactor.Task] = []

    async def work() -> None:
        loop.cancel(holder[0])  # cancel ourselves while running
        log.append("still running")
        try:
            await reactor.checkpoint()
        except Cancelled:
            log.append("cancelled at the await")
            raise

    holder.append(loop.spawn(work()))
    run_until_idle(loop)
    assert log == ["still running", "cancelled at the await"]


def test_a_task_may_survive_cancellation_and_is_cancelled_once(loop: Reactor, pair) -> None:
    a, b = pair
    log: list[str] = []

    async def stubborn() -> bytes:
        try:
            await reactor.wait(WaitReadable(a.fileno()))
        except Cancelled:
            log.append("ignored")
        await reactor.wait(WaitReadable(a.fileno()))
        return a.recv(10)

    task = loop.spawn(stubborn())
    run_until_idle(loop)
    loop.cancel(task)
    run_until_idle(loop)
    assert log == ["ignored"] and not task.done
    b.send(b"data")
    loop.run_once(1)
    assert task.result == b"data"


def test_cancelling_twice_delivers_one_cancellation(loop: Reactor) -> None:
    log: list[str] = []

    async def stubborn() -> str:
        for _ in range(3):
            try:
                await reactor.sleep(100)
            except Cancelled:
                log.append("cancelled")
        return "done"

    task = loop.spawn(stubborn())
    run_until_idle(loop)
    loop.cancel(task)
    loop.cancel(task)
    run_until_idle(loop)
    assert log == ["cancelled"]
    loop.cancel(task)  # clean up: the remaining sleeps are cancelled one by one
    run_until_idle(loop)
    loop.cancel(task)
    run_until_idle(loop)
    assert task.result == "done"


def test_cancelling_a_finished_task_does_nothing(loop: Reactor) -> None:
    async def work() -> int:
        return 1

    task = loop.spawn(work())
    run_until_idle(loop)
    loop.cancel(task)
    assert run_until_idle(loop) == 0
    assert task.result == 1 and task.error is None


def test_a_cancelled_read_wait_does_not_time_out_later(fake_loop: Reactor, clock: FakeClock,
                                                       pair) -> None:
    a, _ = pair
    log: list[str] = []

    async def reader() -> None:
        try:
            await reactor.wait(WaitReadable(a.fileno(), timeout=5))
        except Cancelled:
            log.append("cancelled")
        await reactor.sleep(100)
        log.append("slept")

    task = fake_loop.spawn(reader())
    run_until_idle(fake_loop)
    fake_loop.cancel(task)
    run_until_idle(fake_loop)
    clock.advance(5)
    run_until_idle(fake_loop)
    assert log == ["cancelled"] and not task.done
    clock.advance(95)
    run_until_idle(fake_loop)
    assert log == ["cancelled", "slept"] and task.done and task.error is None


# ------------------------------------------------------------------------ errors
class Unknown:
    def __await__(self) -> Any:
        yield "not a trap"


def test_awaiting_something_the_reactor_cannot_wait_for_raises_type_error(loop: Reactor) -> None:
    async def work() -> str:
        try:
            await Unknown()
        except TypeError as exc:
            return str(exc)
        return "no error"  # pragma: no cover

    entry = new_entry(loop)
    task = loop.spawn(work(), entry)
    run_until_idle(loop)
    assert "which the reactor cannot wait for" in task.result
    assert "'not a trap'" in task.result


def test_an_asyncio_future_is_refused_with_type_error(loop: Reactor) -> None:
    import asyncio
    aio = asyncio.new_event_loop()
    try:
        future = aio.create_future()

        async def work() -> None:
            await future

        task = loop.spawn(work())
        run_until_idle(loop)
        assert isinstance(task.error, TypeError)
        assert "Future" in str(task.error)
    finally:
        aio.close()


def test_an_exception_in_a_task_is_logged_and_the_loop_keeps_running(loop: Reactor,
                                                                    caplog) -> None:
    log: list[str] = []

    async def bad() -> None:
        await reactor.checkpoint()
        raise ValueError("broken handler")

    async def good() -> None:
        await reactor.checkpoint()
        await reactor.checkpoint()
        log.append("good finished")

    entry = new_entry(loop)
    bad_task = loop.spawn(bad(), entry)
    loop.spawn(good())
    with caplog.at_level(logging.ERROR, logger="reactor"):
        run_until_idle(loop)
    assert log == ["good finished"]
    assert isinstance(bad_task.error, ValueError)
    assert len(loop.requests) == 0
    [record] = [r for r in caplog.records if r.name == "reactor"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[1] is bad_task.error
    assert "failed" in record.getMessage()


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_leave_run_once(loop: Reactor,
                                                           exc_type: type) -> None:
    finished: list[reactor.Task] = []

    async def work() -> None:
        await reactor.checkpoint()
        raise exc_type()

    entry = new_entry(loop)
    task = loop.spawn(work(), entry, on_done=finished.append)
    loop.run_once(0)
    with pytest.raises(exc_type):
        loop.run_once(0)
    assert task.done and finished == [task]
    assert len(loop.requests) == 0


def test_an_exception_in_on_done_is_logged_and_the_loop_goes_on(
        loop: Reactor, caplog: pytest.LogCaptureFixture) -> None:
    async def work() -> None:
        pass

    def on_done(task: reactor.Task) -> None:
        raise RuntimeError("on_done broke")

    later: list[str] = []
    loop.spawn(work(), on_done=on_done)
    loop.call_soon(later.append, "next callback")
    with caplog.at_level(logging.ERROR, logger="reactor"):
        loop.run_once(0)
        loop.run_once(0)
    assert later == ["next callback"]
    assert any("completion callback" in r.getMessage() and r.exc_info
               and "on_done broke" in str(r.exc_info[1]) for r in caplog.records)


# ------------------------------------------------------------------------ request entries
def test_the_entry_follows_its_task_through_every_stage(fake_loop: Reactor, clock: FakeClock,
                                                        pair) -> None:
    a, b = pair
    seen: list[tuple[Stage, str]] = []
    entry = new_entry(fake_loop, a.fileno())

    async def handler() -> None:
        seen.append((entry.stage, entry.state))
        await reactor.wait(WaitReadable(a.fileno()))
        seen.append((entry.stage, entry.state))
        a.recv(10)
        await reactor.sleep(1)
        seen.append((entry.stage, entry.state))

    assert entry.stage is Stage.ACCEPTED
    task = fake_loop.spawn(handler(), entry)
    assert entry.task is task and task.entry is entry
    run_until_idle(fake_loop)
    assert seen == [(Stage.RUNNING, "handling")]
    assert entry.stage is Stage.WAITING and entry.state == "reading"
    assert list(fake_loop.requests) == [entry]
    b.send(b"x")
    fake_loop.run_once(0)
    assert entry.stage is Stage.WAITING and entry.state == "sleeping"
    assert isinstance(entry.waiting_for, reactor.Sleep)
    clock.advance(1)
    fake_loop.run_once(0)
    assert seen[1:] == [(Stage.RUNNING, "handling"), (Stage.RUNNING, "handling")]
    assert entry.stage is Stage.CLOSED and entry.waiting_for is None
    assert len(fake_loop.requests) == 0


def test_the_entry_repr_while_parked(loop: Reactor, pair) -> None:
    a, _ = pair

    async def reader() -> None:
        await reactor.wait(WaitReadable(a.fileno()))

    entry = new_entry(loop, a.fileno())
    task = loop.spawn(reader(), entry)
    run_until_idle(loop)
    assert repr(entry) == f"<RequestEntry #{entry.id} WAITING reading fd={a.fileno()} from 127.0.0.1:40000>"
    loop.cancel(task)
    run_until_idle(loop)


def test_entries_leave_the_table_whatever_way_their_task_ends(loop: Reactor) -> None:
    async def ok() -> None:
        await reactor.checkpoint()

    async def fails() -> None:
        raise OSError("gone")

    async def parked() -> None:
        await reactor.sleep(1000)

    entries = [new_entry(loop) for _ in range(3)]
    loop.spawn(ok(), entries[0])
    loop.spawn(fails(), entries[1])
    cancelled = loop.spawn(parked(), entries[2])
    logging.getLogger("reactor").disabled = True
    try:
        run_until_idle(loop)
        assert list(loop.requests) == [entries[2]]
        loop.cancel(cancelled)
        run_until_idle(loop)
    finally:
        logging.getLogger("reactor").disabled = False
    assert len(loop.requests) == 0
    assert all(e.stage is Stage.CLOSED for e in entries)


def test_statistics_count_requests_of_spawned_tasks(loop: Reactor) -> None:
    async def parked() -> None:
        await reactor.sleep(1000)

    tasks = [loop.spawn(parked(), new_entry(loop)) for _ in range(5)]
    run_until_idle(loop)
    assert loop.statistics()["requests"] == 5
    assert loop.statistics()["timers"] == 5
    assert repr(loop) == "<Reactor idle servers=0 requests=5>"
    for task in tasks:
        loop.cancel(task)
    run_until_idle(loop)
    assert loop.statistics()["requests"] == 0
    assert loop.statistics()["timers"] == 0


def test_trap_objects_are_small_frozen_values() -> None:
    trap = WaitReadable(5, 1.5)
    assert (trap.fd, trap.timeout) == (5, 1.5)
    assert WaitWritable(5).timeout is None
    assert trap == WaitReadable(5, 1.5) and trap != WaitWritable(5, 1.5)
    with pytest.raises(AttributeError):
        trap.fd = 6  # type: ignore[misc]


def test_waiting_on_a_closed_descriptor_fails_the_task_not_the_loop(loop: Reactor) -> None:
    a, b = socket.socketpair()
    fd = a.fileno()
    a.close()  # nothing opens a descriptor below, so the number stays unused
    try:
        async def bad() -> None:
            await reactor.wait(WaitReadable(fd))
            os.fstat(fd)  # woken without an error (poll's POLLNVAL): the next use fails

        log: list[str] = []
        task = loop.spawn(bad())
        loop.call_later(0, log.append, "the loop still runs")
        logging.getLogger("reactor").disabled = True
        try:
            for _ in range(5):
                loop.run_once(0)
        finally:
            logging.getLogger("reactor").disabled = False
        assert task.done and isinstance(task.error, OSError)
        assert log == ["the loop still runs"]
    finally:
        loop.forget(fd)
        b.close()


# ------------------------------------------------------------------------ at_step_end
def test_at_step_end_outside_a_task_runs_at_once(loop: Reactor) -> None:
    log: list[str] = []
    loop.at_step_end(lambda: log.append("now"))
    assert log == ["now"]


def test_at_step_end_inside_a_task_runs_when_the_task_suspends(loop: Reactor) -> None:
    log: list[str] = []

    async def work() -> None:
        loop.at_step_end(lambda: log.append("step end"))
        log.append("still in the step")
        await reactor.checkpoint()
        log.append("next step")
        loop.at_step_end(lambda: log.append("end at finish"))

    loop.spawn(work())
    loop.call_soon(log.append, "other callback")
    loop.run_once(0)
    assert log == ["still in the step", "step end", "other callback"]
    run_until_idle(loop)
    assert log[3:] == ["next step", "end at finish"]


def test_at_step_end_runs_even_when_the_step_raises(loop: Reactor) -> None:
    log: list[str] = []

    async def work() -> None:
        loop.at_step_end(lambda: log.append("step end"))
        raise LookupError("boom")

    task = loop.spawn(work())
    logging.getLogger("reactor").disabled = True
    try:
        run_until_idle(loop)
    finally:
        logging.getLogger("reactor").disabled = False
    assert log == ["step end"] and isinstance(task.error, LookupError)


def test_an_eager_task_runs_its_first_step_at_once(loop: Reactor) -> None:
    steps: list[str] = []

    async def request(name: str) -> None:
        steps.append(f"{name} started")
        await reactor.checkpoint()
        steps.append(f"{name} resumed")

    eager = loop.spawn(request("eager"), eager=True)
    lazy = loop.spawn(request("lazy"))
    assert steps == ["eager started"]  # up to its first suspension, before spawn() returned
    run_until_idle(loop)
    assert steps == ["eager started", "eager resumed", "lazy started", "lazy resumed"]
    assert eager.done and lazy.done


def test_a_task_spawned_eagerly_from_inside_a_task_waits_for_its_turn(loop: Reactor) -> None:
    steps: list[str] = []

    async def child() -> None:
        steps.append("child")

    async def parent() -> None:
        loop.spawn(child(), eager=True)  # a task is running: no nesting, the ready queue
        steps.append("parent")

    loop.spawn(parent())
    run_until_idle(loop)
    assert steps == ["parent", "child"]
