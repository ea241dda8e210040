"""What one suspension costs a request on each layer of the web stack the service runs on.

    taskset -c 0 .venv/bin/python -m bench.stacks      # about a minute

The web benchmark's awaited endpoint is held to 0.95x the no-op's throughput at 400 users,
and the asyncio floor (``/items0``: the no-op plus one ``await`` of a future the loop resolves
itself, no Kafka) bounds what any awaited endpoint can keep. This asks how much of the
floor's cost is the service's own and how much the framework's: the same two endpoints, a
no-op that answers a POSTed item and a floor that answers it after one suspension, on five
stacks of growing depth, driven in-process (no HTTP) by N concurrent callers on the loop
``kafkaloop serve`` uses (uvloop where installed):

- *raw ASGI*: one coroutine that reads the body and sends the answer;
- *20 ASGI layers*: the same under 20 pass-through coroutines (about as deep as the
  service's stack at the floor's ``await``);
- *Starlette*: a Starlette app with a route per endpoint;
- *FastAPI*: a FastAPI app with the service's item model (the body validated), its telemetry
  settled as the service settles it;
- *the reference service*: ``/items5`` and ``/items0`` of ``bench.apps.kafkaloop_app`` (its
  middleware, its 17 routes, the request queue), the count cache and live push off.

After a warm-up (2,000 requests of each endpoint at the most callers asked for), each round
takes the stacks in a shuffled order and each stack's no-op and floor one after the other, the
no-op first in every other round; the floor's cost is its CPU per request less the no-op's of
the same round, the median over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Response
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from bench._common import Progress, bench_kafka, machine_note, markdown_table, median, report
from bench.loop_cost import cost
from bench.suspension import asgi_request
from kafkaloop.fastapi import telemetry_options

LAYERS = 20
ANSWER = b'{"status":"accepted"}'

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


async def suspend() -> None:
    """One suspension: a future the loop resolves on its next turn (the floor's ``await``)."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.get_loop().call_soon(future.set_result, None)
    await future


def raw_app(suspends: bool) -> ASGIApp:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        if suspends:
            await suspend()
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": ANSWER})

    return app


def layered(app: ASGIApp, layers: int) -> ASGIApp:
    """`app` under `layers` pass-through coroutines, each awaiting the next in a try block
    (as middleware does)."""

    def layer(inner: ASGIApp) -> ASGIApp:
        async def passing(scope: Any, receive: Any, send: Any) -> None:
            try:
                await inner(scope, receive, send)
            finally:
                pass

        return passing

    for _ in range(layers):
        app = layer(app)
    return app


def by_path(noop: ASGIApp, floor: ASGIApp) -> ASGIApp:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await (floor if scope["path"] == "/floor" else noop)(scope, receive, send)

    return app


def starlette_app() -> Starlette:
    async def noop(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, 202, media_type="application/json")

    async def floor(request: Request) -> Response:
        await request.body()
        await suspend()
        return Response(ANSWER, 202, media_type="application/json")

    return Starlette(
        routes=[Route("/noop", noop, methods=["POST"]), Route("/floor", floor, methods=["POST"])]
    )


def fastapi_app(item: type[BaseModel]) -> FastAPI:
    app = FastAPI(**telemetry_options())

    async def noop(item: Any) -> Response:
        return Response(ANSWER, 202, media_type="application/json")

    async def floor(item: Any) -> Response:
        await suspend()
        return Response(ANSWER, 202, media_type="application/json")

    for path, endpoint in (("/noop", noop), ("/floor", floor)):
        endpoint.__annotations__["item"] = item  # the body validated against the model
        app.add_api_route(path, endpoint, methods=["POST"], status_code=202)
    return app


async def cpu_per_request(call: Callable[[], Awaitable[None]], total: int, callers: int) -> float:
    """The loop thread's CPU microseconds per request."""
    return (await cost(call, total, callers))[0]


async def run(args: argparse.Namespace) -> list[list[Any]]:
    # (reads the environment when imported)
    from bench.apps.kafkaloop_app import Item
    from bench.apps.kafkaloop_app import app as service

    stacks: dict[str, tuple[Any, str, str]] = {
        "raw ASGI": (by_path(raw_app(False), raw_app(True)), "/noop", "/floor"),
        f"{LAYERS} ASGI layers": (
            by_path(layered(raw_app(False), LAYERS), layered(raw_app(True), LAYERS)),
            "/noop",
            "/floor",
        ),
        "Starlette": (starlette_app(), "/noop", "/floor"),
        "FastAPI": (fastapi_app(Item), "/noop", "/floor"),
        "the reference service": (service, "/items5", "/items0"),
    }
    calls = {
        name: (asgi_request(app, noop), asgi_request(app, floor))
        for name, (app, noop, floor) in stacks.items()
    }
    costs: dict[tuple[str, int], tuple[list[float], list[float]]] = {
        (name, callers): ([], []) for name in calls for callers in args.callers
    }
    progress = Progress(args.rounds * len(args.callers))
    async with service.router.lifespan_context(service):
        for noop, floor in calls.values():  # warm-up (and the middleware stacks built)
            for call in (noop, floor):
                await cpu_per_request(call, 2_000, max(args.callers))
        order = random.Random(1)
        for round_ in range(args.rounds):
            for callers in args.callers:
                progress.step(f"round {round_ + 1} callers={callers}")
                names = list(calls)
                order.shuffle(names)  # no stack always follows the same one
                for name in names:
                    noop, floor = calls[name]
                    noops, floors = costs[name, callers]
                    # Each goes first in every other round: neither always runs warm.
                    first, second = (noop, floor) if round_ % 2 == 0 else (floor, noop)
                    one = await cpu_per_request(first, args.requests, callers)
                    other = await cpu_per_request(second, args.requests, callers)
                    noops.append(one if first is noop else other)
                    floors.append(other if first is noop else one)
    progress.finish()
    rows = []
    for (name, callers), (noops, floors) in costs.items():
        rows.append(
            [
                name,
                callers,
                f"{median(noops):.1f}",
                f"{median(floors):.1f}",
                f"{median([f - n for n, f in zip(noops, floors, strict=True)]):.1f}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=5_000, help="requests per cell")
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    if args.rounds < 1 or args.requests < 1 or min(args.callers) < 1:
        parser.error("--rounds, --requests and --callers must be at least 1")
    os.environ.setdefault("KAFKALOOP_ITEM_CACHE", "false")
    os.environ.setdefault("KAFKALOOP_LIVE_PUSH", "false")
    with bench_kafka() as bootstrap:
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        if importlib.util.find_spec("uvloop"):
            import uvloop

            rows, loop = uvloop.run(run(args)), "uvloop"
        else:
            rows, loop = asyncio.run(run(args)), "asyncio"
    text = "\n".join(
        [
            "# One suspension, stack by stack (in-process)\n",
            machine_note(),
            f"The loop: {loop}. {args.rounds} round(s) of {args.requests:,} requests per cell; "
            "the loop thread's CPU per request, medians; the floor's suspension is each "
            "round's floor less its no-op.\n",
            markdown_table(
                [
                    "stack",
                    "callers in flight",
                    "no-op µs / request",
                    "floor µs / request",
                    "the floor's suspension, µs",
                ],
                rows,
            ),
        ]
    )
    report("stacks.md", text)


if __name__ == "__main__":
    main()
