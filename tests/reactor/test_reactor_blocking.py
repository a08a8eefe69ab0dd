"""run_blocking: a coroutine's traps become blocking waits on the calling thread."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import reactor
from reactor import WaitReadable, WaitWritable, run_blocking



def test_returns_the_coroutines_result() -> None:
    async def work() -> str:
        return "value"

    assert run_blocking(work()) == "value"


def test_exceptions_propagate_to_the_caller() -> None:
    async def work() -> None:
        await reactor.checkpoint()
        raise LookupError("from the coroutine")

    with pytest.raises(LookupError, match="from the coroutine"):
        run_blocking(work())


def test_checkpoint_and_zero_sleep_return_at_once() -> None:
    async def work() -> int:
        await reactor.checkpoint()
        await reactor.sleep(0)
        await reactor.sleep(-1)
        return 3

    assert run_blocking(work()) == 3


def test_a_read_wait_returns_once_data_is_there(pair) -> None:
    a, b = pair
    b.send(b"ready")

    async def reader() -> bytes:
        await reactor.wait(WaitReadable(a.fileno(), timeout=10))
        return a.recv(100)

    assert run_blocking(reader()) == b"ready"


@pytest.mark.threads
def test_a_read_wait_blocks_until_another_thread_sends(pair) -> None:
    a, b = pair
    started = threading.Event()

    async def reader() -> bytes:
        started.set()
        await reactor.wait(WaitReadable(a.fileno()))  # no timeout: blocks
        return a.recv(100)

    thread = threading.Thread(target=lambda: (started.wait(10), b.send(b"late")))
    thread.start()
    try:
        assert run_blocking(reader()) == b"late"
    finally:
        thread.join()


def test_a_write_wait_returns_when_writable(pair) -> None:
    a, _ = pair

    async def writer() -> int:
        await reactor.wait(WaitWritable(a.fileno(), timeout=10))
        return a.send(b"out")

    assert run_blocking(writer()) == 3


def test_a_wait_whose_timeout_passes_raises_timeout_error_at_the_await(pair) -> None:
    a, _ = pair

    async def reader() -> str:
        try:
            await reactor.wait(WaitReadable(a.fileno(), timeout=0))
        except TimeoutError as exc:
            return f"caught: {exc}"
        return "no timeout"  # pragma: no cover

    result = run_blocking(reader())
    assert result.startswith("caught: ")
    assert f"descriptor {a.fileno()}" in result


def test_a_write_wait_on_a_full_socket_times_out(pair) -> None:
    a, _ = pair
    while True:
        try:
            a.send(b"x" * 65536)
        except BlockingIOError:
            break

    async def writer() -> None:
        await reactor.wait(WaitWritable(a.fileno(), timeout=0))

    with pytest.raises(TimeoutError):
        run_blocking(writer())


class Foreign:
    def __await__(self) -> Any:
        yield "foreign"


def test_an_unknown_trap_raises_type_error_inside_the_coroutine() -> None:
    async def work() -> str:
        try:
            await Foreign()
        except TypeError as exc:
            return str(exc)
        return "no error"  # pragma: no cover

    message = run_blocking(work())
    assert "not one of reactor's traps" in message and "'foreign'" in message


def test_an_unknown_trap_that_is_not_caught_propagates_type_error() -> None:
    async def work() -> None:
        await Foreign()

    with pytest.raises(TypeError):
        run_blocking(work())


def test_the_coroutine_can_carry_on_after_a_timeout(pair) -> None:
    a, b = pair

    async def reader() -> bytes:
        try:
            await reactor.wait(WaitReadable(a.fileno(), timeout=0))
        except TimeoutError:
            b.send(b"second try")
        await reactor.wait(WaitReadable(a.fileno(), timeout=10))
        return a.recv(100)

    assert run_blocking(reader()) == b"second try"


def test_starts_no_thread_and_leaves_no_descriptor(pair) -> None:
    a, b = pair
    b.send(b"x")
    before = threading.active_count()

    async def reader() -> None:
        for _ in range(3):
            await reactor.wait(WaitReadable(a.fileno(), timeout=10))
        await reactor.wait(WaitWritable(a.fileno(), timeout=10))

    run_blocking(reader())
    assert threading.active_count() == before
    # (the autouse leak check verifies that every per-wait selector was closed)
