"""RequestMetrics: every HTTP request counted and timed under its route template."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from fastapi.responses import Response

from kafkaloop.metrics import RequestMetrics, ServiceMetrics


async def test_requests_are_counted_per_method_route_and_status() -> None:
    metrics = ServiceMetrics()
    app = FastAPI()

    @app.api_route("/items/{name}", methods=["GET", "POST"])
    async def item(name: str) -> Response:
        return Response(status_code=404 if name == "missing" else 200)

    app.add_middleware(RequestMetrics, metrics=metrics)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path in ("/items/a", "/items/b", "/items/missing", "/items/c", "/nowhere", "/x"):
            await client.get(path)
        await client.post("/items/a")
        for method in ("BREW", "WHEN"):  # made-up methods: one label, OTHER
            await client.request(method, "/items/a")

    text = metrics.render().decode()
    for line in (
        'http_requests_total{method="GET",route="/items/{name}",status="200"} 3.0',
        'http_requests_total{method="GET",route="/items/{name}",status="404"} 1.0',
        'http_requests_total{method="POST",route="/items/{name}",status="200"} 1.0',
        'http_requests_total{method="GET",route="unmatched",status="404"} 2.0',
        'http_requests_total{method="OTHER",route="/items/{name}",status="405"} 2.0',
        'http_request_duration_seconds_count{route="/items/{name}"} 7.0',
        'http_request_duration_seconds_count{route="unmatched"} 2.0',
    ):
        assert line in text, line
    # What the middleware keeps grows with the label sets, not with paths or methods sent.
    middleware = app.middleware_stack
    while not isinstance(middleware, RequestMetrics):
        middleware = middleware.app  # type: ignore[union-attr]
    assert len(middleware._counters) == 5
    assert len(middleware._timers) == 2
