"""AIOAdminClient against a real broker, including the error cases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewTopic

from kafkaloop import (
    AdminError,
    AdminErrorGroup,
    AIOAdminClient,
    AIOProducer,
    ClientClosedError,
    InvalidPartitionsError,
    InvalidReplicationFactorError,
    NoRunningLoopError,
    TopicAlreadyExistsError,
    TopicMismatchError,
    UnknownTopicError,
)
from kafkaloop.settings import bootstrap_from_env


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOAdminClient]:
    async with AIOAdminClient({"bootstrap.servers": kafka_bootstrap}) as admin:
        yield admin


async def test_create_describe_and_delete_a_topic(admin: AIOAdminClient, topic_name: str) -> None:
    await admin.create_topics([NewTopic(topic_name, num_partitions=3, replication_factor=1)])

    assert topic_name in await admin.list_topics()
    info = (await admin.describe_topics([topic_name]))[topic_name]
    assert [p.id for p in info.partitions] == [0, 1, 2]
    assert info.replication_factor == 1
    brokers = {b.id for b in (await admin.describe_cluster()).brokers}
    assert all(p.leader in brokers and p.isr == (p.leader,) for p in info.partitions)

    await admin.delete_topics([topic_name])
    assert topic_name not in await admin.list_topics()


async def test_a_deleted_topic_can_be_created_again_at_once(
    admin: AIOAdminClient, topic_name: str
) -> None:
    for partitions in (1, 2, 3):
        await admin.create_topics([NewTopic(topic_name, num_partitions=partitions)])
        info = (await admin.describe_topics([topic_name]))[topic_name]
        assert len(info.partitions) == partitions
        assert all(p.leader >= 0 for p in info.partitions)
        await admin.delete_topics([topic_name])
        assert topic_name not in await admin.list_topics()


async def test_creating_an_existing_topic_names_it(admin: AIOAdminClient, topic_name: str) -> None:
    await admin.create_topics([NewTopic(topic_name, num_partitions=1)])

    with pytest.raises(TopicAlreadyExistsError) as caught:
        await admin.create_topics([NewTopic(topic_name, num_partitions=1)])

    assert caught.value.topic == topic_name
    assert topic_name in str(caught.value)
    assert "already exists" in str(caught.value)


async def test_invalid_replication_factor_is_explained(
    admin: AIOAdminClient, topic_name: str
) -> None:
    with pytest.raises(InvalidReplicationFactorError) as caught:
        await admin.create_topics([NewTopic(topic_name, num_partitions=1, replication_factor=3)])

    assert topic_name in str(caught.value)
    assert "number of live brokers" in str(caught.value)


async def test_several_topics_report_each_outcome(admin: AIOAdminClient, topic_name: str) -> None:
    await admin.create_topics([NewTopic(f"{topic_name}-a", num_partitions=1)])

    with pytest.raises(AdminErrorGroup) as caught:
        await admin.create_topics(
            [
                NewTopic(f"{topic_name}-a", num_partitions=1),
                NewTopic(f"{topic_name}-b", num_partitions=1),
                NewTopic(f"{topic_name}-c", num_partitions=1, replication_factor=5),
            ]
        )

    group = caught.value
    assert group.succeeded == [f"{topic_name}-b"]
    kinds = {type(e): e.topic for e in group.exceptions if isinstance(e, AdminError)}
    assert kinds == {
        TopicAlreadyExistsError: f"{topic_name}-a",
        InvalidReplicationFactorError: f"{topic_name}-c",
    }
    matched, rest = group.split(TopicAlreadyExistsError)
    assert matched is not None
    assert rest is not None


async def test_unknown_topics_are_named(admin: AIOAdminClient, topic_name: str) -> None:
    with pytest.raises(UnknownTopicError, match=topic_name):
        await admin.describe_topics([topic_name])
    with pytest.raises(UnknownTopicError, match=topic_name):
        await admin.delete_topics([topic_name])


async def test_partitions_can_grow_but_not_shrink(admin: AIOAdminClient, topic_name: str) -> None:
    await admin.create_topics([NewTopic(topic_name, num_partitions=2)])

    await admin.create_partitions({topic_name: 4})
    with pytest.raises(InvalidPartitionsError, match=topic_name):
        await admin.create_partitions({topic_name: 1})

    info = (await admin.describe_topics([topic_name]))[topic_name]
    assert len(info.partitions) == 4


async def test_create_partitions_returns_once_the_metadata_shows_them(
    admin: AIOAdminClient, topic_name: str
) -> None:
    await admin.create_topics([NewTopic(topic_name, num_partitions=2)])
    real_metadata = admin._metadata
    shown: list[int] = []

    async def metadata_slow_to_show_them(
        topic: str | None, *, timeout: float | None = None
    ) -> object:
        metadata = await real_metadata(topic, timeout=timeout)
        entry = metadata.topics.get(topic_name)
        if entry is not None:
            if len(shown) < 3:  # the brokers have not heard of the new partitions yet
                entry.partitions = {i: p for i, p in entry.partitions.items() if i < 2}
            shown.append(len(entry.partitions))
        return metadata

    admin._metadata = metadata_slow_to_show_them  # type: ignore[method-assign]
    try:
        await admin.create_partitions({topic_name: 4})
    finally:
        admin._metadata = real_metadata  # type: ignore[method-assign]

    assert shown[:3] == [2, 2, 2]
    assert shown[-1] == 4  # it asked again until the metadata showed all four


async def test_ensure_topics_creates_what_is_missing_and_checks_the_rest(
    admin: AIOAdminClient, topic_name: str
) -> None:
    specs = [NewTopic(topic_name, num_partitions=2, replication_factor=1)]

    assert await admin.ensure_topics(specs) == [topic_name]
    assert await admin.ensure_topics(specs) == []
    with pytest.raises(TopicMismatchError, match="2 partitions"):
        await admin.ensure_topics([NewTopic(topic_name, num_partitions=3, replication_factor=1)])


async def test_ensure_topics_run_concurrently_both_succeed(
    admin: AIOAdminClient, topic_name: str
) -> None:
    specs = [NewTopic(topic_name, num_partitions=1, replication_factor=1)]

    created = await asyncio.gather(admin.ensure_topics(specs), admin.ensure_topics(specs))

    assert sorted(map(len, created)) == [0, 1]  # exactly one of them created it


async def test_describe_cluster_lists_the_broker(admin: AIOAdminClient) -> None:
    cluster = await admin.describe_cluster()

    ids = [b.id for b in cluster.brokers]
    assert cluster.cluster_id
    assert ids
    assert len(set(ids)) == len(ids)
    assert all(b.host and b.port > 0 for b in cluster.brokers)
    assert cluster.controller_id in (*ids, -1)
    if bootstrap_from_env() is None:
        assert ids == [1]  # the suite's own single-node broker


async def test_topic_configs_can_be_read_and_altered(
    admin: AIOAdminClient, topic_name: str
) -> None:
    await admin.create_topics([NewTopic(topic_name, num_partitions=1)])

    await admin.alter_topic_configs(
        topic_name, {"cleanup.policy": "compact", "retention.ms": "60000"}
    )
    # The controller has the change; the broker answering may learn of it a moment later.
    for _ in range(100):
        configs = await admin.describe_topic_configs(topic_name)
        if configs["retention.ms"] == "60000":
            break
        await asyncio.sleep(0.1)

    assert configs["cleanup.policy"] == "compact"
    assert configs["retention.ms"] == "60000"


async def test_consumer_group_offsets_and_record_deletion(
    admin: AIOAdminClient, kafka_bootstrap: str, topic_name: str
) -> None:
    from confluent_kafka import Consumer

    async with AIOProducer({"bootstrap.servers": kafka_bootstrap}) as producer:
        await producer.produce_many(topic_name, [b"a", b"b", b"c", b"d"])
    group = f"g-{topic_name}"
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    await asyncio.to_thread(
        consumer.commit, offsets=[TopicPartition(topic_name, 0, 3)], asynchronous=False
    )
    await asyncio.to_thread(consumer.close)

    assert group in await admin.list_consumer_groups()
    offsets = await admin.list_consumer_group_offsets(group)
    assert offsets == {TopicPartition(topic_name, 0): 3}
    description = (await admin.describe_consumer_groups([group]))[group]
    assert description.group_id == group

    low = await admin.delete_records({TopicPartition(topic_name, 0): 2})
    assert low == {TopicPartition(topic_name, 0): 2}


async def test_closed_admin_refuses_and_close_is_idempotent(kafka_bootstrap: str) -> None:
    admin = AIOAdminClient({"bootstrap.servers": kafka_bootstrap})
    await admin.close()
    await admin.close()

    with pytest.raises(ClientClosedError):
        await admin.list_topics()


def test_admin_outside_a_running_loop_is_refused() -> None:
    with pytest.raises(NoRunningLoopError):
        AIOAdminClient({"bootstrap.servers": "127.0.0.1:1"})


async def test_validate_only_creates_nothing_and_does_not_wait(
    admin: AIOAdminClient, topic_name: str
) -> None:
    started = asyncio.get_running_loop().time()
    await admin.create_topics([NewTopic(topic_name, num_partitions=1)], validate_only=True)

    assert asyncio.get_running_loop().time() - started < 5
    assert topic_name not in await admin.list_topics()


async def test_a_topic_the_metadata_never_shows_is_a_warning_not_a_hang(
    kafka_bootstrap: str, topic_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with AIOAdminClient(
        {"bootstrap.servers": kafka_bootstrap}, operation_timeout=1.0
    ) as admin:
        real_metadata = admin._metadata
        calls = 0

        async def metadata_without_the_topic(
            topic: str | None, *, timeout: float | None = None
        ) -> object:
            nonlocal calls
            calls += 1
            if calls % 2:  # a failing metadata request on the way counts as not yet
                raise AdminError("metadata request failed", topic=None)
            metadata = await real_metadata(topic, timeout=timeout)
            metadata.topics.pop(topic_name, None)
            return metadata

        admin._metadata = metadata_without_the_topic  # type: ignore[method-assign]
        started = asyncio.get_running_loop().time()
        await admin.create_topics([NewTopic(topic_name, num_partitions=1)])
        waited = asyncio.get_running_loop().time() - started
        admin._metadata = real_metadata  # type: ignore[method-assign]

        assert 1.0 <= waited < 5
        assert f"topics {topic_name}: the metadata still does not show them" in caplog.text
        assert topic_name in await admin.list_topics()  # created all the same
        await admin.delete_topics([topic_name])
        assert topic_name not in await admin.list_topics()


async def test_a_metadata_request_given_up_on_does_not_hold_up_close() -> None:
    admin = AIOAdminClient({"bootstrap.servers": "127.0.0.1:1"}, operation_timeout=3)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(admin.list_topics(), 0.3)  # it blocks its thread for 3 s
    started = time.monotonic()
    await admin.close()

    assert time.monotonic() - started < 2


async def test_a_metadata_request_given_up_on_does_not_hold_up_the_next() -> None:
    async with AIOAdminClient({"bootstrap.servers": "127.0.0.1:1"}, operation_timeout=3) as admin:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(admin.list_topics(), 0.3)
        # Its own 3 s, not queued behind the first one's.
        with pytest.raises(AdminError):
            await asyncio.wait_for(admin.describe_topics(["t"]), 4.5)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda admin: admin.describe_cluster(), id="describe_cluster"),
        pytest.param(lambda admin: admin.create_topics([NewTopic("t", 1)]), id="create_topics"),
        pytest.param(lambda admin: admin.delete_topics(["t"]), id="delete_topics"),
        pytest.param(lambda admin: admin.create_partitions({"t": 2}), id="create_partitions"),
        pytest.param(lambda admin: admin.delete_records({TopicPartition("t", 0): 1}), id="records"),
    ],
)
async def test_a_call_against_a_dead_cluster_ends_within_the_operation_timeout(
    call: Callable[[AIOAdminClient], Awaitable[object]],
) -> None:
    async with AIOAdminClient({"bootstrap.servers": "127.0.0.1:1"}, operation_timeout=2) as admin:
        started = time.monotonic()
        with pytest.raises(AdminError):
            await call(admin)  # (librdkafka's own default: 60 s)
        took = time.monotonic() - started

    assert took < 10
