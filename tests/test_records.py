"""Consumer records: the C extension and its pure-Python twin behave alike."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import weakref
from types import ModuleType
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message

from kafkaloop import _models
from tests.twins import skip_if_disabled, twins

native, IMPLEMENTATIONS = twins("_records", "_pyrecords")


def messages(count: int, **extra: Any) -> list[Message]:
    return [
        Message(topic="t", partition=2, offset=i, key=b"k%d" % i, value=b"v%d" % i, **extra)
        for i in range(count)
    ]


def test_the_c_extension_is_in_use() -> None:
    skip_if_disabled()
    assert native is not None, "kafkaloop._records is not built: is a C compiler installed?"
    assert _models.NATIVE_RECORDS
    assert _models.ConsumerRecord is native.ConsumerRecord


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_record_made_by_hand(impl: ModuleType) -> None:
    record = impl.ConsumerRecord(
        "items", 1, 5, key=b"k", value=b"v", headers=[("h", b"1")], timestamp=1_700_000_000_000
    )
    assert (record.topic, record.partition, record.offset) == ("items", 1, 5)
    assert (record.key, record.value, record.headers) == (b"k", b"v", [("h", b"1")])
    assert record.timestamp == 1_700_000_000_000
    assert repr(record) == (
        "ConsumerRecord(topic='items', partition=1, offset=5, key=b'k', value=b'v', "
        "headers=[('h', b'1')], timestamp=1700000000000)"
    )
    bare = impl.ConsumerRecord("items", 0, 0)
    assert (bare.key, bare.value, bare.headers, bare.timestamp) == (None, None, None, None)
    with pytest.raises(TypeError):
        impl.ConsumerRecord("items", "one", 0)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_records_compare_by_content_and_hash_by_position(impl: ModuleType) -> None:
    a = impl.ConsumerRecord("t", 0, 7, value=b"x")
    assert a == impl.ConsumerRecord("t", 0, 7, value=b"x")
    assert a != impl.ConsumerRecord("t", 0, 7, value=b"y")
    assert a != impl.ConsumerRecord("t", 0, 8, value=b"x")
    assert a != ("t", 0, 7)
    assert hash(a) == hash(("t", 0, 7))
    assert len({a, impl.ConsumerRecord("t", 0, 7, value=b"x")}) == 1


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_make_records_reads_each_message(impl: ModuleType) -> None:
    batch = messages(3, timestamp=(1, 42))
    records = impl.make_records(batch)
    assert [(r.topic, r.partition, r.offset, r.key, r.value) for r in records] == [
        ("t", 2, i, b"k%d" % i, b"v%d" % i) for i in range(3)
    ]
    assert [r.timestamp for r in records] == [42, 42, 42]
    assert all(r._message is m for r, m in zip(records, batch, strict=True))
    assert all(isinstance(r, impl.ConsumerRecord) for r in records)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_make_records_leaves_a_batch_with_an_error_to_the_slow_path(impl: ModuleType) -> None:
    bad = Message(topic="t", partition=0, offset=3, error=KafkaError(KafkaError._PARTITION_EOF))
    assert impl.make_records([*messages(2), bad]) is None
    assert impl.make_records([]) == []


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_new_record_keeps_what_a_deserializer_made(impl: ModuleType) -> None:
    (message,) = messages(1)
    record = impl.new_record(message, "key", {"n": 1})
    assert isinstance(record, impl.ConsumerRecord)
    assert (record.key, record.value, record.offset) == ("key", {"n": 1}, 0)


@pytest.mark.skipif(native is None, reason="the C extension is not built")
def test_c_records_of_bytes_cost_the_collector_nothing() -> None:
    batch = messages(2000)
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        records = native.make_records(batch)
        after = gc.get_count()[0]
    finally:
        gc.enable()
    assert records is not None
    assert after - before < 5  # the list itself; 2000 tracked records would count 2000
    assert not any(map(gc.is_tracked, records))


@pytest.mark.skipif(native is None, reason="the C extension is not built")
def test_c_records_that_refer_back_to_themselves_are_still_collected() -> None:
    class Value:
        record: Any = None

    (message,) = messages(1)
    value = Value()
    record = native.new_record(message, None, value)
    assert gc.is_tracked(record)  # a deserializer's object could refer back: tracked
    assert not gc.is_tracked(native.new_record(message, b"k", "text"))
    value.record = record  # a cycle only the collector can free
    gone = weakref.ref(value)
    del value, record
    gc.collect()
    assert gone() is None


def test_producing_and_consuming_work_the_same_without_the_extensions(
    kafka_bootstrap: str, topic_name: str
) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition
        from kafkaloop import AIOConsumer, AIOProducer, _bridge, _models, _producer

        async def main():
            assert not _models.NATIVE_RECORDS
            assert _producer.Settle.__module__ == "kafkaloop._pyhandoff"
            assert _bridge.PendingCalls.__module__ == "kafkaloop._pyhandoff"
            config = {{"bootstrap.servers": {kafka_bootstrap!r}}}
            async with AIOProducer(config) as producer:
                first = await producer.produce({topic_name!r}, b"0")
                assert (first.topic, first.offset) == ({topic_name!r}, 0), first
                await producer.produce_many({topic_name!r}, [b"%d" % i for i in range(1, 600)])
            consumer = AIOConsumer({{**config, "group.id": "g"}})
            async with consumer:
                consumer.assign([TopicPartition({topic_name!r}, 0, OFFSET_BEGINNING)])
                got = await consumer.getmany(max_records=100, timeout=20)
                async for record in consumer:
                    got.append(record)
                    if len(got) == 600:
                        break
            assert [r.value for r in got] == [b"%d" % i for i in range(600)], got[:3]
            assert [r.offset for r in got] == list(range(600))
            print("ok", type(got[0]).__module__, type(producer._poller).__name__)

        asyncio.run(main())
        """
    )
    env = {**os.environ, "KAFKALOOP_NO_EXTENSIONS": "1"}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "kafkaloop._pyrecords", "PollThread"]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_a_record_stream_hands_over_the_batch_then_asks_for_more(impl: ModuleType) -> None:
    cursor = impl.Cursor()
    refills: list[int] = []

    async def refill() -> Any:
        refills.append(cursor.next)
        if len(refills) == 1:
            cursor.batch, cursor.next = impl.make_records(messages(2)), 1
            return cursor.batch[0]
        raise StopAsyncIteration

    cursor.batch = impl.make_records(messages(3))
    stream = impl.RecordStream(cursor, refill)
    assert stream.__aiter__() is stream
    got = [record.offset async for record in stream]
    assert got == [0, 1, 2, 0, 1]
    assert refills == [3, 2]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_records_of_a_message_subclass(impl: ModuleType) -> None:
    class Traced(Message):
        pass

    (record,) = impl.make_records([Traced(topic="t", partition=4, offset=9, value=b"v")])
    assert (record.topic, record.partition, record.offset, record.value) == ("t", 4, 9, b"v")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_a_record_is_taken_when_awaited_not_before(impl: ModuleType) -> None:
    cursor = impl.Cursor()
    cursor.batch = impl.make_records(messages(2))

    async def refill() -> Any:
        raise StopAsyncIteration

    stream = impl.RecordStream(cursor, refill)
    dropped: Any = stream.__anext__()
    dropped.close()  # never awaited: nothing taken
    pending = stream.__anext__()
    assert cursor.next == 0
    assert (await pending).offset == 0
    with pytest.raises(RuntimeError):
        await pending  # an awaitable is awaited once
    assert (await anext(stream)).offset == 1
    assert await anext(stream, None) is None


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_a_record_stream_suspends_in_refill_and_passes_cancellation_on(
    impl: ModuleType,
) -> None:
    cursor = impl.Cursor()
    started, stopped = asyncio.Event(), asyncio.Event()

    async def refill() -> Any:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()

    stream = impl.RecordStream(cursor, refill)

    async def read() -> Any:
        return await stream.__anext__()

    task = asyncio.ensure_future(read())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stopped.is_set()

    async def refill_later() -> Any:
        await asyncio.sleep(0)
        cursor.batch, cursor.next = impl.make_records(messages(1)), 1
        return cursor.batch[0]

    stream = impl.RecordStream(cursor, refill_later)
    assert (await stream.__anext__()).offset == 0


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_make_records_is_safe_from_a_message_that_changes_the_list(impl: ModuleType) -> None:
    batch: list[Message] = []

    class Meddling(Message):
        def error(self) -> Any:
            batch[:] = [Message(topic="other", partition=0, offset=99)]
            return None

    batch[:] = [Meddling(topic="t", partition=0, offset=1, value=b"v")]
    (record,) = impl.make_records(batch)
    assert (record.topic, record.offset, record.value) == ("t", 1, b"v")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_headers_are_handed_out_as_copies(impl: ModuleType) -> None:
    record = impl.ConsumerRecord("t", 0, 0, headers=[("h", b"1")])
    record.headers.append(("x", b"2"))
    assert record.headers == [("h", b"1")]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_headers_given_as_any_sequence_are_handed_out_as_a_list(impl: ModuleType) -> None:
    record = impl.ConsumerRecord("t", 0, 0, headers=(("h", b"1"),))
    assert record.headers == [("h", b"1")]


class _Holder:
    record: Any = None


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_record_its_own_headers_lead_back_to_is_freed_by_the_collector(
    impl: ModuleType,
) -> None:
    holder = _Holder()
    holder.record = impl.ConsumerRecord("t", 0, 0, headers=[("h", holder)])  # a cycle
    freed = weakref.ref(holder)
    del holder
    gc.collect()
    assert freed() is None


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_equal_and_unequal_agree(impl: ModuleType) -> None:
    # Records compare by what they say, not by the messages they were made from.
    a = impl.new_record(Message(topic="t", value=b"1"), None, 1)
    b = impl.new_record(Message(topic="t", value=b"01"), None, 1)
    c = impl.new_record(Message(topic="t", value=b"1"), None, 2)
    assert (a == b, a != b) == (True, False)
    assert (a == c, a != c) == (False, True)
    assert a != (a._message, a.key, a.value)  # a record is no tuple


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
async def test_a_next_record_refuses_to_be_closed_from_inside_its_refill(
    impl: ModuleType,
) -> None:
    holder: dict[str, Any] = {}

    async def refill() -> Any:
        with pytest.raises(ValueError, match="already executing"):
            holder["next"].close()
        return "done"

    stream = impl.RecordStream(impl.Cursor(), refill)
    holder["next"] = stream.__anext__()
    assert await holder["next"] == "done"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_next_record_dropped_while_in_refill_closes_it(impl: ModuleType) -> None:
    stopped: list[bool] = []
    loop = asyncio.new_event_loop()

    async def refill() -> Any:
        try:
            await loop.create_future()
        finally:
            stopped.append(True)

    try:
        pending: Any = impl.RecordStream(impl.Cursor(), refill).__anext__()
        pending.send(None)  # suspended inside refill
        del pending
        gc.collect()
        assert stopped == [True]
    finally:
        loop.close()
