"""Awaited produce: kafkaloop against the design note's bridge and the asyncio peers.

    .venv/bin/python -m bench.producer            # about six minutes on two cores
    .venv/bin/python -m bench.producer --quick    # one round, fewer messages

Every cell is N awaited produces of 100-byte messages by C concurrent tasks, against the same
broker, in rounds that interleave the contenders so drift hits all alike. CPU is the whole
process's (every thread, librdkafka's included) per message; "overhead" is that minus the
asyncio floor: the same tasks awaiting futures that the loop resolves itself.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench._common import (
    RESULTS,
    Progress,
    bench_kafka,
    machine_note,
    markdown_table,
    median,
    percentile,
    write_csv,
)
from bench.baseline import BaselineProducer
from kafkaloop import AIOProducer

PAYLOAD = b"x" * 100
Send = Callable[[bytes], Awaitable[Any]]


@dataclass
class Opened:
    send: Send
    close: Callable[[], Awaitable[Any]]


async def open_kafkaloop(
    bootstrap: str, topic: str, extra: dict[str, Any], *, poll_thread: bool = False
) -> Opened:
    producer = AIOProducer({"bootstrap.servers": bootstrap, **extra}, poll_thread=poll_thread)
    produce = producer.produce

    def send(value: bytes) -> Awaitable[Any]:
        return produce(topic, value)

    return Opened(send, producer.close)


async def open_baseline(bootstrap: str, topic: str, extra: dict[str, Any]) -> Opened:
    producer = BaselineProducer({"bootstrap.servers": bootstrap, **extra})

    def send(value: bytes) -> Awaitable[Any]:
        return producer.produce(topic, value)

    async def close() -> None:
        await asyncio.to_thread(producer._producer.flush, 10)
        producer.close()

    return Opened(send, close)


async def open_confluent_aio(bootstrap: str, topic: str, extra: dict[str, Any]) -> Opened:
    from confluent_kafka.aio import AIOProducer as ConfluentAIOProducer

    producer = ConfluentAIOProducer({"bootstrap.servers": bootstrap, **extra})

    async def send(value: bytes) -> Any:
        delivered = await producer.produce(topic, value)
        return await delivered

    async def close() -> None:
        await producer.flush()
        await producer.close()

    return Opened(send, close)


async def open_aiokafka(bootstrap: str, topic: str, extra: dict[str, Any]) -> Opened:
    from aiokafka import AIOKafkaProducer

    # acks="all" as librdkafka's default, so every contender waits for the same acknowledgement.
    linger = int(extra.get("linger.ms", 0))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=linger)
    await producer.start()

    def send(value: bytes) -> Awaitable[Any]:
        sent: Awaitable[Any] = producer.send_and_wait(topic, value)
        return sent

    return Opened(send, producer.stop)


async def open_floor(bootstrap: str, topic: str, extra: dict[str, Any]) -> Opened:
    loop = asyncio.get_running_loop()

    def send(value: bytes) -> Awaitable[Any]:
        future = loop.create_future()
        loop.call_soon(future.set_result, None)
        return future

    async def close() -> None:
        return None

    return Opened(send, close)


async def open_kafkaloop_linger5(bootstrap: str, topic: str, extra: dict[str, Any]) -> Opened:
    # librdkafka's default linger.ms, as the baseline has: the bridge's gain on its own.
    return await open_kafkaloop(bootstrap, topic, {"linger.ms": 5, **extra})


async def open_kafkaloop_poll_thread(bootstrap: str, topic: str, extra: dict[str, Any]) -> Opened:
    # Delivery reports served on a thread of their own instead of on the loop.
    return await open_kafkaloop(bootstrap, topic, extra, poll_thread=True)


CONTENDERS: dict[str, Callable[[str, str, dict[str, Any]], Awaitable[Opened]]] = {
    "kafkaloop": open_kafkaloop,
    "kafkaloop linger.ms=5": open_kafkaloop_linger5,
    "kafkaloop poll_thread=True": open_kafkaloop_poll_thread,
    "baseline": open_baseline,
    "confluent_kafka.aio": open_confluent_aio,
    "aiokafka": open_aiokafka,
    "asyncio floor": open_floor,
}


async def run_cell(
    send: Send, concurrency: int, total: int, limit: float
) -> tuple[int, float, float]:
    """`total` awaited sends by `concurrency` tasks (stopping early after `limit` seconds).

    Returns (messages, wall seconds, process CPU seconds).
    """
    remaining = total
    done = 0
    clock = time.perf_counter
    stop_at = clock() + limit

    async def worker() -> None:
        nonlocal remaining, done
        while remaining > 0 and clock() < stop_at:
            remaining -= 1
            await send(PAYLOAD)
            done += 1

    wall, cpu = clock(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, clock() - wall, time.process_time() - cpu


def sync_ceiling(bootstrap: str, topic: str, total: int) -> tuple[int, float, float]:
    """The synchronous confluent Producer with a per-message callback: no asyncio at all."""
    producer = Producer({"bootstrap.servers": bootstrap})
    delivered = 0

    def on_delivery(err: Any, msg: Any) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1

    for _ in range(200):  # warm-up: connection and metadata
        producer.produce(topic, PAYLOAD, on_delivery=on_delivery)
    producer.flush(10)
    delivered = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(total):
        while True:
            try:
                producer.produce(topic, PAYLOAD, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.005)
        producer.poll(0)
    producer.flush(30)
    return delivered, time.perf_counter() - wall, time.process_time() - cpu


async def lone_latency(
    open_: Callable[..., Awaitable[Opened]],
    bootstrap: str,
    topic: str,
    extra: dict[str, Any],
    samples: int,
    limit: float,
) -> list[float]:
    """Latency (ms) of awaited produces made one at a time, 10 ms apart."""
    opened = await open_(bootstrap, topic, extra)
    try:
        await opened.send(PAYLOAD)  # warm-up
        latencies: list[float] = []
        stop_at = time.perf_counter() + limit
        while len(latencies) < samples and time.perf_counter() < stop_at:
            started = time.perf_counter()
            await opened.send(PAYLOAD)
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.01)
        return latencies
    finally:
        await opened.close()


async def produce_many_vs_ceiling(bootstrap: str, topic: str, total: int) -> dict[str, float]:
    async with AIOProducer({"bootstrap.servers": bootstrap}) as producer:
        await producer.produce_many(topic, [PAYLOAD] * 1000)  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        await producer.produce_many(topic, [PAYLOAD] * total)
        many = (total / (time.perf_counter() - wall), time.process_time() - cpu)
    done, ceiling_wall, ceiling_cpu = sync_ceiling(bootstrap, topic, total)
    return {
        "produce_many msg/s": many[0],
        "sync ceiling msg/s": done / ceiling_wall,
        "ratio": many[0] / (done / ceiling_wall),
        "produce_many CPU us/msg": many[1] / total * 1e6,
        "sync ceiling CPU us/msg": ceiling_cpu / total * 1e6,
    }


def create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, num_partitions=1) for n in names]).values():
        future.result(30)


def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics(names).values():
        future.result(30)


async def main(args: argparse.Namespace) -> None:
    run = uuid.uuid4().hex[:6]
    contenders = [c for c in CONTENDERS if c in args.contenders]
    with bench_kafka() as bootstrap:
        topics = {
            c: f"bench-{re.sub('[^A-Za-z0-9._-]', '-', c)}-{run}" for c in [*contenders, "ceiling"]
        }
        create_topics(bootstrap, list(topics.values()))
        cells: dict[tuple[str, int], list[tuple[int, float, float]]] = defaultdict(list)
        ceiling: list[tuple[int, float, float]] = []
        levels = args.concurrency
        progress = Progress(args.rounds * (len(levels) * len(contenders) + 1) + 2)
        print(f"# Awaited produce, run {run}\n\n{machine_note()}\n")
        for round_ in range(args.rounds):
            progress.step(f"round {round_ + 1}: sync ceiling")
            ceiling.append(sync_ceiling(bootstrap, topics["ceiling"], args.messages))
            for concurrency in levels:
                total = args.messages if concurrency > 1 else args.messages // 50
                # A new order each round, so no contender always runs right after another.
                order = (
                    contenders[round_ % len(contenders) :] + contenders[: round_ % len(contenders)]
                )
                for name in order:
                    progress.step(f"round {round_ + 1}: {name} c={concurrency}")
                    opened = await CONTENDERS[name](bootstrap, topics[name], {})
                    try:
                        await run_cell(opened.send, concurrency, min(200, total), 5)  # warm-up
                        cells[name, concurrency].append(
                            await run_cell(opened.send, concurrency, total, args.limit)
                        )
                    finally:
                        await opened.close()

        progress.step("lone-produce latency")
        latency_rows = []
        for name, extra in [
            ("kafkaloop", {}),
            ("kafkaloop", {"linger.ms": 0}),
            ("kafkaloop linger.ms=5", {}),
            ("baseline", {}),
            ("baseline", {"linger.ms": 0}),
            ("confluent_kafka.aio", {}),
            ("aiokafka", {}),
            ("aiokafka", {"linger.ms": 0}),
        ]:
            if name not in contenders:
                continue
            samples = await lone_latency(
                CONTENDERS[name], bootstrap, topics[name], extra, args.latency_samples, 8
            )
            label = "linger.ms=0" if extra else "defaults"
            if name == "kafkaloop linger.ms=5":
                name, label = "kafkaloop", "linger.ms=5"
            latency_rows.append(
                [name, label, len(samples), percentile(samples, 50), percentile(samples, 99)]
            )
        progress.step("produce_many vs the synchronous ceiling")
        bulk = await produce_many_vs_ceiling(bootstrap, topics["kafkaloop"], args.messages * 5)
        progress.finish()
        delete_topics(bootstrap, list(topics.values()))

    rows: list[dict[str, Any]] = []
    floor_cpu = (
        {c: median([cpu / n * 1e6 for n, _, cpu in cells["asyncio floor", c]]) for c in levels}
        if "asyncio floor" in contenders
        else dict.fromkeys(levels, 0.0)
    )
    for (name, concurrency), results in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rate = median([n / wall for n, wall, _ in results])
        cpu = median([cpu / n * 1e6 for n, _, cpu in results])
        rows.append(
            {
                "concurrency": concurrency,
                "contender": name,
                "msg_per_s": round(rate),
                "cpu_us_per_msg": round(cpu, 2),
                "overhead_us_per_msg": round(cpu - floor_cpu[concurrency], 2),
                "rounds": len(results),
            }
        )
    ceiling_rate = median([n / wall for n, wall, _ in ceiling])
    ceiling_cpu = median([cpu / n * 1e6 for n, _, cpu in ceiling])
    rows.append(
        {
            "concurrency": "-",
            "contender": "sync Producer (ceiling)",
            "msg_per_s": round(ceiling_rate),
            "cpu_us_per_msg": round(ceiling_cpu, 2),
            "overhead_us_per_msg": "",
            "rounds": len(ceiling),
        }
    )
    RESULTS.mkdir(exist_ok=True)
    write_csv(RESULTS / "producer.csv", rows)

    table = markdown_table(
        ["concurrency", "contender", "msg/s", "CPU µs/msg", "overhead µs/msg"],
        [
            [
                r["concurrency"],
                r["contender"],
                r["msg_per_s"],
                r["cpu_us_per_msg"],
                r["overhead_us_per_msg"],
            ]
            for r in rows
        ],
    )
    print(f"## Throughput (median of {args.rounds} rounds, {args.messages} messages a cell)\n")
    print(table)
    print("\n## Lone awaited produce (ms)\n")
    print(markdown_table(["contender", "settings", "samples", "p50", "p99"], latency_rows))
    print("\n## produce_many\n")
    print(markdown_table(list(bulk), [list(bulk.values())]))
    print("\n## Targets at concurrency 400\n")
    print(targets(rows))


def targets(rows: list[dict[str, Any]]) -> str:
    at = {r["contender"]: r for r in rows if r["concurrency"] == 400}
    if not {"kafkaloop", "baseline"} <= set(at):
        return "(needs kafkaloop and baseline at concurrency 400)"
    ours, base = at["kafkaloop"], at["baseline"]
    lines = []
    if "kafkaloop linger.ms=5" in at:
        same = at["kafkaloop linger.ms=5"]
        lines.append(
            f"- with the baseline's settings (linger.ms=5): overhead ratio "
            f"{same['overhead_us_per_msg'] / base['overhead_us_per_msg']:.2f}, throughput ratio "
            f"{same['msg_per_s'] / base['msg_per_s']:.2f}"
        )
    lines += [
        f"- overhead ratio kafkaloop/baseline: "
        f"{ours['overhead_us_per_msg'] / base['overhead_us_per_msg']:.2f} (target <= 0.40)",
        f"- throughput ratio kafkaloop/baseline: "
        f"{ours['msg_per_s'] / base['msg_per_s']:.2f} (target >= 1.20)",
    ]
    if "kafkaloop poll_thread=True" in at:
        threaded = at["kafkaloop poll_thread=True"]
        lines.append(
            f"- with poll_thread=True: overhead ratio "
            f"{threaded['overhead_us_per_msg'] / base['overhead_us_per_msg']:.2f}, throughput "
            f"ratio {threaded['msg_per_s'] / base['msg_per_s']:.2f}"
        )
    if "aiokafka" in at:
        lines.append(
            f"- throughput ratio kafkaloop/aiokafka: "
            f"{ours['msg_per_s'] / at['aiokafka']['msg_per_s']:.2f} (target > 1)"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per cell")
    parser.add_argument("--limit", type=float, default=8.0, help="seconds per cell at most")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 100, 400, 2000])
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS))
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="one round, 5000 messages a cell")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.messages, args.latency_samples = 1, 5000, 50
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
