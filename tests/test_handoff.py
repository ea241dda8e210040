"""The handoff's hot path: the C extension and its pure-Python twin behave alike."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import weakref
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
    assert vars(_producer)["BatchSettle"] is native.BatchSettle


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


class _Handler:
    """An error handler a weak reference can follow."""

    def __call__(self, error: BaseException) -> None:
        raise AssertionError(error)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_pending_calls_are_freed_without_the_garbage_collector(impl: ModuleType) -> None:
    """No reference cycle keeps a dropped PendingCalls, nor the loop and handler it holds."""
    loop = asyncio.new_event_loop()
    handler = _Handler()
    gone = weakref.ref(handler)
    pending = impl.PendingCalls(loop, handler)
    ran: list[int] = []
    pending.call_soon(ran.append, 1)  # a wake-up scheduled: the loop runs the drain
    loop.run_until_complete(asyncio.sleep(0))
    assert ran == [1]
    del pending, handler
    gc.disable()
    try:
        assert gone() is None
    finally:
        gc.enable()
        loop.close()


def _a_failing_call_then_another(pending: Any) -> list[str]:
    """Queue a call that raises ValueError, then one that appends "after" to the list
    returned."""
    ran: list[str] = []

    def fail() -> None:
        raise ValueError("bad")

    pending.call_soon(fail)
    pending.call_soon(ran.append, "after")
    return ran


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_a_raising_call_is_reported_and_the_rest_still_run(impl: ModuleType) -> None:
    errors: list[Exception] = []
    pending = impl.PendingCalls(asyncio.get_running_loop(), errors.append)
    ran = _a_failing_call_then_another(pending)
    await asyncio.sleep(0)

    assert ran == ["after"]
    assert [type(e) for e in errors] == [ValueError]
    assert errors[0].__traceback__ is not None


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("raised", [RuntimeError, KeyboardInterrupt])
async def test_an_on_error_that_raises_is_reported_and_the_rest_still_run(
    impl: ModuleType,
    raised: type[BaseException],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)  # the C code's report

    def on_error(_exc: BaseException) -> None:
        raise raised

    pending = impl.PendingCalls(asyncio.get_running_loop(), on_error)
    ran = _a_failing_call_then_another(pending)
    await asyncio.sleep(0)

    assert ran == ["after"]
    logged = [r.exc_info[0] for r in caplog.records if r.exc_info]  # the Python twin's report
    assert [type(u.exc_value) for u in unraisable] + logged == [raised]


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
def test_serve_runs_the_backlog_then_its_own_calls_as_they_come(impl: ModuleType) -> None:
    loop = _CountingLoop()
    errors: list[BaseException] = []
    pending = impl.PendingCalls(loop, errors.append)
    ran: list[Any] = []
    pending.call_soon(ran.append, "queued before")
    assert len(loop.wakeups) == 1

    def from_another_thread() -> None:
        pending.call_soon(ran.append, "other thread")

    def poll(timeout: float) -> None:
        assert timeout == 0
        assert ran == ["queued before"]
        pending.call_soon(ran.append, 1)
        assert ran == ["queued before", 1]  # on the serving thread: at once
        thread = threading.Thread(target=from_another_thread)
        thread.start()
        thread.join()
        assert ran == ["queued before", 1]  # another thread's call waits for the drain
        pending.call_soon(lambda: 1 / 0)  # reported; the rest still run
        pending.call_soon(ran.append, 2)

    pending.serve(poll, 0)

    assert ran == ["queued before", 1, 2, "other thread"]
    assert [type(e) for e in errors] == [ZeroDivisionError]
    assert len(loop.wakeups) == 1  # none for what came during serve
    assert len(pending) == 0
    pending.call_soon(ran.append, 3)  # after serve, calls queue and wake the loop again
    assert ran[-1] == "other thread"
    assert len(loop.wakeups) == 2


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_serve_lets_a_keyboard_interrupt_through_and_is_not_reentrant(impl: ModuleType) -> None:
    loop = _CountingLoop()
    pending = impl.PendingCalls(loop, lambda exc: None)
    ran: list[int] = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    def poll() -> None:
        pending.call_soon(interrupt)  # not raised here, into librdkafka's callback...
        pending.call_soon(ran.append, 1)  # ...and the calls after it queue
        assert ran == []

    with pytest.raises(KeyboardInterrupt):  # ...but by serve, once poll() returned
        pending.serve(poll)
    assert ran == []
    assert len(pending) == 1
    assert len(loop.wakeups) == 1  # what waits has its drain scheduled
    pending.drain()
    assert ran == [1]

    def nested() -> None:
        pending.serve(print)

    with pytest.raises(RuntimeError, match="already running"):
        pending.serve(nested)
    pending.serve(lambda: pending.call_soon(ran.append, 2))  # usable again, at once again
    assert ran == [1, 2]


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


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_batch_settle_produces_in_order_and_stops_at_the_first_refusal(
    impl: ModuleType,
) -> None:
    queued: list[tuple[Any, ...]] = []
    settle = impl.Settle(RecordMetadata, lambda *args: None, lambda: None)
    batch = impl.BatchSettle(4, lambda *call: queued.append(call), lambda *a: a, print, settle)
    handed: list[tuple[Any, ...]] = []

    def produce(topic: str, value: Any, key: Any, partition: int, cb: Any, **kw: Any) -> None:
        if len(handed) == 2 and not kw:
            raise BufferError("full")
        handed.append((topic, value, key, partition, kw))
        cb(None, _delivered(len(handed)))

    items: list[Any] = [b"a", (b"k", "b"), b"c", (None, None)]
    with pytest.raises(BufferError):
        batch.produce(produce, "t", items, 0, None)
    assert batch.next == 2
    batch.produce(produce, "t", items, 2, [("h", b"1")])
    assert batch.next == 4
    assert [h[:4] for h in handed] == [
        ("t", b"a", None, -1),
        ("t", "b", b"k", -1),
        ("t", b"c", None, -1),
        ("t", None, None, -1),
    ]
    assert [h[4] for h in handed] == [{}, {}] + [{"headers": [("h", b"1")]}] * 2
    # Each report is handed to call_soon as (batch, index, err, msg), to run on the loop.
    assert [(call[0], call[1]) for call in queued] == [
        (batch, 0),
        (batch, 1),
        (batch, 2),
        (batch, 3),
    ]
    with pytest.raises(ValueError, match="pair"):
        batch.produce(produce, "t", [(b"k",)], 0, None)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_batch_settle_gathers_outcomes_and_reports_once_all_are_in(
    impl: ModuleType,
) -> None:
    rooms: list[int] = []
    settle = impl.Settle(RecordMetadata, lambda *args: None, lambda: rooms.append(1))
    finished: list[list[Any]] = []
    batch = impl.BatchSettle(
        3, lambda *call: None, lambda err, msg: ("failed", err.code()), finished.append, settle
    )

    batch(2, None, _delivered(7))
    batch(0, KafkaError(KafkaError._MSG_TIMED_OUT), None)
    assert finished == []
    assert batch.remaining == 1
    settle.room_wanted = True
    batch(1, None, _delivered(8, timestamp=(0, 0)))

    assert finished == [
        [
            ("failed", KafkaError._MSG_TIMED_OUT),
            RecordMetadata("t", 2, 8, None),
            RecordMetadata("t", 2, 7, 1_700_000_000_000),
        ]
    ]
    assert rooms == [1]
    batch(1, None, _delivered(10))  # a second outcome for one message counts for nothing
    assert batch.remaining == 0
    assert len(finished) == 1
    assert finished[0][1] == RecordMetadata("t", 2, 8, None)
    assert settle.metadata(_delivered(9)) == RecordMetadata("t", 2, 9, 1_700_000_000_000)
    # What librdkafka does not know (acks=0: no offset) reads as -1, as RecordMetadata says.
    assert settle.metadata(Message()) == RecordMetadata("", -1, -1, None)
    with pytest.raises(ValueError, match="start"):
        batch.produce(print, "t", [b"v"], -1, None)
