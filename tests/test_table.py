"""TopicTable: its start (waiting out a cluster that has just started), its bound, and the
partitions added to its topic while it runs."""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from kafkaloop import AIOAdminClient, AIOProducer, ConsumerRecord
from kafkaloop.table import TopicTable, watermarks_when_ready


class _Consumer:
    """Answers watermarks() with the errors it is given, then with (0, 5)."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.asked = 0

    async def watermarks(self, partition: TopicPartition) -> tuple[int, int]:
        self.asked += 1
        if self.errors:
            code = self.errors.pop(0)
            raise KafkaException(KafkaError(code, "Failed to get watermark offsets"))
        return 0, 5


async def test_watermarks_are_asked_again_while_the_leader_is_being_elected() -> None:
    consumer = _Consumer(KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)

    assert await watermarks_when_ready(consumer, TopicPartition("t", 0)) == (0, 5)
    assert consumer.asked == 3


async def test_an_error_that_does_not_pass_is_raised_at_once() -> None:
    consumer = _Consumer(KafkaError.TOPIC_AUTHORIZATION_FAILED)

    with pytest.raises(KafkaException) as caught:
        await watermarks_when_ready(consumer, TopicPartition("t", 0))
    assert caught.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert consumer.asked == 1


async def test_waiting_out_errors_ends_at_the_deadline() -> None:
    consumer = _Consumer(*[KafkaError.NOT_LEADER_FOR_PARTITION] * 100)

    with pytest.raises(KafkaException):
        await watermarks_when_ready(consumer, TopicPartition("t", 0), within=0.5)
    assert 2 <= consumer.asked < 10


async def test_a_bounded_table_skips_new_keys_once_full_and_a_deletion_makes_room(
    kafka_bootstrap: str, topic_name: str
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    async with AIOAdminClient(config) as admin:
        await admin.create_topics([NewTopic(topic_name, 1)])
    async with AIOProducer(config) as producer:
        for key, value in [(b"a", b"1"), (b"b", b"1"), (b"c", b"1"), (b"a", b"2")]:
            await producer.produce(topic_name, value, key)
        folded: list[bytes | None] = []

        def fold(_previous: bytes | None, record: ConsumerRecord) -> bytes | None:
            folded.append(record.key)
            value: bytes | None = record.value
            return value

        table: TopicTable[bytes] = TopicTable(config, topic_name, fold=fold, max_keys=2)
        await table.start()
        try:
            await asyncio.wait_for(table.ready.wait(), 30)
            before = dict(table.items()), table.skipped, table.full
            await producer.produce(topic_name, None, b"a")  # a tombstone: room for one more
            await producer.produce(topic_name, b"2", b"c")
            for _ in range(600):  # 30 s at most
                if table.applied + table.skipped == 6:
                    break
                await asyncio.sleep(0.05)
            after = dict(table.items()), table.skipped
        finally:
            await table.stop()

    assert before == ({b"a": b"2", b"b": b"1"}, 1, True)
    assert after == ({b"b": b"1", b"c": b"2"}, 1)
    assert folded == [b"a", b"b", b"a", b"a", b"c"]  # the skipped record was not folded


async def test_a_table_reads_partitions_added_to_its_topic_while_it_runs(
    kafka_bootstrap: str, topic_name: str
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    async with AIOAdminClient(config) as admin, AIOProducer(config) as producer:
        await admin.create_topics([NewTopic(topic_name, 1)])
        await producer.produce(topic_name, b"1", b"old", partition=0)
        table: TopicTable[bytes] = TopicTable(config, topic_name, partitions_every=0.2)
        await table.start()
        try:
            await asyncio.wait_for(table.ready.wait(), 30)
            await admin.create_partitions({topic_name: 3})
            async with AIOProducer(config) as later:  # (the first knows of one partition)
                for partition in (1, 2):
                    await later.produce(
                        topic_name, b"1", f"new{partition}".encode(), partition=partition
                    )
            await producer.produce(topic_name, b"2", b"old", partition=0)
            for _ in range(600):  # 30 s at most
                if len(table) == 3 and table.get(b"old") == b"2":
                    break
                await asyncio.sleep(0.05)
            held = dict(table.items())
        finally:
            await table.stop()

    assert held == {b"old": b"2", b"new1": b"1", b"new2": b"1"}
    assert table.applied == 4


def test_a_table_holds_at_least_one_key() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        TopicTable({}, "t", max_keys=0)
    with pytest.raises(ValueError, match="partitions_every"):
        TopicTable({}, "t", partitions_every=0)
