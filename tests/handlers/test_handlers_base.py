"""BaseRequestHandler: the standard library's lifecycle for `def` and `async def` handlers,
and `deferred_start()` handing an async handler's coroutine to its caller."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import reactor
from handlers import BaseRequestHandler, DeferredStart, deferred_start
from reactor import Reactor
from reactor.testing import run_until_idle


class Server:
    """The little of a server a handler may use."""

    def handle_error(self, request: Any, client_address: Any) -> None:  # pragma: no cover
        raise AssertionError("not expected")


SERVER = Server()


def make_sync(log: list[str], fail_in: str | None = None) -> type[BaseRequestHandler]:
    class Handler(BaseRequestHandler):
        def setup(self) -> None:
            log.append(f"setup {self.request} {self.client_address}")
            if fail_in == "setup":
                raise ValueError("setup failed")

        def handle(self) -> None:
            log.append("handle")
            if fail_in == "handle":
                raise ValueError("handle failed")

        def finish(self) -> None:
            log.append("finish")
            if fail_in == "finish":
                raise ValueError("finish failed")

    return Handler


def make_async(log: list[str], fail_in: str | None = None, async_setup: bool = True,
               async_finish: bool = True) -> type[BaseRequestHandler]:
    class Handler(BaseRequestHandler):
        if async_setup:
            async def setup(self) -> None:
                await reactor.checkpoint()
                log.append(f"setup {self.request} {self.client_address}")
                if fail_in == "setup":
                    raise ValueError("setup failed")
        else:
            def setup(self) -> None:
                log.append(f"setup {self.request} {self.client_address}")
                if fail_in == "setup":
                    raise ValueError("setup failed")

        async def handle(self) -> None:
            await reactor.checkpoint()
            log.append("handle")
            if fail_in == "handle":
                raise ValueError("handle failed")

        if async_finish:
            async def finish(self) -> None:
                await reactor.checkpoint()
                log.append("finish")
                if fail_in == "finish":
                    raise ValueError("finish failed")
        else:
            def finish(self) -> None:
                log.append("finish")
                if fail_in == "finish":
                    raise ValueError("finish failed")

        async def _wait_output_sent(self) -> None:
            log.append("output sent")

    return Handler


# ------------------------------------------------------------------------ classic handlers
def test_classic_handler_runs_setup_handle_finish_inside_the_constructor() -> None:
    log: list[str] = []
    handler = make_sync(log)("req", ("1.2.3.4", 5), SERVER)
    assert log == ["setup req ('1.2.3.4', 5)", "handle", "finish"]
    assert (handler.request, handler.client_address, handler.server) == (
        "req", ("1.2.3.4", 5), SERVER)
    assert handler.reactor is None


def test_classic_handler_skips_finish_when_setup_raises() -> None:
    log: list[str] = []
    with pytest.raises(ValueError, match="setup failed"):
        make_sync(log, "setup")("req", "peer", SERVER)
    assert log == ["setup req peer"]


def test_classic_handler_runs_finish_when_handle_raises() -> None:
    log: list[str] = []
    with pytest.raises(ValueError, match="handle failed"):
        make_sync(log, "handle")("req", "peer", SERVER)
    assert log == ["setup req peer", "handle", "finish"]


def test_classic_handler_propagates_an_error_from_finish() -> None:
    log: list[str] = []
    with pytest.raises(ValueError, match="finish failed"):
        make_sync(log, "finish")("req", "peer", SERVER)
    assert log == ["setup req peer", "handle", "finish"]


def test_the_base_class_does_nothing_by_default() -> None:
    handler = BaseRequestHandler("req", "peer", SERVER)
    assert handler.request == "req"
    assert BaseRequestHandler.handle_is_async is False


def test_handle_is_async_is_computed_for_each_subclass() -> None:
    sync_cls = make_sync([])
    async_cls = make_async([])
    assert sync_cls.handle_is_async is False
    assert async_cls.handle_is_async is True

    class BackToSync(async_cls):  # type: ignore[valid-type,misc]
        def handle(self) -> None:
            pass

    class InheritsAsync(async_cls):  # type: ignore[valid-type,misc]
        pass

    assert BackToSync.handle_is_async is False
    assert InheritsAsync.handle_is_async is True


# ------------------------------------------------------------------------ async, no reactor
@pytest.mark.parametrize("async_setup", [True, False], ids=["async-setup", "sync-setup"])
@pytest.mark.parametrize("async_finish", [True, False], ids=["async-finish", "sync-finish"])
def test_async_handler_outside_a_reactor_runs_to_completion_in_the_constructor(
        async_setup: bool, async_finish: bool) -> None:
    log: list[str] = []
    handler = make_async(log, async_setup=async_setup, async_finish=async_finish)(
        "req", "peer", SERVER)
    assert log == ["setup req peer", "handle", "finish", "output sent"]
    assert handler.reactor is None


def test_async_handler_skips_finish_when_setup_raises() -> None:
    log: list[str] = []
    with pytest.raises(ValueError, match="setup failed"):
        make_async(log, "setup")("req", "peer", SERVER)
    assert log == ["setup req peer"]


@pytest.mark.parametrize("async_finish", [True, False])
def test_async_handler_runs_finish_and_flushes_output_when_handle_raises(
        async_finish: bool) -> None:
    log: list[str] = []
    with pytest.raises(ValueError, match="handle failed"):
        make_async(log, "handle", async_finish=async_finish)("req", "peer", SERVER)
    assert log == ["setup req peer", "handle", "finish", "output sent"]


def test_async_handler_flushes_output_even_when_finish_raises() -> None:
    log: list[str] = []
    with pytest.raises(ValueError, match="finish failed"):
        make_async(log, "finish")("req", "peer", SERVER)
    assert log == ["setup req peer", "handle", "finish", "output sent"]


# ------------------------------------------------------------------------ deferred_start
def test_deferred_start_hands_the_coroutine_to_the_caller(loop: Reactor) -> None:
    log: list[str] = []
    cls = make_async(log)
    entry = loop.open_request(SERVER, "req", "peer")
    with deferred_start(loop, entry) as slot:
        handler = cls("req", "peer", SERVER)
    assert isinstance(slot, DeferredStart)
    assert log == []  # nothing ran yet
    assert slot.handler is handler
    assert slot.reactor is loop and slot.entry is entry
    assert handler.reactor is loop
    assert inspect.iscoroutine(slot.coroutine)
    task = loop.spawn(slot.coroutine, entry)
    run_until_idle(loop)
    assert log == ["setup req peer", "handle", "finish", "output sent"]
    assert task.done and task.error is None
    assert len(loop.requests) == 0


def test_errors_of_a_deferred_handler_reach_whoever_runs_the_coroutine() -> None:
    log: list[str] = []
    with deferred_start("some reactor") as slot:
        make_async(log, "handle")("req", "peer", SERVER)
    with pytest.raises(ValueError, match="handle failed"):
        reactor.run_blocking(slot.coroutine)
    assert log == ["setup req peer", "handle", "finish", "output sent"]


def test_a_classic_handler_inside_deferred_start_runs_at_once() -> None:
    log: list[str] = []
    with deferred_start("some reactor") as slot:
        handler = make_sync(log)("req", "peer", SERVER)
    assert log == ["setup req peer", "handle", "finish"]
    assert slot.handler is None and slot.coroutine is None
    assert handler.reactor is None


def test_only_the_first_async_handler_of_a_block_is_deferred() -> None:
    first_log: list[str] = []
    second_log: list[str] = []
    with deferred_start("some reactor") as slot:
        first = make_async(first_log)("one", "peer", SERVER)
        second = make_async(second_log)("two", "peer", SERVER)
    assert slot.handler is first
    assert first_log == []
    assert second_log == ["setup two peer", "handle", "finish", "output sent"]
    assert second.reactor is None
    slot.coroutine.close()  # type: ignore[union-attr]


def test_deferral_ends_with_the_block_even_on_error() -> None:
    log: list[str] = []
    with pytest.raises(KeyError):
        with deferred_start("some reactor") as slot:
            raise KeyError
    assert slot.coroutine is None
    make_async(log)("after", "peer", SERVER)  # runs at once: no deferral active
    assert log == ["setup after peer", "handle", "finish", "output sent"]


def test_nested_deferred_start_blocks_each_get_their_own_handler() -> None:
    with deferred_start("outer") as outer:
        with deferred_start("inner") as inner:
            inner_handler = make_async([])("in", "peer", SERVER)
        outer_handler = make_async([])("out", "peer", SERVER)
    assert inner.handler is inner_handler and inner_handler.reactor == "inner"
    assert outer.handler is outer_handler and outer_handler.reactor == "outer"
    for slot in (inner, outer):
        slot.coroutine.close()  # type: ignore[union-attr]


def test_a_cancelled_deferred_handler_still_runs_finish(loop: Reactor) -> None:
    log: list[str] = []

    class Slow(BaseRequestHandler):
        async def handle(self) -> None:
            log.append("handle")
            await reactor.sleep(3600)

        def finish(self) -> None:
            log.append("finish")

    with deferred_start(loop) as slot:
        Slow("req", "peer", SERVER)
    task = loop.spawn(slot.coroutine)  # type: ignore[arg-type]
    run_until_idle(loop)
    loop.cancel(task)
    run_until_idle(loop)
    assert log == ["handle", "finish"]
    assert isinstance(task.error, reactor.Cancelled)
