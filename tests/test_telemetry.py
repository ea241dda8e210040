"""FastAPI's OpenTelemetry instrumentation, settled once when an app is made (telemetry_options)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import _logs, metrics, trace

from kafkaloop.fastapi import telemetry_options
from kafkaloop.service import create_app
from kafkaloop.settings import ServiceSettings


@pytest.fixture
def provider_asks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every look at OpenTelemetry's global providers, by whoever makes it, from now on."""
    asks: list[str] = []
    for module, name in (
        (trace, "get_tracer_provider"),
        (metrics, "get_meter_provider"),
        (_logs, "get_logger_provider"),
    ):
        original: Callable[[], Any] = getattr(module, name)

        def counted(original: Callable[[], Any] = original, name: str = name) -> Any:
            asks.append(name)
            return original()

        monkeypatch.setattr(module, name, counted)
    monkeypatch.delenv("FASTAPI_OTEL_AUTO_CONFIGURE", raising=False)
    return asks


def _app(**options: Any) -> FastAPI:
    app = FastAPI(**options)

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


async def _asks_per_request(app: FastAPI, asks: list[str], path: str = "/ping") -> int:
    """How many looks at the providers `requests` requests to `path` made."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        await client.get(path)  # (anything built on the first request is built)
        before = len(asks)
        for _ in range(5):
            assert (await client.get(path)).status_code == 200
    return len(asks) - before


async def test_no_provider_set_up_means_no_look_per_request(provider_asks: list[str]) -> None:
    settled = _app(**telemetry_options())
    as_fastapi_does = _app()

    assert await _asks_per_request(settled, provider_asks) == 0
    # FastAPI on its own looks at them on every request: what the option spares
    assert await _asks_per_request(as_fastapi_does, provider_asks) >= 5


async def test_a_provider_set_up_keeps_fastapi_s_instrumentation(
    provider_asks: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.NoOpTracerProvider())
    options = telemetry_options()

    assert options == {}  # FastAPI's defaults: it instruments each request
    assert await _asks_per_request(_app(**options), provider_asks) >= 5


def test_auto_configure_and_explicit_choices(
    provider_asks: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    off = {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    assert telemetry_options() == off
    assert telemetry_options(True) == {}
    assert telemetry_options(False) == off
    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "True")  # FastAPI sets one up at start-up
    assert telemetry_options() == {}
    assert telemetry_options(False) == off


@pytest.mark.parametrize(("setting", "asked"), [(None, False), (True, True), (False, False)])
async def test_the_service_settles_it_from_its_setting(
    provider_asks: list[str], setting: bool | None, asked: bool
) -> None:
    # (the schema needs no Kafka: no lifespan runs here)
    app = create_app(ServiceSettings(bootstrap_servers="127.0.0.1:1", opentelemetry=setting))

    assert (await _asks_per_request(app, provider_asks, "/openapi.json") > 0) is asked


def test_the_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKALOOP_OPENTELEMETRY", "true")
    assert ServiceSettings().opentelemetry is True
    monkeypatch.setenv("KAFKALOOP_OPENTELEMETRY", "false")
    assert ServiceSettings().opentelemetry is False
    monkeypatch.delenv("KAFKALOOP_OPENTELEMETRY")
    assert ServiceSettings().opentelemetry is None
