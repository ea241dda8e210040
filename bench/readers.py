"""The service's in-process readers: what each item they read costs the process.

    .venv/bin/python -m bench.readers            # 3 rounds, 80,000 items at 8,000 a second
    .venv/bin/python -m bench.readers --quick    # 1 round, 16,000 items

The reference service reads every item it produces back, in the same process: the count cache
(``TopicTable`` with ``fold=count``) and live push (``Broadcaster``). Under the web benchmark's
load that is some 8,000 items a second, and every microsecond an item costs is about 1% of the
event loop's time. Here another process produces the items at that rate (a plain confluent-kafka
producer, so none of its cost lands here) while this one runs, on a fresh 3-partition topic:

- ``nothing``: no reader at all, the floor;
- ``cache``: the count cache;
- ``push, nobody subscribed``: live push as the service runs it, which stops fetching while
  nobody listens (``idle_pause``, 1 s here);
- ``push, never paused``: the same with ``idle_pause=None``, reading and dropping every item.

For each: the event loop thread's CPU time and the whole process's (every thread) per item
produced. Modes alternate within each round; figures are medians. Pin it (``taskset -c 0``) for
steadier figures. Writes bench/results/readers.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable

from confluent_kafka.admin import AdminClient, NewTopic

from bench._common import Progress, bench_kafka, machine_note, markdown_table, median, report
from kafkaloop.push import Broadcaster
from kafkaloop.table import TopicTable, count

RATE = 8000
"""Items a second, about what the web benchmark's producing endpoints make at 400 users."""

MODES = ["nothing", "cache", "push, nobody subscribed", "push, never paused"]

_PRODUCE = """
import sys, time
from confluent_kafka import Producer
bootstrap, topic, total, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
started = time.monotonic()
for i in range(total):
    producer.produce(topic, b'{"name":"bench"}', b"bench")
    if i % 80 == 0:
        producer.poll(0)
        ahead = started + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
producer.flush()
"""


async def _start(mode: str, bootstrap: str, topic: str) -> Callable[[], Awaitable[None]] | None:
    config = {"bootstrap.servers": bootstrap}
    if mode == "cache":
        table: TopicTable[int] = TopicTable(
            {**config, "group.id": f"bench-{topic}"}, topic, fold=count
        )
        await table.start()
        return table.stop
    if mode.startswith("push"):
        hub = Broadcaster(
            config,
            [topic],
            encode=lambda r: "",
            idle_pause=1.0 if mode == "push, nobody subscribed" else None,
        )
        await hub.start()
        return hub.stop
    return None


async def _measure(mode: str, bootstrap: str, items: int) -> tuple[float, float]:
    topic = f"bench-readers-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # (kept alive until the answer)
    admin.create_topics([NewTopic(topic, num_partitions=3)])[topic].result(30)
    stop = await _start(mode, bootstrap, topic)
    try:
        await asyncio.sleep(2.0)  # past the idle pause; the readers settled
        loop_started, process_started = time.thread_time(), time.process_time()
        producer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _PRODUCE, bootstrap, topic, str(items), str(RATE)
        )
        if await producer.wait() != 0:
            raise SystemExit(f"{mode}: the producing process failed")
        await asyncio.sleep(1.5)  # what the readers still had to read
        loop_spent = time.thread_time() - loop_started
        process_spent = time.process_time() - process_started
    finally:
        if stop is not None:
            await stop()
    return loop_spent / items, process_spent / items


async def run(bootstrap: str, rounds: int, items: int) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = defaultdict(list)
    progress = Progress(rounds * len(MODES))
    for r in range(rounds):
        for mode in MODES[r % len(MODES) :] + MODES[: r % len(MODES)]:
            progress.step(f"round {r + 1} {mode}")
            results[mode].append(await _measure(mode, bootstrap, items))
    progress.finish()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=80_000, help=f"per mode and round ({RATE}/s)")
    parser.add_argument("--quick", action="store_true", help="1 round of 16,000 items")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.items = 1, 16_000
    if args.rounds < 1 or args.items < RATE:
        parser.error(f"--rounds must be at least 1 and --items at least {RATE}")
    with bench_kafka() as bootstrap:
        results = asyncio.run(run(bootstrap, args.rounds, args.items))
    rows = [
        [
            mode,
            1e6 * median([c[0] for c in results[mode]]),
            1e6 * median([c[1] for c in results[mode]]),
        ]
        for mode in MODES
    ]
    text = "\n".join(
        [
            "# The service's readers: CPU per item read\n",
            machine_note(),
            f"{args.rounds} round(s) of {args.items:,} items at {RATE:,} a second, produced by "
            "another process, 3 partitions; medians.\n",
            markdown_table(["reader", "loop thread µs / item", "whole process µs / item"], rows),
        ]
    )
    report("readers.md", text)


if __name__ == "__main__":
    main()
