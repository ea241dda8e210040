"""Live push: bounded per-client queues, drops counted, slow clients disconnected; an idle
hub stops fetching and resumes without missing what came after a new subscriber."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from kafkaloop import AIOAdminClient, AIOProducer, ConsumerError
from kafkaloop.push import Broadcaster, SlowClientError, Subscription

# Nothing listens here: these tests exercise the fan-out, not Kafka.
CONFIG = {"bootstrap.servers": "127.0.0.1:1"}


@pytest.fixture
async def hub() -> AsyncIterator[Broadcaster]:
    hub = Broadcaster(CONFIG, ["items"], encode=lambda r: "", queue_size=3, slow_timeout=0.2)
    yield hub
    await hub.stop()


async def test_a_full_client_has_drops_counted_and_others_get_everything(hub: Broadcaster) -> None:
    slow, fast = hub.subscribe(), hub.subscribe()
    received: list[str] = []
    for i in range(10):
        hub._push(str(i))
        received.append(await fast.get())

    assert received == [str(i) for i in range(10)]
    assert slow.dropped == 7
    assert hub.dropped == 7
    assert hub.delivered == 13  # all 10 to one, 3 to the other: a drop is not a delivery
    assert [await slow.get() for _ in range(3)] == ["0", "1", "2"]


async def test_a_client_full_for_too_long_is_disconnected(hub: Broadcaster) -> None:
    slow = hub.subscribe()
    for i in range(4):
        slow.offer(str(i))
    await asyncio.sleep(0.3)
    slow.offer("late")

    assert slow.closed_reason is not None
    assert "too slow" in slow.closed_reason
    assert hub.subscribers == 0
    assert [await slow.get() for _ in range(3)] == ["0", "1", "2"]
    with pytest.raises(SlowClientError, match="too slow"):
        await slow.get()


async def test_closing_a_subscription_wakes_its_reader(hub: Broadcaster) -> None:
    subscription = hub.subscribe()
    reader = asyncio.create_task(subscription.get())
    await asyncio.sleep(0.05)

    subscription.close("bye")

    with pytest.raises(SlowClientError, match="bye"):
        await reader
    assert hub.subscribers == 0


class _Ends:
    """Answers a hub's question about each partition: its ends (low, high)."""

    def __init__(self, ends: dict[int, tuple[int, int]]) -> None:
        self.ends = ends

    async def watermarks(self, tp: TopicPartition, timeout: float = 10.0) -> tuple[int, int]:
        return self.ends[tp.partition]


async def test_partitions_start_at_their_end_then_where_the_push_left_off_and_new_ones_whole(
    hub: Broadcaster,
) -> None:
    def assign(*partitions: int) -> list[TopicPartition]:
        return [TopicPartition("items", p) for p in partitions]

    hub._at_start = {"items": frozenset({0, 1})}  # as start() found the cluster
    first = assign(0, 1)
    await hub._on_assign(_Ends({0: (0, 10), 1: (0, 20)}), first)  # type: ignore[arg-type]
    assert [tp.offset for tp in first] == [10, 20]  # what the topic had: at their ends

    hub._next["items", 0] = 14  # read up to 14 of partition 0, nothing more of 1
    # The group lost both, then gave them back with a third the topic gained meanwhile.
    again = assign(0, 1, 2)
    await hub._on_assign(_Ends({0: (0, 30), 1: (25, 40), 2: (3, 5)}), again)  # type: ignore[arg-type]
    # Where it left off (partition 1's records from 20 are gone: from the first one left),
    # and the new partition from its first record.
    assert [tp.offset for tp in again] == [14, 25, 3]


async def test_a_hub_that_cannot_list_the_topics_at_start_starts_every_partition_at_its_end(
    hub: Broadcaster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def unreachable(timeout: float = 10.0) -> dict[str, list[int]]:
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    monkeypatch.setattr(hub._consumer, "topics", unreachable)
    await hub.start(timeout=0.1)
    partitions = [TopicPartition("items", 0)]
    await hub._on_assign(_Ends({0: (0, 10)}), partitions)  # type: ignore[arg-type]

    # Not its whole history, as if the partition were new: where it ends now.
    assert [tp.offset for tp in partitions] == [10]
    assert "could not list the topics" in caplog.text


async def test_a_topic_the_broker_could_not_list_at_start_is_read_from_its_end(
    hub: Broadcaster, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def topics(timeout: float = 10.0) -> dict[str, list[int]]:
        # "items" exists but its partitions were not known (its leader being elected, say).
        return {"items": [], "other": [0]}

    monkeypatch.setattr(hub._consumer, "topics", topics)
    await hub.start(timeout=0.1)
    partitions = [TopicPartition("items", 0), TopicPartition("later", 0)]
    await hub._on_assign(_Ends({0: (0, 10)}), partitions)  # type: ignore[arg-type]

    # Not its whole history, as if it were new; a topic made since start() is read whole.
    assert [tp.offset for tp in partitions] == [10, 0]


class _Unreachable:
    """A consumer that answers the ends of partitions 1 and 2 only, and no time lookup."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    async def watermarks(self, tp: TopicPartition, timeout: float = 10.0) -> tuple[int, int]:
        self.asked.append(tp.partition)
        if tp.partition in (1, 2):
            return (0, 50)
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    async def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float = 10.0
    ) -> list[TopicPartition]:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))


async def test_once_the_broker_fails_to_place_a_partition_the_rest_start_without_asking(
    hub: Broadcaster, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreachable = _Unreachable()
    monkeypatch.setattr(hub, "_consumer", unreachable)
    hub._at_start = {"items": frozenset({0, 1, 2, 4})}  # 3 came since
    hub._next = {("items", 0): 7, ("items", 2): 9}
    hub._stale = {("items", 2)}  # left off before a pause; the hub fetches again since
    partitions = [TopicPartition("items", p) for p in (1, 2, 0, 3, 4)]

    await hub._on_assign(unreachable, partitions)  # type: ignore[arg-type]

    assert [tp.offset for tp in partitions] == [
        50,  # asked: had at start, never read: its end
        OFFSET_END,  # its time lookup failed: not from before the pause (9), from its end
        7,  # not asked any more: where it left off
        OFFSET_BEGINNING,  # new: whole
        OFFSET_END,  # had at start: from now
    ]
    assert unreachable.asked == [1, 2]  # nothing after the first failure
    assert hub._next == {("items", 0): 7, ("items", 1): 50}  # the others: at their first read
    assert hub._stale == set()
    assert hub._unsettled == {("items", p) for p in range(5)}
    assert hub._assigned.is_set()


async def test_settling_seeks_and_resumes_every_partition_it_can(
    hub: Broadcaster, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = hub._consumer
    calls: list[tuple[str, list[tuple[int, int]]]] = []
    assigned = [TopicPartition("items", p) for p in range(3)]

    async def seek(tp: TopicPartition) -> None:
        if tp.partition == 0:  # taken away during the awaits
            raise KafkaException(KafkaError(KafkaError._STATE))
        calls.append(("seek", [(tp.partition, tp.offset)]))

    async def resume(partitions: list[TopicPartition]) -> None:
        calls.append(("resume", sorted((tp.partition, tp.offset) for tp in partitions)))

    monkeypatch.setattr(consumer, "assignment", lambda: assigned)
    monkeypatch.setattr(consumer, "seek", seek)
    monkeypatch.setattr(consumer, "resume", resume)
    hub._next = {("items", 0): 5, ("items", 1): 6}  # partition 2: where it is is not known
    hub._unsettled = {("items", 0), ("items", 1), ("items", 2), ("items", 9)}  # 9: not yet

    await hub._settle()

    assert calls == [("seek", [(1, 6)]), ("resume", [(0, -1001), (1, -1001), (2, -1001)])]
    assert hub._unsettled == {("items", 9)}


async def eventually(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.05)


async def idle_hub(config: dict[str, str], topic: str) -> Broadcaster:
    """A hub (not started) on a new 3-partition topic, pausing after 0.3 s without clients."""
    async with AIOAdminClient(config) as admin:
        await admin.create_topics([NewTopic(topic, num_partitions=3)])
    return Broadcaster(config, [topic], encode=lambda r: (r.value or b"").decode(), idle_pause=0.3)


@contextlib.asynccontextmanager
async def paused_hub(bootstrap: str, topic: str) -> AsyncIterator[tuple[Broadcaster, AIOProducer]]:
    """A started idle_hub() once it has paused for want of clients, and a producer."""
    config = {"bootstrap.servers": bootstrap}
    hub = await idle_hub(config, topic)
    try:
        async with AIOProducer(config) as producer:
            await hub.start()
            await eventually(lambda: hub.paused)
            yield hub, producer
    finally:
        await hub.stop()


async def test_an_idle_hub_stops_fetching_and_resumes_from_its_next_subscriber(
    kafka_bootstrap: str, topic_name: str
) -> None:
    async with paused_hub(kafka_bootstrap, topic_name) as (hub, producer):
        consumer = hub._consumer

        def positions() -> list[int]:  # (TopicPartitions compare without their offsets)
            return [tp.offset for tp in consumer.position(consumer.assignment())]

        before = positions()
        # Nobody listens: these are not fetched, and never pushed.
        await producer.produce_many(topic_name, [f"old{i}".encode() for i in range(30)])
        await asyncio.sleep(1.0)
        assert positions() == before

        subscription = hub.subscribe()
        # At once, before the hub has resumed: nothing produced from here may be missed.
        await producer.produce_many(
            topic_name, [(str(i).encode(), f"new{i}".encode()) for i in range(20)]
        )
        pushed = [await asyncio.wait_for(subscription.get(), 20) for _ in range(20)]
        await asyncio.sleep(0.5)

        assert not hub.paused
        assert sorted(pushed) == sorted(f"new{i}" for i in range(20))
        assert subscription._items == collections.deque()  # nothing older came after

        subscription.close()
        await eventually(lambda: hub.paused)


async def test_partitions_given_back_while_a_client_waits_resume_from_when_it_came(
    kafka_bootstrap: str, topic_name: str
) -> None:
    """The group takes a paused hub's partitions away (a lost session, say), a client comes,
    and the group gives them back: librdkafka would keep them paused; the hub reads them from
    the first record stamped since the client came."""
    async with paused_hub(kafka_bootstrap, topic_name) as (hub, producer):
        consumer = hub._consumer
        consumer.unsubscribe()  # every partition taken away while paused
        await eventually(lambda: not consumer.assignment())
        await producer.produce_many(topic_name, [f"old{i}".encode() for i in range(30)])
        await asyncio.sleep(0.05)  # (records are stamped in milliseconds)

        subscription = hub.subscribe()
        await eventually(lambda: not hub.paused)  # resumed, with nothing assigned
        await producer.produce_many(
            topic_name, [(str(i).encode(), f"new{i}".encode()) for i in range(10)]
        )
        consumer.subscribe([topic_name])  # and given back
        pushed = [await asyncio.wait_for(subscription.get(), 20) for _ in range(10)]
        await asyncio.sleep(0.5)

        assert sorted(pushed) == sorted(f"new{i}" for i in range(10))
        assert subscription._items == collections.deque()  # nothing older came after
        assert len(consumer.assignment()) == 3


async def test_a_client_arriving_while_the_hub_pauses_misses_nothing(
    kafka_bootstrap: str, topic_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    hub = await idle_hub(config, topic_name)
    try:
        async with AIOProducer(config) as producer:
            consumer = hub._consumer
            real_pause = consumer.pause
            arrived: list[Subscription] = []

            async def pause_as_a_client_arrives(partitions: list[TopicPartition]) -> None:
                # The client comes in the middle of the pause, and items right after it.
                arrived.append(hub.subscribe())
                await producer.produce_many(
                    topic_name, [(str(i).encode(), f"new{i}".encode()) for i in range(10)]
                )
                await real_pause(partitions)

            monkeypatch.setattr(consumer, "pause", pause_as_a_client_arrives)
            await hub.start()
            await eventually(lambda: bool(arrived))
            [subscription] = arrived
            pushed = [await asyncio.wait_for(subscription.get(), 20) for _ in range(10)]

            assert sorted(pushed) == sorted(f"new{i}" for i in range(10))
            assert not hub.paused
    finally:
        await hub.stop()


async def test_a_partition_the_topic_gains_is_pushed_whole_and_the_others_read_on(
    kafka_bootstrap: str, topic_name: str
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    async with AIOAdminClient(config) as admin:
        await admin.create_topics([NewTopic(topic_name, num_partitions=1)])
    # The hub hears of a new partition at its next metadata refresh: here within a second.
    hub = Broadcaster(
        {**config, "topic.metadata.refresh.interval.ms": 1000},
        [topic_name],
        encode=lambda r: (r.value or b"").decode(),
        queue_size=1000,
    )
    try:
        await hub.start()
        # The others read on: the assignment is incremental, no partition is taken back.
        assert hub._consumer._cooperative
        subscription = hub.subscribe()
        async with AIOAdminClient(config) as admin, AIOProducer(config) as producer:
            await admin.create_partitions({topic_name: 2})
            # Once the cluster says so (its metadata may lag), through a producer that has not
            # learnt of one partition only.
            for _ in range(100):
                described = await admin.describe_topics([topic_name])
                if len(described[topic_name].partitions) == 2:
                    break
                await asyncio.sleep(0.1)
            async with AIOProducer(config) as later:
                await later.produce(topic_name, b"first-of-the-new", partition=1)
            # Partition 0 goes on meanwhile: none of it may be missed while the hub takes on
            # the new one.
            for i in range(100):
                await producer.produce(topic_name, f"old{i}".encode(), partition=0)
                await asyncio.sleep(0.03)
            pushed = [await asyncio.wait_for(subscription.get(), 20) for _ in range(101)]
    finally:
        await hub.stop()

    assert sorted(pushed) == sorted(["first-of-the-new", *(f"old{i}" for i in range(100))])


async def test_a_topic_made_after_the_hub_started_is_pushed_whole(
    kafka_bootstrap: str, topic_name: str
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    hub = Broadcaster(
        {**config, "topic.metadata.refresh.interval.ms": 1000},
        [topic_name],
        encode=lambda r: (r.value or b"").decode(),
    )
    try:
        await hub.start(timeout=0.5)  # no topic yet: no partitions
        subscription = hub.subscribe()
        async with AIOAdminClient(config) as admin, AIOProducer(config) as producer:
            await admin.create_topics([NewTopic(topic_name, num_partitions=1)])
            await producer.produce(topic_name, b"first")  # before the hub hears of the topic
            pushed = await asyncio.wait_for(subscription.get(), 20)
    finally:
        await hub.stop()

    assert pushed == "first"


async def test_a_regex_subscription_pushes_a_topic_made_later_whole_and_the_others_from_now(
    kafka_bootstrap: str, topic_name: str
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    async with AIOAdminClient(config) as admin, AIOProducer(config) as producer:
        await admin.create_topics([NewTopic(f"{topic_name}-old", num_partitions=1)])
        await producer.produce(f"{topic_name}-old", b"history")
        hub = Broadcaster(
            {**config, "topic.metadata.refresh.interval.ms": 1000},
            [f"^{topic_name}-.*"],
            encode=lambda r: (r.value or b"").decode(),
        )
        try:
            await hub.start()
            subscription = hub.subscribe()
            await admin.create_topics([NewTopic(f"{topic_name}-new", num_partitions=1)])
            await producer.produce(f"{topic_name}-new", b"first")  # before the hub hears of it
            await producer.produce(f"{topic_name}-old", b"now")
            pushed = [await asyncio.wait_for(subscription.get(), 20) for _ in range(2)]
            await asyncio.sleep(0.5)
        finally:
            await hub.stop()

    assert sorted(pushed) == ["first", "now"]
    assert subscription._items == collections.deque()


async def test_settling_tries_again_what_it_could_not_settle_and_is_still_assigned(
    hub: Broadcaster, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = hub._consumer
    assigned = [TopicPartition("items", p) for p in range(2)]
    paused: list[list[int]] = []

    async def pause(partitions: list[TopicPartition]) -> None:
        paused.append(sorted(tp.partition for tp in partitions))
        del assigned[1]  # taken away meanwhile
        raise ConsumerError("the last read failed")

    monkeypatch.setattr(consumer, "assignment", lambda: list(assigned))
    monkeypatch.setattr(consumer, "pause", pause)
    hub._paused = True
    hub._unsettled = {("items", 0), ("items", 1), ("items", 9)}  # 9: not yet assigned

    await hub._settle()

    assert paused == [[0, 1]]
    assert hub._unsettled == {("items", 0), ("items", 9)}  # 0 again next turn; 1 is gone


async def test_a_pause_leaves_every_partition_to_be_sought_by_the_resume(
    hub: Broadcaster, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = hub._consumer
    assigned = [TopicPartition("items", p) for p in range(2)]

    async def pause(partitions: list[TopicPartition]) -> None:
        pass

    monkeypatch.setattr(consumer, "assignment", lambda: list(assigned))
    monkeypatch.setattr(consumer, "pause", pause)
    # Partition 1 has not been read yet (it started at a logical offset), 7 was lost earlier.
    hub._next = {("items", 0): 5, ("items", 7): 3}

    await hub._pause()

    # Any of them given back after the next resume starts from its client's arrival.
    assert hub._stale == {("items", 0), ("items", 1), ("items", 7)}
    assert hub.paused
