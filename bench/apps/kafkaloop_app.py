"""The reference service as the web benchmark runs it, plus the asyncio floor, ``/items0``.

    .venv/bin/python -m bench.apps.kafkaloop_app --port 8000

The app is ``kafkaloop.service.create_app()``, the one ``kafkaloop serve`` runs, configured
from the environment. ``/items0`` is the no-op ``/items5`` (the same body model, the same
answer) plus one ``await`` of a future the loop resolves itself: no Kafka at all. It measures
what suspending a request costs this web stack (uvicorn, FastAPI, the service's middleware),
the most any awaited endpoint can keep of the no-op's throughput, whatever it awaits.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Response
from fastapi.routing import APIRoute

from bench.apps import serve
from kafkaloop.cli import http_protocol
from kafkaloop.service.app import create_app
from kafkaloop.settings import ServiceSettings

app = create_app()
_noop = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == "/items5")
Item: Any = _noop.endpoint.__annotations__["item"]
"""The service's item model, the body its producing endpoints and its no-op validate."""


async def items0(item: Any) -> Response:
    """Validate the item, let the loop go round once, answer as /items5 does."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.get_loop().call_soon(future.set_result, None)
    await future
    return Response(b'{"status":"accepted"}', 202, media_type="application/json")


items0.__annotations__["item"] = Item  # FastAPI validates the body against the service's model
app.add_api_route("/items0", items0, methods=["POST"], status_code=202)
# Right after the no-op's route, not after all the service's: routing costs both alike.
_floor = app.router.routes.pop()
app.router.routes.insert(app.router.routes.index(_noop) + 1, _floor)

if __name__ == "__main__":
    # The HTTP protocol `kafkaloop serve` picks: answers written once per loop turn unless off.
    serve(app, __doc__, http_protocol(ServiceSettings().write_batching))
