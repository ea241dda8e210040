"""The handoff's hot path: the C extension and its pure-Python twin behave alike."""

from __future__ import annotations

import asyncio
import threading
from types import ModuleType
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message

from kafkaloop import RecordMetadata, _bridge, _producer
from tests.twins import skip_if_disabled, twins

native, IMPLEMENTATIONS = twins("_handoff", "_pyhandoff")


def test_the_c_extension_is_in_use() -> None:
    skip_if_disabled()
    assert native is not None, "kafkaloop._handoff is not built: is a C compiler installed?"
    assert vars(_bridge)["PendingCalls"] is native.PendingCalls
    assert vars(_producer)["Settle"] is native.Settle
    assert vars(_producer)["AwaitedProduce"] is native.AwaitedProduce


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_pending_calls_run_in_order_with_one_wakeup_per_burst(
    impl: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    wakeups = 0
    original = loop.call_soon_threadsafe

    def counting(*args: Any) -> asyncio.Handle:
        nonlocal wakeups
        wakeups += 1
        return original(*args)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    errors: list[Exception] = []
    pending = impl.PendingCalls(loop, errors.append)
    ran: list[tuple[Any, ...]] = []

    def burst() -> None:
        for i in range(500):
            pending.call_soon(ran.append, (i,))
            pending.call_soon(lambda *args: ran.append(args), i, "a", "b")

    thread = threading.Thread(target=burst)
    thread.start()
    thread.join()  # blocks the loop on purpose: the whole burst is queued before a drain
    assert len(pending) == 1000
    await asyncio.sleep(0)
    assert wakeups == 1
    assert len(pending) == 0
    expected: list[tuple[Any, ...]] = []
    for i in range(500):
        expected += [(i,), (i, "a", "b")]
    assert ran == expected
    assert errors == []


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_a_raising_call_is_reported_and_the_rest_still_run(impl: ModuleType) -> None:
    errors: list[Exception] = []
    pending = impl.PendingCalls(asyncio.get_running_loop(), errors.append)
    ran: list[str] = []

    def fail() -> None:
        raise ValueError("bad")

    pending.call_soon(fail)
    pending.call_soon(ran.append, "after")
    await asyncio.sleep(0)

    assert ran == ["after"]
    assert [type(e) for e in errors] == [ValueError]
    assert errors[0].__traceback__ is not None


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_a_base_exception_stops_the_drain_and_keeps_the_rest(
    impl: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    scheduled: list[asyncio.Handle] = []
    original = loop.call_soon_threadsafe

    def recording(*args: Any) -> asyncio.Handle:
        scheduled.append(original(*args))
        return scheduled[-1]

    monkeypatch.setattr(loop, "call_soon_threadsafe", recording)
    pending = impl.PendingCalls(loop, lambda exc: None)
    ran: list[int] = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    pending.call_soon(ran.append, 1)
    pending.call_soon(interrupt)
    pending.call_soon(ran.append, 2)
    scheduled.pop().cancel()  # drained by hand below instead
    with pytest.raises(KeyboardInterrupt):
        pending.drain()
    assert ran == [1]
    assert len(pending) == 1
    assert len(scheduled) == 1  # the rest does not wait for another call_soon
    await asyncio.sleep(0)
    assert ran == [1, 2]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_a_cancelled_error_from_a_call_is_reported_and_the_rest_run(
    impl: ModuleType,
) -> None:
    errors: list[BaseException] = []
    pending = impl.PendingCalls(asyncio.get_running_loop(), errors.append)
    cancelled = asyncio.get_running_loop().create_future()
    cancelled.cancel()
    ran: list[int] = []
    pending.call_soon(cancelled.result)
    pending.call_soon(ran.append, 1)
    await asyncio.sleep(0)
    assert ran == [1]
    assert [type(e) for e in errors] == [asyncio.CancelledError]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_calls_for_a_closed_loop_are_dropped(impl: ModuleType) -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    pending = impl.PendingCalls(loop, lambda exc: None)
    pending.call_soon(print, "never")
    assert len(pending) == 0


def _delivered(offset: int, timestamp: tuple[int, int] = (1, 1_700_000_000_000)) -> Message:
    return Message(topic="t", partition=2, offset=offset, timestamp=timestamp)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_settle_resolves_with_metadata_and_counts(impl: ModuleType) -> None:
    loop = asyncio.get_running_loop()
    failures: list[tuple[Any, ...]] = []
    rooms: list[int] = []
    settle = impl.Settle(
        RecordMetadata, lambda *args: failures.append(args), lambda: rooms.append(1)
    )
    first, second, cancelled = loop.create_future(), loop.create_future(), loop.create_future()
    cancelled.cancel()

    settle(first, None, _delivered(7))
    settle(second, None, _delivered(8, timestamp=(0, 0)))
    settle(cancelled, None, _delivered(9))

    assert first.result() == RecordMetadata("t", 2, 7, 1_700_000_000_000)
    assert type(first.result()) is RecordMetadata
    assert second.result().timestamp is None
    assert settle.delivered == 3
    assert failures == []
    assert rooms == []

    failed = loop.create_future()
    err = KafkaError(KafkaError._MSG_TIMED_OUT)
    message = _delivered(10)
    settle.room_wanted = True
    settle(failed, err, message)
    assert failures == [(failed, err, message)]
    assert not failed.done()  # on_failure decides what the future gets
    assert settle.delivered == 3
    assert rooms == [1]  # room is looked for after a failure too
    settle(loop.create_future(), None, _delivered(11))
    assert rooms == [1, 1]
    settle.room_wanted = False
    settle(loop.create_future(), None, _delivered(12))
    assert rooms == [1, 1]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_settle_passes_on_an_error_of_its_callbacks(impl: ModuleType) -> None:
    def on_room() -> None:
        raise RuntimeError("room")

    settle = impl.Settle(RecordMetadata, lambda *args: None, on_room)
    settle.room_wanted = True
    future = asyncio.get_running_loop().create_future()
    with pytest.raises(RuntimeError, match="room"):
        settle(future, None, _delivered(1))
    assert future.done()  # settled before on_room ran


class _CountingLoop:
    """A stand-in for the loop that counts the wake-ups asked of it."""

    def __init__(self) -> None:
        self.wakeups: list[Any] = []

    def call_soon_threadsafe(self, callback: Any) -> None:
        self.wakeups.append(callback)

    def is_closed(self) -> bool:
        return False


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_serve_runs_what_its_func_queued_at_once_without_a_wakeup(impl: ModuleType) -> None:
    loop = _CountingLoop()
    pending = impl.PendingCalls(loop, lambda exc: None)
    ran: list[int] = []

    def poll(timeout: float) -> None:
        assert timeout == 0
        pending.call_soon(ran.append, 1)
        pending.call_soon(ran.append, 2)

    pending.serve(poll, 0)

    assert ran == [1, 2]
    assert loop.wakeups == []
    assert len(pending) == 0
    pending.call_soon(ran.append, 3)  # after serve, calls schedule their drain again
    assert len(loop.wakeups) == 1


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_serve_drains_before_raising_what_its_func_raised(impl: ModuleType) -> None:
    loop = _CountingLoop()
    pending = impl.PendingCalls(loop, lambda exc: None)
    ran: list[int] = []

    def poll() -> None:
        pending.call_soon(ran.append, 1)
        raise ValueError("poll failed")

    with pytest.raises(ValueError, match="poll failed"):
        pending.serve(poll)

    assert ran == [1]
    assert loop.wakeups == []
