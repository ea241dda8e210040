"""What each endpoint of the reference service costs the event loop's thread, without HTTP.

    .venv/bin/python -m bench.loop_cost       # under a minute (--rounds 40: about 75 s)

The web benchmark's ratios to the no-op move by up to 0.1 between runs of the same code on a
noisy machine, because they divide two throughputs measured seconds apart. This measures the
cost itself: the service's ASGI app (its middleware, FastAPI, the same body model) driven
in-process by N concurrent callers, and the CPU time its event-loop thread spends per request,
endpoint by endpoint, in rounds that take the endpoints in a shuffled order, each cell timed
until the deliveries of its requests are served (an out-of-band endpoint answers before its
delivery report comes; serving it is part of its cost). Threads are placed as ``bench web --pin
loop`` places a server's: the loop's thread alone on the first core, every other thread of the
process (librdkafka's, the executor's) on the second; the broker is not pinned. The count cache
and live push are off (``bench.readers`` measures them); ``/items0`` is the web benchmark's
floor (the no-op plus one ``await`` the loop resolves itself). An endpoint's cost over the
no-op, as a share of the no-op's, is what it keeps less of the no-op's throughput on a loop
that has all it can do, before HTTP parsing and writing (which every endpoint pays alike)
dilute it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable

from bench._common import (
    Progress,
    bench_kafka,
    machine_note,
    markdown_table,
    median,
    report,
)
from bench.suspension import asgi_request, drive

ENDPOINTS = {
    "/items5": "no-op",
    "/items0": "asyncio floor",
    "/items1": "awaited",
    "/items2": "callback on loop",
    "/items3": "callback on poll thread",
    "/items4": "fire-and-forget",
}


def place_threads(cores: list[int]) -> str:
    """This thread (the loop's) alone on the first of `cores` (the process's cores before any
    placement), the process's other threads on the second."""
    if len(cores) < 2:
        return "no placement (one core)"
    loop_thread = threading.get_native_id()
    for task in os.listdir("/proc/self/task"):
        tid = int(task)
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, {cores[0]} if tid == loop_thread else {cores[1]})
    return f"the loop's thread on core {cores[0]}, the process's other threads on core {cores[1]}"


async def cost(
    call: Callable[[], Awaitable[None]],
    total: int,
    callers: int,
    settle: Callable[[], Awaitable[None]] | None = None,
) -> tuple[float, float]:
    """Loop-thread and whole-process CPU microseconds per call, `total` calls by `callers`,
    then `settle()` (the deliveries of those calls served: waiting costs the loop nothing)."""
    thread, process = time.thread_time(), time.process_time()
    await drive(call, total, callers)
    if settle is not None:
        await settle()
    return (
        (time.thread_time() - thread) / total * 1e6,
        (time.process_time() - process) / total * 1e6,
    )


async def run(args: argparse.Namespace) -> tuple[dict[str, list[tuple[float, float]]], str]:
    from bench.apps.kafkaloop_app import app  # reads the environment when imported

    calls = {path: asgi_request(app, path) for path in ENDPOINTS}
    costs: dict[str, list[tuple[float, float]]] = {path: [] for path in ENDPOINTS}
    progress = Progress(args.rounds * len(calls))
    cores = sorted(os.sched_getaffinity(0))  # (read once: placing this thread narrows it)
    order = random.Random(1)
    async with app.router.lifespan_context(app) as state:
        assert state is not None  # (the service's lifespan yields its state)
        kafka = state["kafka"]

        async def settle() -> None:
            """Every delivery reported and served (out-of-band endpoints answer before)."""
            await kafka.producer.flush(30)
            await kafka.fire_and_forget.flush(30)

        placement = place_threads(cores)
        for call in calls.values():  # warm-up (and the middleware stack built)
            await cost(call, 2000, args.callers, settle)
        for round_ in range(args.rounds):
            place_threads(cores)  # (threads started since: a callback thread on first use)
            paths = list(calls)
            order.shuffle(paths)  # no endpoint always follows the same one
            for path in paths:
                progress.step(f"round {round_ + 1} {path}")
                costs[path].append(await cost(calls[path], args.requests, args.callers, settle))
    progress.finish()
    return costs, placement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=3_000, help="per endpoint and round")
    parser.add_argument("--callers", type=int, default=48, help="concurrent callers")
    args = parser.parse_args()
    if args.rounds < 1 or args.requests < 1 or args.callers < 1:
        parser.error("--rounds, --requests and --callers must be at least 1")
    os.environ.setdefault("KAFKALOOP_ITEM_CACHE", "false")
    os.environ.setdefault("KAFKALOOP_LIVE_PUSH", "false")
    with bench_kafka() as bootstrap:
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        costs, placement = asyncio.run(run(args))
    noop = [loop for loop, _ in costs["/items5"]]
    rows = []
    for path, name in ENDPOINTS.items():
        loop = [c[0] for c in costs[path]]
        # each round's over the no-op's of that round: drift slower than a round drops out
        over = [cost - base for cost, base in zip(loop, noop, strict=True)]
        kept = [base / cost for cost, base in zip(loop, noop, strict=True)]
        rows.append(
            [
                f"{path} {name}",
                median(loop),
                median(over),
                f"{median(kept):.3f} ({min(kept):.2f}-{max(kept):.2f})",
                median([c[1] for c in costs[path]]),
            ]
        )
    text = "\n".join(
        [
            "# The event loop's CPU per request, endpoint by endpoint (in-process)\n",
            machine_note(),
            f"{args.callers} concurrent callers; {args.rounds} round(s) of {args.requests:,} "
            f"requests per endpoint, in a shuffled order; {placement}; the count cache and "
            "live push off. Medians; the round-by-round columns compare each cell with the "
            "no-op's of its round.\n",
            markdown_table(
                [
                    "endpoint",
                    "loop thread µs / request",
                    "µs over the no-op, round by round",
                    "no-op / endpoint, round by round (lowest-highest)",
                    "whole process µs / request",
                ],
                rows,
            ),
        ]
    )
    report("loop_cost.md", text)


if __name__ == "__main__":
    main()
