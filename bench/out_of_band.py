"""Out-of-band produce: what one message costs the event loop's thread, with no HTTP around it.

    .venv/bin/python -m bench.out_of_band            # 5 rounds of 100,000 messages per mode
    .venv/bin/python -m bench.out_of_band --quick    # 1 round of 20,000

The web benchmark's out-of-band endpoints can keep of the no-op's throughput only what the
Kafka work they leave on the loop allows (at some 120 µs a request, 1 µs is 0.8%). This measures
that work alone: the loop thread's CPU time (``time.thread_time``) per message, over producing
the messages and serving every delivery report, for each way the service produces out of band:

- ``fire-and-forget``: ``produce_nowait(topic, value, key)``, counted and failures logged;
- ``fire-and-forget, linger 20``: the same, on a producer with ``linger.ms`` 20;
- ``fire-and-forget, failures only``: the same, on a producer configured as the reference
  service's fire-and-forget one (``KafkaSettings.fire_and_forget``: ``linger.ms`` 20 and
  ``delivery.report.only.error``, so a delivered message's report makes no Python call);
- ``callback on loop``: ``produce_nowait(..., on_delivery=cb)``;
- ``callback on poll thread``: ``produce_nowait(..., on_delivery=cb, on_poll_thread=True)``
  (the callback's own work is on another thread; what it costs the loop is here);
- ``confluent-kafka``: the floor, ``Producer.produce(topic, value, key)`` with a producer-wide
  ``on_delivery`` that counts, and ``poll(0)`` on the loop's thread; no asyncio at all.

(The confluent-kafka floor's time includes its ``flush()``, on the measured thread; kafkaloop's
stops once every report is served, before its ``flush()``.) Beside it, the whole process's CPU
per message (every thread: librdkafka's, and the thread
the ``on_poll_thread`` callbacks run on, whose Python holds the same GIL as the loop).
Modes alternate within each round, so drift hits all alike; figures are medians over rounds.
Pin it to one core (``taskset -c 0``) for steadier figures. Writes bench/results/out_of_band.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench._common import Progress, bench_kafka, machine_note, markdown_table, median, report
from kafkaloop import AIOProducer, DeliveryError, RecordMetadata
from kafkaloop.settings import FIRE_AND_FORGET_LINGER_MS

VALUE = b'{"name":"bench"}'
KEY = "bench"
YIELD_EVERY = 200
"""Messages between two turns of the loop (where delivery reports are served)."""

MODES = [
    "fire-and-forget",
    "fire-and-forget, linger 20",
    "fire-and-forget, failures only",
    "callback on loop",
    "callback on poll thread",
    "confluent-kafka",
]
# The producer config of the modes that are not on kafkaloop's default producer.
CONFIGS: dict[str, dict[str, object]] = {
    "fire-and-forget, linger 20": {"linger.ms": FIRE_AND_FORGET_LINGER_MS},
    "fire-and-forget, failures only": {
        "linger.ms": FIRE_AND_FORGET_LINGER_MS,
        "delivery.report.only.error": True,
    },
}


Cost = tuple[float, float]
"""CPU seconds per message: the loop's thread, and the whole process (every thread)."""


async def _kafkaloop(producer: AIOProducer, topic: str, mode: str, count: int) -> Cost:
    delivered = 0

    def on_delivery(err: DeliveryError | None, _md: RecordMetadata) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1

    produce: Callable[[], None]
    if mode.startswith("fire-and-forget"):

        def produce() -> None:
            producer.produce_nowait(topic, VALUE, KEY)

    elif mode == "callback on loop":

        def produce() -> None:
            producer.produce_nowait(topic, VALUE, KEY, on_delivery=on_delivery)

    else:

        def produce() -> None:
            producer.produce_nowait(topic, VALUE, KEY, on_delivery=on_delivery, on_poll_thread=True)

    before = producer.metrics.delivered
    started, process_started = time.thread_time(), time.process_time()
    for i in range(count):
        produce()
        if i % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    # Every report served here, on the loop: flush() would serve the last ones on a thread.
    # (A fire-and-forget message has no callback to set an Event: the count is all there is.)
    give_up = time.monotonic() + 60
    while producer.metrics.delivered - before < count:
        if time.monotonic() > give_up or producer.metrics.failed:
            raise SystemExit(f"{mode}: {producer.metrics} after 60 s")
        await asyncio.sleep(0.001)
    if mode == "callback on poll thread":  # its callbacks, on their own thread, done too
        while delivered < count:  # (counted on another thread: nothing to await)
            if time.monotonic() > give_up:
                raise SystemExit(f"{mode}: {delivered} of {count} callbacks after 60 s")
            await asyncio.sleep(0.001)
    spent = time.thread_time() - started, time.process_time() - process_started
    await producer.flush()
    if producer.metrics.delivered - before != count:
        raise SystemExit(f"{mode}: {producer.metrics.delivered - before} of {count} delivered")
    if not mode.startswith("fire-and-forget") and delivered != count:
        raise SystemExit(f"{mode}: {delivered} of {count} callbacks")
    return spent[0] / count, spent[1] / count


def _confluent(bootstrap: str, topic: str, count: int) -> Cost:
    delivered = 0

    def on_delivery(err: object, _msg: object) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 1, "on_delivery": on_delivery}
    )
    producer.produce(topic, VALUE, KEY)
    producer.flush()
    delivered = 0
    started, process_started = time.thread_time(), time.process_time()
    for i in range(count):
        producer.produce(topic, VALUE, KEY)
        if i % YIELD_EVERY == 0:
            producer.poll(0)
    producer.flush()
    spent = time.thread_time() - started, time.process_time() - process_started
    if delivered != count:
        raise SystemExit(f"confluent-kafka: {delivered} of {count} delivered")
    return spent[0] / count, spent[1] / count


async def run(bootstrap: str, rounds: int, count: int) -> dict[str, list[Cost]]:
    topic = f"bench-out-of-band-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3)])[topic].result(30)
    results: dict[str, list[Cost]] = defaultdict(list)
    progress = Progress(rounds * len(MODES))
    async with contextlib.AsyncExitStack() as stack:
        producer = await stack.enter_async_context(AIOProducer({"bootstrap.servers": bootstrap}))
        await producer.produce(topic, VALUE, KEY)  # connected, metadata known
        producers = dict.fromkeys(MODES, producer)
        for mode, config in CONFIGS.items():
            producers[mode] = await stack.enter_async_context(
                AIOProducer({"bootstrap.servers": bootstrap, **config})
            )
            producers[mode].produce_nowait(topic, VALUE, KEY)
            await producers[mode].flush()
        for r in range(rounds):
            for mode in MODES[r % len(MODES) :] + MODES[: r % len(MODES)]:
                progress.step(f"round {r + 1} {mode}")
                if mode == "confluent-kafka":
                    results[mode].append(_confluent(bootstrap, topic, count))
                else:
                    results[mode].append(await _kafkaloop(producers[mode], topic, mode, count))
    progress.finish()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=100_000, help="per mode and round")
    parser.add_argument("--quick", action="store_true", help="1 round of 20,000 messages")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.messages = 1, 20_000
    if args.rounds < 1 or args.messages < YIELD_EVERY:
        parser.error(f"--rounds must be at least 1 and --messages at least {YIELD_EVERY}")
    with bench_kafka() as bootstrap:
        results = asyncio.run(run(bootstrap, args.rounds, args.messages))
    loop = {mode: [c[0] for c in costs] for mode, costs in results.items()}
    process = {mode: [c[1] for c in costs] for mode, costs in results.items()}
    floor = median(loop["confluent-kafka"])
    rows = [
        [
            mode,
            1e6 * median(loop[mode]),
            1e6 * min(loop[mode]),
            1e6 * max(loop[mode]),
            1e6 * (median(loop[mode]) - floor),
            1e6 * median(process[mode]),
        ]
        for mode in MODES
    ]
    text = "\n".join(
        [
            "# Out-of-band produce: the event loop thread's CPU per message\n",
            machine_note(),
            f"{args.rounds} round(s) of {args.messages:,} messages per mode, 3 partitions, "
            "`linger.ms` 1 (kafkaloop's default) unless the mode says otherwise; producing and "
            "serving every report.\n",
            markdown_table(
                [
                    "mode",
                    "loop thread µs / message",
                    "lowest",
                    "highest",
                    "µs over confluent-kafka",
                    "whole process µs / message",
                ],
                rows,
            ),
        ]
    )
    report("out_of_band.md", text)


if __name__ == "__main__":
    main()
