"""Faults against real brokers: every acknowledged record is in the topic, exactly once.

The bar is Kafka's own system tests: acked is a subset of consumed, and with idempotence there
are no duplicates. Figures are printed (run with -s) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka.admin import NewTopic

from kafkaloop import (
    AIOAdminClient,
    AIOConsumer,
    AIOProducer,
    DeliveryError,
    QueueFullError,
    RecordMetadata,
)
from kafkaloop.broker import LocalKafka


async def _leader(admin: AIOAdminClient, topic: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = (await admin.describe_topics([topic]))[topic]
        if info.partitions and info.partitions[0].leader >= 0:
            return info.partitions[0].leader
        await asyncio.sleep(0.2)
    raise AssertionError(f"{topic} has no leader")


async def _read_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": f"verify-{time.monotonic_ns()}",
        "isolation.level": "read_committed",
    }
    async with AIOConsumer(config) as consumer:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        values: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(values) < expected and time.monotonic() < deadline:
            values += [r.value for r in await consumer.getmany(5000, timeout=1.0)]
        values += [r.value for r in await consumer.getmany(5000, timeout=2.0)]
        return values


@pytest.mark.cluster
@pytest.mark.slow
async def test_leader_killed_under_load_loses_and_duplicates_nothing(
    kafka_cluster: LocalKafka, topic_name: str
) -> None:
    bootstrap = kafka_cluster.bootstrap_servers
    async with AIOAdminClient({"bootstrap.servers": bootstrap}) as admin:
        await admin.create_topics(
            [
                NewTopic(
                    topic_name,
                    num_partitions=1,
                    replication_factor=3,
                    config={"min.insync.replicas": "2"},
                )
            ]
        )
        leader = await _leader(admin, topic_name)
    victim = leader - 1  # node ids are index + 1

    total, concurrency = 20_000, 200
    acked: list[int] = []
    failed: list[DeliveryError] = []
    stall = 0.0
    last_ack = time.monotonic()
    config = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "message.timeout.ms": 60_000,
    }

    quarter, three_quarters = asyncio.Event(), asyncio.Event()

    def outcome() -> None:
        if len(acked) >= total // 4:
            quarter.set()
        if len(acked) + len(failed) >= total * 3 // 4:
            three_quarters.set()

    async with AIOProducer(config) as producer:
        counter = iter(range(total))

        async def user() -> None:
            nonlocal stall, last_ack
            for i in counter:
                try:
                    md = await producer.produce(topic_name, str(i).encode())
                except DeliveryError as exc:
                    failed.append(exc)
                    outcome()
                    continue
                assert isinstance(md, RecordMetadata)
                now = time.monotonic()
                stall = max(stall, now - last_ack)
                last_ack = now
                acked.append(i)
                outcome()

        users = [asyncio.create_task(user()) for _ in range(concurrency)]
        await quarter.wait()
        killed_at = len(acked)
        await asyncio.to_thread(kafka_cluster.stop_node, victim, hard=True)
        await three_quarters.wait()
        await asyncio.to_thread(kafka_cluster.start_node, victim)
        done, _ = await asyncio.wait(users, timeout=180)
        assert len(done) == concurrency, "some produces hung"

    values = await _read_all(bootstrap, topic_name, len(acked))
    consumed = Counter(int(v) for v in values)
    duplicates = sum(n - 1 for n in consumed.values() if n > 1)
    lost = set(acked) - set(consumed)
    print(
        f"\nleader {leader} killed after {killed_at} acks; acked {len(acked)}, failed "
        f"{len(failed)}, consumed {len(values)}, duplicates {duplicates}, lost {len(lost)}, "
        f"longest stall {stall:.2f}s"
    )

    assert len(acked) + len(failed) == total  # every produce had exactly one outcome
    assert lost == set()
    assert duplicates == 0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


@pytest.mark.slow
async def test_frozen_broker_keeps_memory_bounded_and_every_produce_resolves(
    tmp_path: Path, topic_name: str
) -> None:
    kafka = LocalKafka(1, state_dir=tmp_path / "kafka")
    await asyncio.to_thread(kafka.start)
    outcomes: Counter[str] = Counter()
    try:
        config = {
            "bootstrap.servers": kafka.bootstrap_servers,
            "message.timeout.ms": 8000,
            "queue.buffering.max.messages": 20_000,
        }
        async with AIOProducer(config, queue_full_timeout=1.0, max_waiting=1000) as producer:
            await producer.produce(topic_name, b"warm-up")
            baseline = peak = _rss_bytes()
            kafka.pause_node(0)
            stop_at = time.monotonic() + 6

            async def flood() -> None:  # fire-and-forget, as fast as it will go
                while time.monotonic() < stop_at:
                    try:
                        producer.produce_nowait(topic_name, b"x" * 100)
                    except QueueFullError:
                        outcomes["nowait: queue full"] += 1
                        await asyncio.sleep(0.001)

            async def user() -> None:  # awaited produces
                while time.monotonic() < stop_at:
                    try:
                        await producer.produce(topic_name, b"y" * 100)
                        outcomes["awaited: delivered"] += 1
                    except QueueFullError:
                        outcomes["awaited: queue full"] += 1
                    except DeliveryError as exc:
                        outcomes[f"awaited: {exc.error.name()}"] += 1

            async def sample() -> None:
                nonlocal peak
                while time.monotonic() < stop_at + 10:
                    peak = max(peak, _rss_bytes())
                    await asyncio.sleep(0.2)

            sampler = asyncio.create_task(sample())
            await asyncio.gather(flood(), *(user() for _ in range(100)))
            kafka.resume_node(0)
            after = await producer.produce(topic_name, b"after")
            remaining = await producer.flush(30)
            sampler.cancel()
            metrics = producer.metrics
    finally:
        await asyncio.to_thread(kafka.stop)

    growth = (peak - baseline) / 2**20
    print(f"\nfrozen 6 s: {dict(outcomes)}; RSS +{growth:.0f} MiB; {metrics}")
    assert outcomes["nowait: queue full"] > 0
    assert (
        outcomes["awaited: queue full"]
        + sum(n for k, n in outcomes.items() if k.startswith("awaited: _"))
        > 0
    )
    assert growth < 200
    assert after.offset >= 1
    assert remaining == 0
    assert metrics.in_flight == 0
    assert metrics.produced == metrics.delivered + metrics.failed
