"""What bounding an awaited produce costs a request: ``asyncio.timeout`` against ``Deadline``.

    .venv/bin/python -m bench.deadline        # seconds; one core (taskset -c 0 is best)

The reference service answers 503 when Kafka does not acknowledge an awaited produce in time.
``produce_within`` bounds any awaitable with ``asyncio.timeout``: a timer scheduled and
cancelled per request. ``kafkaloop.fastapi.Deadline`` watches futures in a dict swept a few
times a second. Here N tasks each await M futures the loop resolves itself, bare or bounded
one way or the other, and the CPU per await beyond the bare one is each bound's cost. No
Kafka: the difference is all the bound's.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from bench._common import machine_note, markdown_table, median, report
from kafkaloop.fastapi import Deadline, produce_within

Await = Callable[[asyncio.Future[int]], Awaitable[int]]


async def bare(future: asyncio.Future[int]) -> int:
    return await future


async def with_timeout(future: asyncio.Future[int]) -> int:
    return await produce_within(future, 5.0)


DEADLINE = Deadline(5.0)


async def with_deadline(future: asyncio.Future[int]) -> int:
    DEADLINE.watch(future)
    try:
        return await future
    finally:
        DEADLINE.forget(future)


async def cpu_per_await(how: Await, callers: int, each: int) -> float:
    """CPU microseconds per await of `how`, `callers` tasks awaiting `each` futures."""
    loop = asyncio.get_running_loop()

    async def caller() -> None:
        for i in range(each):
            future: asyncio.Future[int] = loop.create_future()
            loop.call_soon(future.set_result, i)
            await how(future)

    started = time.process_time()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return (time.process_time() - started) / (callers * each) * 1e6


async def main(args: argparse.Namespace) -> None:
    contenders: dict[str, Await] = {
        "bare await": bare,
        "produce_within (asyncio.timeout)": with_timeout,
        "Deadline watch/forget": with_deadline,
    }
    figures: dict[str, list[float]] = {name: [] for name in contenders}
    for how in contenders.values():  # warm-up
        await cpu_per_await(how, args.callers, 1000)
    for _ in range(args.rounds):
        for name, how in contenders.items():
            figures[name].append(await cpu_per_await(how, args.callers, args.awaits))
    at = {name: median(values) for name, values in figures.items()}
    rows = [
        [
            name,
            f"{at[name]:.2f}",
            "" if name == "bare await" else f"{at[name] - at['bare await']:.2f}",
        ]
        for name in contenders
    ]
    text = (
        f"# Bounding an awaited produce\n\n{machine_note()}\n\n"
        + markdown_table(["await", "CPU µs per await", "more than a bare await, µs"], rows)
        + f"\n\nMedians of {args.rounds} rounds; {args.callers} tasks in flight, "
        f"{args.awaits} awaits each.\n"
    )
    report("deadline.md", text)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--callers", type=int, default=400, help="tasks in flight")
    parser.add_argument("--awaits", type=int, default=500, help="awaits per task per round")
    return parser.parse_args()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # the service runs on uvloop when it is installed; so does this
        asyncio.run(main(parse_args()))
    else:
        uvloop.run(main(parse_args()))
