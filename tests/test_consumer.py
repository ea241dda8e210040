"""AIOConsumer against a real broker: round trips, groups, offsets, pause, bad records."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from kafkaloop import (
    AIOAdminClient,
    AIOConsumer,
    AIOProducer,
    ClientClosedError,
    ConfigurationError,
    ConsumerCallError,
    ConsumerError,
    ConsumerRecord,
    DeserializationError,
    NoRunningLoopError,
)


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOProducer]:
    async with AIOProducer({"bootstrap.servers": kafka_bootstrap}) as producer:
        yield producer


def consumer_config(bootstrap: str, group: str, **extra: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        **extra,
    }


async def read(consumer: AIOConsumer, count: int, timeout: float = 30) -> list[ConsumerRecord]:
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        records += await consumer.getmany(max_records=count - len(records), timeout=1.0)
    return records


async def read_after_a_restart(config: dict[str, Any], topic: str) -> bytes | None:
    """The first record a new consumer of the group reads: where the last one's commit left."""
    async with AIOConsumer(config, [topic]) as consumer:
        first = await read(consumer, 1)
    return first[0].value if first else None


async def create(bootstrap: str, topic: str, partitions: int) -> None:
    async with AIOAdminClient({"bootstrap.servers": bootstrap}) as admin:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions)])


async def test_keys_values_headers_and_timestamps_round_trip(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    sent = await producer.produce(
        topic_name, b"v1", key=b"k1", headers={"h": b"1"}, timestamp=1_700_000_000_000
    )
    await producer.produce(topic_name, None, key="k2")

    async with AIOConsumer(consumer_config(kafka_bootstrap, topic_name), [topic_name]) as c:
        records = await read(c, 2)

    first, second = records
    assert (first.topic, first.partition, first.offset) == (topic_name, 0, sent.offset)
    assert (first.key, first.value, first.headers) == (b"k1", b"v1", [("h", b"1")])
    assert first.timestamp == 1_700_000_000_000
    assert (second.key, second.value, second.headers) == (b"k2", None, None)


async def test_async_for_yields_every_record_in_order(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await producer.produce_many(topic_name, [str(i).encode() for i in range(1200)])
    seen: list[int] = []

    async with AIOConsumer(
        consumer_config(kafka_bootstrap, topic_name),
        [topic_name],
        value_deserializer=int,
    ) as consumer:
        async for record in consumer:
            seen.append(record.value)
            if len(seen) == 1200:
                break

    assert seen == list(range(1200))


async def test_two_consumers_in_one_group_share_the_topic_and_see_each_message_once(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await create(kafka_bootstrap, topic_name, 4)
    group = f"g-{topic_name}"
    assigned: list[list[TopicPartition]] = []

    async def on_assign(consumer: AIOConsumer, partitions: list[TopicPartition]) -> None:
        await asyncio.sleep(0)  # a coroutine, run on the loop before the rebalance completes
        assigned.append(partitions)

    async with (
        AIOConsumer(
            consumer_config(kafka_bootstrap, group), [topic_name], on_assign=on_assign
        ) as a,
        AIOConsumer(
            consumer_config(kafka_bootstrap, group), [topic_name], on_assign=on_assign
        ) as b,
    ):
        # Both must have joined before anything is produced, so the work is split.
        deadline = time.monotonic() + 30
        while (not a.assignment() or not b.assignment()) and time.monotonic() < deadline:
            await asyncio.gather(a.getmany(timeout=0.2), b.getmany(timeout=0.2))
        await producer.produce_many(topic_name, [(str(i), str(i)) for i in range(400)])
        got_a: list[ConsumerRecord] = []
        got_b: list[ConsumerRecord] = []
        deadline = time.monotonic() + 30
        while len(got_a) + len(got_b) < 400 and time.monotonic() < deadline:
            more_a, more_b = await asyncio.gather(a.getmany(timeout=0.5), b.getmany(timeout=0.5))
            got_a += more_a
            got_b += more_b

    values = sorted(int(r.value) for r in got_a + got_b)
    assert values == list(range(400))
    assert got_a
    assert got_b
    assert not {(r.partition) for r in got_a} & {(r.partition) for r in got_b}
    assert assigned


async def test_a_member_joining_mid_read_takes_over_partitions_without_loss_or_repeats(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    # No rebalance callbacks: the first member takes fetched records on the loop itself, so
    # the revocation may be served there, in the middle of its queued records.
    await create(kafka_bootstrap, topic_name, 4)
    group = f"g-{topic_name}"
    await producer.produce_many(topic_name, [(str(i % 4), str(i)) for i in range(4000)])
    async with AIOConsumer(consumer_config(kafka_bootstrap, group), [topic_name]) as a:
        got_a = await read(a, 50)
        async with AIOConsumer(consumer_config(kafka_bootstrap, group), [topic_name]) as b:
            got_b: list[ConsumerRecord] = []
            deadline = time.monotonic() + 60
            while len(got_a) + len(got_b) < 4000 and time.monotonic() < deadline:
                # A reads slowly until B is in, so records are left for B to take over.
                more_a, more_b = await asyncio.gather(
                    a.getmany(100 if b.assignment() else 1, timeout=0.2),
                    b.getmany(100, timeout=0.2),
                )
                got_a += more_a
                got_b += more_b
            both_assigned = bool(a.assignment()) and bool(b.assignment())

    values = sorted(int(r.value) for r in got_a + got_b)
    assert values == list(range(4000))  # each once: handed-over offsets committed on revoke
    assert both_assigned
    assert got_b


async def test_every_partitions_offset_is_stored_as_the_assignment_shrinks_and_grows(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    # With one partition assigned, the last record of a batch says how far it was read; with
    # two, every partition's last record counts: both must end up committed, whatever the
    # assignment was in between.
    await create(kafka_bootstrap, topic_name, 2)
    config = consumer_config(kafka_bootstrap, f"g-{topic_name}")

    async def produce_to_both(phase: str) -> set[str]:
        values = [f"{phase}-{p}-{i}" for p in (0, 1) for i in range(50)]
        await asyncio.gather(
            *(producer.produce(topic_name, v, partition=int(v.split("-")[1])) for v in values)
        )
        return set(values)

    async def read_until(wanted: set[str], *consumers: AIOConsumer) -> None:
        deadline = time.monotonic() + 60
        while wanted and time.monotonic() < deadline:
            for batch in await asyncio.gather(*(c.getmany(100, timeout=0.2) for c in consumers)):
                wanted -= {r.value.decode() for r in batch}
        assert not wanted

    async def settle(want: dict[AIOConsumer, int]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(len(c.assignment()) == n for c, n in want.items()):
                return
            await asyncio.gather(*(c.getmany(100, timeout=0.2) for c in want))
        raise AssertionError("the group did not settle")

    async with AIOConsumer(config, [topic_name]) as a:
        await settle({a: 2})
        await read_until(await produce_to_both("one"), a)
        async with AIOConsumer(config, [topic_name]) as b:
            await settle({a: 1, b: 1})
            await read_until(await produce_to_both("two"), a, b)
        await settle({a: 2})
        wanted = await produce_to_both("three")
        await asyncio.sleep(1)  # both partitions fetched: batches mix them
        await read_until(wanted, a)
        await a.commit()
        committed = await a.committed(
            [TopicPartition(topic_name, 0), TopicPartition(topic_name, 1)]
        )

    assert [tp.offset for tp in committed] == [150, 150]


async def test_client_callbacks_in_the_config_never_run_on_the_loop(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await create(kafka_bootstrap, topic_name, 1)
    await producer.produce_many(topic_name, [b"x"] * 2000)
    loop_thread = threading.get_ident()
    stats_threads: set[int] = set()

    def on_stats(_stats: str) -> None:
        stats_threads.add(threading.get_ident())

    config = consumer_config(
        kafka_bootstrap, f"g-{topic_name}", stats_cb=on_stats, **{"statistics.interval.ms": 100}
    )
    async with AIOConsumer(config) as consumer:
        consumer.assign([TopicPartition(topic_name, 0, OFFSET_BEGINNING)])
        records = await read(consumer, 2000)
        deadline = time.monotonic() + 10
        while not stats_threads and time.monotonic() < deadline:
            await consumer.getmany(timeout=0.2)

    assert len(records) == 2000
    assert stats_threads
    assert loop_thread not in stats_threads


async def test_a_config_callback_that_raises_stops_reading_clearly_and_loses_nothing(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await create(kafka_bootstrap, topic_name, 1)
    await producer.produce_many(topic_name, [str(i).encode() for i in range(200)])
    calls = 0

    def on_stats(_stats: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("the application's stats_cb failed once")

    config = consumer_config(
        kafka_bootstrap, f"g-{topic_name}", stats_cb=on_stats, **{"statistics.interval.ms": 100}
    )
    seen: list[bytes | None] = []
    async with AIOConsumer(config, [topic_name]) as consumer:

        async def until_the_statistics_come() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                records = await consumer.getmany(max_records=10, timeout=0.2)
                seen.extend(r.value for r in records)

        with pytest.raises(ConsumerError, match="config raised ValueError") as caught:
            await until_the_statistics_come()
        with pytest.raises(ConsumerError, match="Close it and create a new one"):
            await consumer.getmany(timeout=0.2)  # still: no reading past dropped records
    # A new consumer of the group resumes where the first one's handed-over records end.
    async with AIOConsumer(config, [topic_name]) as second:
        seen.extend(r.value for r in await read(second, 200 - len(seen)))

    assert isinstance(caught.value.__cause__, ValueError)
    assert sorted(seen, key=lambda v: int(v or b"-1")) == [str(i).encode() for i in range(200)]


async def test_reading_a_backlog_gives_the_loop_a_turn_every_chunk(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await create(kafka_bootstrap, topic_name, 1)
    await producer.produce_many(topic_name, [b"x"] * 3000)
    since_tick = most_between_ticks = 0

    async def ticker() -> None:
        nonlocal since_tick
        while True:
            since_tick = 0
            await asyncio.sleep(0)

    async with AIOConsumer(consumer_config(kafka_bootstrap, f"g-{topic_name}")) as consumer:
        consumer.assign([TopicPartition(topic_name, 0, OFFSET_BEGINNING)])
        await read(consumer, 1)  # librdkafka now holds the rest, fetched ahead
        await asyncio.sleep(0.5)
        ticks = asyncio.create_task(ticker())
        seen = 1
        async for _record in consumer:  # a handler that never awaits
            since_tick += 1
            most_between_ticks = max(most_between_ticks, since_tick)
            seen += 1
            if seen == 3000:
                break
        ticks.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ticks

    assert 0 < most_between_ticks <= 256


async def test_committed_position_survives_a_restart(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await producer.produce_many(topic_name, [str(i).encode() for i in range(10)])
    config = consumer_config(kafka_bootstrap, f"g-{topic_name}", **{"enable.auto.commit": False})

    async with AIOConsumer(config, [topic_name]) as first:
        records = await read(first, 4)
        await first.commit(records)
    async with AIOConsumer(config, [topic_name]) as second:
        rest = await read(second, 6)
        await second.commit()

    assert [r.value for r in records] == [b"0", b"1", b"2", b"3"]
    assert [r.value for r in rest] == [str(i).encode() for i in range(4, 10)]


async def test_auto_commit_on_close_covers_only_what_async_for_asked_past(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await producer.produce_many(topic_name, [str(i).encode() for i in range(1000)])
    config = consumer_config(kafka_bootstrap, f"g-{topic_name}")

    async with AIOConsumer(config, [topic_name]) as first:
        async for record in first:  # fetches a batch of up to 500, hands over 10
            if record.value == b"9":
                break  # "9" was never asked past: it may not have been dealt with
    assert await read_after_a_restart(config, topic_name) == b"9"


async def test_a_record_whose_processing_was_cancelled_at_shutdown_is_read_again(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await producer.produce_many(topic_name, [b"0", b"1", b"2"])
    config = consumer_config(kafka_bootstrap, f"g-{topic_name}")
    processing: asyncio.Queue[bytes | None] = asyncio.Queue()

    async with AIOConsumer(config, [topic_name]) as first:

        async def work() -> None:
            async for record in first:
                await processing.put(record.value)
                await asyncio.sleep(30)  # processing, when the shutdown comes

        worker = asyncio.create_task(work())
        assert await asyncio.wait_for(processing.get(), 30) == b"0"
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
    assert await read_after_a_restart(config, topic_name) == b"0"


async def test_commit_inside_async_for_covers_the_record_at_hand(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await producer.produce_many(topic_name, [str(i).encode() for i in range(10)])
    config = consumer_config(kafka_bootstrap, f"g-{topic_name}", **{"enable.auto.commit": False})

    async with AIOConsumer(config, [topic_name]) as first:
        async for record in first:
            if record.value == b"5":
                await first.commit()  # "5" processed: commit it, and leave
                committed = await first.committed([TopicPartition(topic_name, 0)])
                break

    assert committed[0].offset == 6
    assert await read_after_a_restart(config, topic_name) == b"6"


@pytest.mark.parametrize("off", [False, "false", "0"])
async def test_with_the_offset_store_off_nothing_read_is_committed_until_stored(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str, off: bool | str
) -> None:
    await producer.produce_many(topic_name, [str(i).encode() for i in range(10)])
    # As a JSON config from the environment gives it: the string "false" means false.
    config = consumer_config(
        kafka_bootstrap, f"g-{topic_name}", **{"enable.auto.offset.store": off}
    )

    async with AIOConsumer(config, [topic_name]) as first:
        read_first = await read(first, 5)
    async with AIOConsumer(config, [topic_name]) as second:
        read_again = await read(second, 1)

    assert [r.value for r in read_first] == [str(i).encode() for i in range(5)]
    assert [r.value for r in read_again] == [b"0"]  # the close committed nothing


async def test_an_offset_store_setting_that_is_not_a_boolean_is_refused(
    kafka_bootstrap: str, topic_name: str
) -> None:
    config = consumer_config(kafka_bootstrap, "g", **{"enable.auto.offset.store": "maybe"})

    with pytest.raises(ConfigurationError, match=r"offset\.store must be true or false"):
        AIOConsumer(config, [topic_name])


async def test_pause_and_resume_lose_nothing(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await producer.produce_many(topic_name, [str(i).encode() for i in range(100)])
    tp = TopicPartition(topic_name, 0)

    async with AIOConsumer(
        consumer_config(kafka_bootstrap, f"g-{topic_name}"), [topic_name]
    ) as consumer:
        first = await read(consumer, 10)
        await consumer.pause([tp])
        during = await consumer.getmany(timeout=1.5)
        await consumer.resume([tp])
        rest = await read(consumer, 90)

    assert during == []
    assert [int(r.value) for r in first + rest] == list(range(100))


async def test_seek_rereads_from_an_offset(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await producer.produce_many(topic_name, [str(i).encode() for i in range(20)])

    async with AIOConsumer(
        consumer_config(kafka_bootstrap, f"g-{topic_name}"), [topic_name]
    ) as consumer:
        await read(consumer, 20)
        await consumer.seek(TopicPartition(topic_name, 0, 5))
        again = await read(consumer, 3)

    assert [r.offset for r in again] == [5, 6, 7]


async def test_calls_librdkafka_refuses_raise_consumer_call_errors_saying_why(
    kafka_bootstrap: str, topic_name: str
) -> None:
    async with AIOConsumer(consumer_config(kafka_bootstrap, f"g-{topic_name}")) as consumer:
        with pytest.raises(ConsumerCallError) as unknown:
            await consumer.partitions(f"{topic_name}-none", timeout=5)
        with pytest.raises(ConsumerCallError) as unassigned:
            await consumer.seek(TopicPartition(topic_name, 0, 5))

    assert unknown.value.code == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert str(unknown.value).startswith(f"partitions('{topic_name}-none') failed:")
    assert str(unknown.value).endswith("; no such topic or partition.")
    error = unassigned.value
    assert isinstance(error, ConsumerError)
    assert isinstance(error, KafkaException)  # as confluent-kafka raises it
    assert error.args[0].code() == KafkaError._UNKNOWN_PARTITION
    assert str(error).startswith(f"seek() to {topic_name}[0] failed:")
    assert "not assigned to this consumer" in str(error)


async def test_a_bad_record_names_itself_and_reading_goes_on(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await producer.produce_many(topic_name, [b'{"a": 1}', b"not json", b'{"a": 3}'])
    config = consumer_config(kafka_bootstrap, f"g-{topic_name}")

    async with AIOConsumer(config, [topic_name], value_deserializer=json.loads) as consumer:
        good = await read(consumer, 1)
        with pytest.raises(DeserializationError) as caught:
            await consumer.getmany(timeout=5)
        after = await read(consumer, 1)

    assert [r.value for r in good] == [{"a": 1}]
    error = caught.value
    assert (error.topic, error.partition, error.offset) == (topic_name, 0, 1)
    assert f"{topic_name}[0] offset 1" in str(error)
    assert [r.value for r in after] == [{"a": 3}]


async def test_bad_records_can_be_skipped_and_counted(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    await producer.produce_many(topic_name, [b"1", b"x", b"3"])

    async with AIOConsumer(
        consumer_config(kafka_bootstrap, f"g-{topic_name}"),
        [topic_name],
        value_deserializer=int,
        on_deserialization_error="skip",
    ) as consumer:
        records = await read(consumer, 2)

    assert [r.value for r in records] == [1, 3]
    assert consumer.skipped == 1
    assert "Skipped a record" in caplog.text


async def test_fan_out_consumers_each_see_every_new_message(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await create(kafka_bootstrap, topic_name, 3)
    await producer.produce(topic_name, b"old")  # before they start: not seen
    config = {"bootstrap.servers": kafka_bootstrap}

    async with (
        AIOConsumer.fan_out(config, [topic_name]) as a,
        AIOConsumer.fan_out(config, [topic_name]) as b,
    ):
        assert a.group_id != b.group_id
        deadline = time.monotonic() + 30
        while (len(a.assignment()) < 3 or len(b.assignment()) < 3) and (
            time.monotonic() < deadline
        ):
            await asyncio.gather(a.getmany(timeout=0.2), b.getmany(timeout=0.2))
        # Each starts at the end once it has asked where that is: a mark on every partition,
        # again, until both have read a mark of the latest round on each one.
        for attempt in range(20):
            mark = f"mark{attempt}".encode()
            for partition in range(3):
                await producer.produce(topic_name, mark, partition=partition)
            if all(await asyncio.gather(_read_marks(a, mark), _read_marks(b, mark))):
                break
        else:
            pytest.fail("the fan-out consumers never read from the end")
        await producer.produce_many(topic_name, [(str(i), str(i)) for i in range(30)])
        seen_a, seen_b = await asyncio.gather(read(a, 30), read(b, 30))

    assert sorted(int(r.value) for r in seen_a) == list(range(30))
    assert sorted(int(r.value) for r in seen_b) == list(range(30))


async def _read_marks(consumer: AIOConsumer, mark: bytes, partitions: int = 3) -> bool:
    """Whether `consumer` reads `mark` on each of `partitions` partitions within 5 s."""
    marked: set[int] = set()
    deadline = time.monotonic() + 5
    while len(marked) < partitions and time.monotonic() < deadline:
        records = await consumer.getmany(timeout=0.5)
        marked |= {r.partition for r in records if r.value == mark}
    return len(marked) == partitions


async def test_cancelling_the_reader_loses_nothing_and_close_does_not_hang(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    consumer = AIOConsumer(consumer_config(kafka_bootstrap, f"g-{topic_name}"), [topic_name])
    reader = asyncio.create_task(consumer.getmany(timeout=10))
    await asyncio.sleep(0.3)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader

    await producer.produce_many(topic_name, [b"a", b"b"])
    records = await read(consumer, 2)
    started = time.monotonic()
    await consumer.close()
    await consumer.close()

    assert [r.value for r in records] == [b"a", b"b"]
    assert time.monotonic() - started < 10
    with pytest.raises(ClientClosedError):
        await consumer.getmany()


async def test_a_getmany_waiting_when_close_begins_returns_nothing(
    kafka_bootstrap: str, topic_name: str
) -> None:
    await create(kafka_bootstrap, topic_name, 1)
    consumer = AIOConsumer(consumer_config(kafka_bootstrap, f"g-{topic_name}"), [topic_name])
    waiting = asyncio.create_task(consumer.getmany(timeout=10))
    await asyncio.sleep(1.0)  # inside its wait (slices of 0.5 s)
    started = time.monotonic()
    await consumer.close()

    assert await waiting == []  # not ClientClosedError: like async for, it just ends
    assert time.monotonic() - started < 5


async def test_lag_counts_what_is_left_to_read(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await producer.produce_many(topic_name, [b"x"] * 50)

    async with AIOConsumer(
        consumer_config(kafka_bootstrap, f"g-{topic_name}"), [topic_name], batch_size=10
    ) as consumer:
        await read(consumer, 10)
        lag = consumer.lag()

    assert lag == {TopicPartition(topic_name, 0): 40}


async def test_lag_does_not_wait_for_a_read_that_waits_for_records(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await producer.produce_many(topic_name, [b"x"] * 3)
    async with AIOConsumer(consumer_config(kafka_bootstrap, f"g-{topic_name}")) as consumer:
        consumer.assign([TopicPartition(topic_name, 0, OFFSET_BEGINNING)])
        await read(consumer, 3)
        caught_up = consumer.lag()  # measured: no other call in progress
        waiting = asyncio.create_task(consumer.getmany(timeout=3))
        await asyncio.sleep(0.3)  # in librdkafka's poll, on the consumer's thread

        started = time.monotonic()
        during = consumer.lag()
        took = time.monotonic() - started
        # (confluent-kafka holds a call from another thread until a poll returns: 3 s here)
        assert took < 0.1
        assert await waiting == []
        after = consumer.lag()

    # During the read, what was measured last; after it, measured again.
    assert caught_up == during == after == {TopicPartition(topic_name, 0): 0}


def test_consumer_outside_a_running_loop_is_refused() -> None:
    with pytest.raises(NoRunningLoopError):
        AIOConsumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g"})


async def test_getmany_refuses_a_max_records_below_one() -> None:
    async with AIOConsumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g"}) as consumer:
        with pytest.raises(ValueError, match="max_records must be at least 1"):
            await consumer.getmany(max_records=0, timeout=5)


async def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        AIOConsumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g"}, batch_size=0)


async def test_an_unknown_deserialization_error_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="must be 'raise' or 'skip', not 'ignore'"):
        AIOConsumer(
            {"bootstrap.servers": "127.0.0.1:1", "group.id": "g"},
            on_deserialization_error="ignore",  # type: ignore[arg-type]
        )


async def test_async_for_hands_over_records_in_order_with_a_small_batch_size(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await asyncio.gather(
        *(producer.produce(topic_name, b"%d" % i, partition=0) for i in range(700))
    )
    config = {**consumer_config(kafka_bootstrap, f"g-{topic_name}"), "enable.auto.commit": False}
    async with AIOConsumer(config, batch_size=10) as consumer:
        consumer.assign([TopicPartition(topic_name, 0, OFFSET_BEGINNING)])
        seen = []
        async for record in consumer:
            seen.append(int(record.value))
            if len(seen) == 700:
                break
        # Made 10 at a time (the batch size, under the 256 of a chunk): the position is just
        # past what was consumed, and what was handed over is exactly what was produced.
        position = consumer.position([TopicPartition(topic_name, 0)])[0].offset
    assert seen == list(range(700))
    assert 700 <= position <= 710


async def test_getmany_returns_as_soon_as_a_record_arrives(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await producer.produce(topic_name, b"first")
    async with AIOConsumer(
        consumer_config(kafka_bootstrap, f"g-{topic_name}"), [topic_name]
    ) as consumer:
        await read(consumer, 1)  # joined and positioned

        async def produce_later() -> None:
            await asyncio.sleep(0.3)
            await producer.produce(topic_name, b"second")

        later = asyncio.create_task(produce_later())
        started = time.monotonic()
        records = await consumer.getmany(max_records=500, timeout=10)
        waited = time.monotonic() - started
        await later

    assert [r.value for r in records] == [b"second"]
    assert waited < 3


async def test_rebalance_callbacks_can_commit_read_watermarks_and_choose_offsets(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await producer.produce_many(topic_name, [str(i).encode() for i in range(10)])
    calls: list[str] = []

    async def on_assign(consumer: AIOConsumer, partitions: list[TopicPartition]) -> None:
        low, high = await consumer.watermarks(partitions[0])
        calls.append(f"watermarks {low} {high}")
        # Calls that do not wait, made while the consumer's thread is inside its call to
        # librdkafka (it waits for this callback): they run there, not on the loop.
        calls.append(f"position {len(consumer.position(partitions))}")
        consumer.assignment()
        for partition in partitions:
            partition.offset = 7  # start here, not at the beginning

    async def on_revoke(consumer: AIOConsumer, partitions: list[TopicPartition]) -> None:
        await consumer.commit()
        calls.append("committed")

    config = consumer_config(kafka_bootstrap, f"g-{topic_name}")
    async with AIOConsumer(
        config, [topic_name], on_assign=on_assign, on_revoke=on_revoke
    ) as consumer:
        records = await read(consumer, 3)
        await consumer.seek(TopicPartition(topic_name, 0, 8))
        again = await read(consumer, 2)

    assert calls == ["watermarks 0 10", "position 1", "committed"]
    assert [r.offset for r in records] == [7, 8, 9]
    assert [r.offset for r in again] == [8, 9]
