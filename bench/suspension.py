"""What one suspension costs a request of the reference service, by how many are in flight.

    .venv/bin/python -m bench.suspension       # about a minute, one core (taskset -c 0 is best)

The web benchmark's asyncio floor (``/items0``: the no-op ``/items5`` plus one ``await`` of a
future the loop resolves itself) keeps only 0.8-0.9x the no-op's throughput at 400 users,
which bounds every awaited endpoint. This finds where that goes, without HTTP: it drives the
service's ASGI app in-process (the same middleware, FastAPI, the same body model) with N
concurrent callers and reports CPU microseconds per request for the no-op and the floor (whose
route is next to the no-op's, so routing costs both the same). Beside them, the
same number of callers each awaiting a chain of 25 bare coroutines with one suspension at the
bottom: asyncio's own cost of suspending that deep.

The floor's extra cost grows with the callers in flight while the bare chain's does not; the
code run per request is the same at every level. What changes is memory: a request's objects
and frames stay alive across its suspension, and by the time it resumes the other requests in
flight have been through the CPU's caches. An answer that needs no await frees its objects
before the next request reuses the same, still cached, memory. (This machine exposes no
hardware counters to count the cache misses themselves.)

Each level runs twice: with the service's request queue off (every caller inside the app at
once) and at its default (``RequestQueue``: 32 inside while the loop is busy, which it is
here, the rest parked before the app).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench._common import bench_kafka, machine_note, markdown_table, median
from kafkaloop.request_queue import RequestQueue

BODY = b'{"name": "load"}'
CHAIN_DEPTH = 25


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


def asgi_request(app: Any, path: str) -> Callable[[], Awaitable[None]]:
    """One POST of BODY to `path`, through the whole ASGI app; fails unless answered 200 or 202."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def request() -> None:
        status: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(_scope(path), receive, send)
        if status not in ([200], [202]):
            raise RuntimeError(f"{path} answered {status}")

    return request


def bare_chain(suspend: bool) -> Callable[[], Awaitable[None]]:
    """CHAIN_DEPTH nested coroutines; the innermost awaits a future the loop resolves."""

    async def level(depth: int) -> None:
        if depth:
            await level(depth - 1)
        elif suspend:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            loop.call_soon(future.set_result, None)
            await future

    return lambda: level(CHAIN_DEPTH)


async def drive(call: Callable[[], Awaitable[None]], total: int, callers: int) -> None:
    """Make `total` calls from `callers` concurrent tasks, each calling again once answered."""
    left = total

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    await asyncio.gather(*(caller() for _ in range(callers)))


async def cpu_per_call(call: Callable[[], Awaitable[None]], total: int, callers: int) -> float:
    """CPU microseconds per call, `total` calls made by `callers` concurrent tasks."""
    started = time.process_time()
    await drive(call, total, callers)
    return (time.process_time() - started) / total * 1e6


def request_queue(app: Any) -> RequestQueue:
    """The RequestQueue in `app`'s middleware stack (built by then)."""
    layer = app.middleware_stack
    while not isinstance(layer, RequestQueue):
        layer = layer.app
    return layer


async def main(args: argparse.Namespace) -> None:
    os.environ.setdefault("KAFKALOOP_ITEM_CACHE", "false")
    os.environ.setdefault("KAFKALOOP_LIVE_PUSH", "false")
    with bench_kafka() as bootstrap:
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        from bench.apps.kafkaloop_app import app  # reads the environment when imported

        calls = {
            "no-op (/items5)": asgi_request(app, "/items5"),
            "floor (/items0)": asgi_request(app, "/items0"),
            f"bare chain of {CHAIN_DEPTH}, no suspension": bare_chain(False),
            f"bare chain of {CHAIN_DEPTH}, one suspension": bare_chain(True),
        }
        figures: dict[tuple[str, int, int], list[float]] = {}
        async with app.router.lifespan_context(app):
            for call in calls.values():  # warm-up (and the middleware stack built)
                await cpu_per_call(call, 2000, 100)
            queue = request_queue(app)
            default_running = queue.concurrency
            for round_ in range(args.rounds):
                for callers in args.callers:
                    for running in (0, default_running):
                        queue.concurrency = queue.limit = running
                        for name, call in calls.items():
                            cpu = await cpu_per_call(call, args.requests, callers)
                            figures.setdefault((name, callers, running), []).append(cpu)
                print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    rows = []
    for callers in args.callers:
        for running in (0, default_running):
            at = {name: median(figures[name, callers, running]) for name in calls}
            noop, floor = at["no-op (/items5)"], at["floor (/items0)"]
            bare = at[f"bare chain of {CHAIN_DEPTH}, one suspension"]
            bare -= at[f"bare chain of {CHAIN_DEPTH}, no suspension"]
            rows.append(
                [
                    callers,
                    running or "off",
                    f"{noop:.1f}",
                    f"{floor:.1f}",
                    f"{floor - noop:.1f}",
                    f"{bare:.1f}",
                ]
            )
    print(f"\n# One suspension in the reference service\n\n{machine_note()}\n")
    print(
        markdown_table(
            [
                "callers in flight",
                "request queue (inside at once)",
                "no-op µs/request",
                "floor µs/request",
                "the floor's suspension, µs",
                f"a bare chain of {CHAIN_DEPTH}'s suspension, µs",
            ],
            rows,
        )
    )
    print(f"\nMedians of {args.rounds} rounds of {args.requests} requests, CPU time, in-process.")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10_000, help="requests per cell")
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 10, 100, 400])
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
