"""Consuming: kafkaloop against the synchronous confluent Consumer (the ceiling) and the peers.

    .venv/bin/python -m bench.consumer            # 200k 100-byte messages, 9 rounds
    .venv/bin/python -m bench.consumer --quick
    .venv/bin/python -m bench.consumer --serving-gc   # all under the service's GC settings

Each contender reads the same pre-filled topic from the beginning by manual assignment (no
group join to wait for) and touches every value. Time runs from the first record to the last;
CPU is the whole process's. With --serving-gc every contender (the synchronous one too) runs
inside kafkaloop.fastapi.serving_gc(), as the reference service's readers do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench._common import (
    RESULTS,
    Progress,
    bench_kafka,
    machine_note,
    markdown_table,
    median,
    write_csv,
)
from kafkaloop import AIOAdminClient, AIOConsumer, AIOProducer

PAYLOAD = b"x" * 100
Result = tuple[int, float, float]  # records, seconds, CPU seconds


def _config(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
    }


class _Clock:
    """Starts at the first record, stops at the last."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def start(self) -> None:
        if not self.wall:
            self.wall, self.cpu = time.perf_counter(), time.process_time()

    def result(self, count: int) -> Result:
        return count, time.perf_counter() - self.wall, time.process_time() - self.cpu


def sync_ceiling(bootstrap: str, topic: str, total: int) -> Result:
    consumer = Consumer(_config(bootstrap))
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    clock, seen, size = _Clock(), 0, 0
    try:
        while seen < total:
            for msg in consumer.consume(500, 1.0):
                clock.start()
                size += len(msg.value() or b"")
                seen += 1
        return clock.result(seen)
    finally:
        consumer.close()


async def kafkaloop_getmany(bootstrap: str, topic: str, total: int) -> Result:
    async with AIOConsumer(_config(bootstrap)) as consumer:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        clock, seen, size = _Clock(), 0, 0
        while seen < total:
            for record in await consumer.getmany(500, timeout=1.0):
                clock.start()
                size += len(record.value or b"")
                seen += 1
        return clock.result(seen)


async def kafkaloop_async_for(bootstrap: str, topic: str, total: int) -> Result:
    async with AIOConsumer(_config(bootstrap)) as consumer:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        clock, seen, size = _Clock(), 0, 0
        async for record in consumer:
            clock.start()
            size += len(record.value or b"")
            seen += 1
            if seen >= total:
                break
        return clock.result(seen)


async def confluent_aio(bootstrap: str, topic: str, total: int) -> Result:
    from confluent_kafka.aio import AIOConsumer as ConfluentAIOConsumer

    consumer = ConfluentAIOConsumer(_config(bootstrap))
    await consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    clock, seen, size = _Clock(), 0, 0
    try:
        while seen < total:
            for msg in await consumer.consume(500, 1.0):
                clock.start()
                size += len(msg.value() or b"")
                seen += 1
        return clock.result(seen)
    finally:
        await consumer.close()


async def aiokafka_getmany(bootstrap: str, topic: str, total: int) -> Result:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition as AioTopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    partition = AioTopicPartition(topic, 0)
    consumer.assign([partition])
    await consumer.seek_to_beginning(partition)
    clock, seen, size = _Clock(), 0, 0
    try:
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            for records in batches.values():
                for record in records:
                    clock.start()
                    size += len(record.value or b"")
                    seen += 1
        return clock.result(seen)
    finally:
        await consumer.stop()


CONTENDERS: dict[str, Callable[[str, str, int], Awaitable[Result]]] = {
    "kafkaloop getmany": kafkaloop_getmany,
    "kafkaloop async for": kafkaloop_async_for,
    "confluent_kafka.aio": confluent_aio,
    "aiokafka": aiokafka_getmany,
}


async def fill(bootstrap: str, topic: str, total: int) -> None:
    from confluent_kafka.admin import NewTopic

    async with AIOAdminClient({"bootstrap.servers": bootstrap}) as admin:
        await admin.create_topics([NewTopic(topic, num_partitions=1)])
    async with AIOProducer({"bootstrap.servers": bootstrap, "linger.ms": 20}) as producer:
        for start in range(0, total, 50_000):
            await producer.produce_many(topic, [PAYLOAD] * min(50_000, total - start))


async def _rounds(
    args: argparse.Namespace,
    bootstrap: str,
    topic: str,
    names: list[str],
    progress: Progress,
    results: dict[str, list[Result]],
) -> None:
    for round_ in range(args.rounds):
        progress.step(f"round {round_ + 1}: sync Consumer")
        results["sync Consumer (ceiling)"].append(
            await asyncio.to_thread(sync_ceiling, bootstrap, topic, args.messages)
        )
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            progress.step(f"round {round_ + 1}: {name}")
            results[name].append(await CONTENDERS[name](bootstrap, topic, args.messages))


async def main(args: argparse.Namespace) -> None:
    run = uuid.uuid4().hex[:6]
    topic = f"bench-consume-{run}"
    results: dict[str, list[Result]] = defaultdict(list)
    with bench_kafka() as bootstrap:
        gc_note = ", all under serving_gc()" if args.serving_gc else ""
        print(
            f"# Consuming {args.messages} messages of 100 bytes{gc_note}, run {run}\n\n"
            f"{machine_note()}\n"
        )
        await fill(bootstrap, topic, args.messages)
        names = list(CONTENDERS)
        progress = Progress(args.rounds * (len(names) + 1))
        with contextlib.ExitStack() as stack:
            if args.serving_gc:
                from kafkaloop.fastapi import serving_gc

                stack.enter_context(serving_gc())
            await _rounds(args, bootstrap, topic, names, progress, results)
        progress.finish()
        async with AIOAdminClient({"bootstrap.servers": bootstrap}) as admin:
            await admin.delete_topics([topic])

    ceiling = median([n / wall for n, wall, _ in results["sync Consumer (ceiling)"]])
    rows = []
    for name, runs in results.items():
        rate = median([n / wall for n, wall, _ in runs])
        cpu = median([cpu / n * 1e6 for n, _, cpu in runs])
        rows.append(
            {
                "contender": name,
                "msg_per_s": round(rate),
                "cpu_us_per_msg": round(cpu, 2),
                "vs_sync": round(rate / ceiling, 2),
                "rounds": len(runs),
            }
        )
    RESULTS.mkdir(exist_ok=True)
    write_csv(RESULTS / ("consumer-serving-gc.csv" if args.serving_gc else "consumer.csv"), rows)
    print(f"## Median of {args.rounds} rounds\n")
    print(
        markdown_table(
            ["contender", "msg/s", "CPU µs/msg", "vs sync Consumer"],
            [[r["contender"], r["msg_per_s"], r["cpu_us_per_msg"], r["vs_sync"]] for r in rows],
        )
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200_000)
    # Nine: a round takes seconds, and the ceiling's own rate swings by a third between
    # rounds on two shared cores.
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="one round of 50k messages")
    parser.add_argument(
        "--serving-gc",
        action="store_true",
        help="run every contender inside kafkaloop.fastapi.serving_gc()",
    )
    args = parser.parse_args()
    if args.quick:
        args.messages, args.rounds = 50_000, 1
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
