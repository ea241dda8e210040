"""FastAPI's OpenTelemetry instrumentation, settled once when an app is made (telemetry_options)."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from kafkaloop.fastapi import telemetry_configured, telemetry_options
from kafkaloop.service import create_app
from kafkaloop.settings import ServiceSettings
from tests.service_helpers import service_settings, serving

pytest.importorskip("fastapi.telemetry", reason="this FastAPI has no native telemetry")
otel_trace = pytest.importorskip("opentelemetry.trace")
otel_metrics = pytest.importorskip("opentelemetry.metrics")
otel_logs = pytest.importorskip("opentelemetry._logs")

GETTERS = {
    "traces": (otel_trace, "get_tracer_provider"),
    "metrics": (otel_metrics, "get_meter_provider"),
    "logs": (otel_logs, "get_logger_provider"),
}


def _unset() -> dict[str, Any]:
    """What OpenTelemetry's API hands out before anything sets a global provider."""
    from opentelemetry._logs._internal import ProxyLoggerProvider
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    return {
        "traces": otel_trace.ProxyTracerProvider(),
        "metrics": _ProxyMeterProvider(),
        "logs": ProxyLoggerProvider(),
    }


def _set_up(kind: str) -> Any:
    """A provider as an SDK would set it: any class but the API's placeholders."""
    base = {
        "traces": otel_trace.NoOpTracerProvider,
        "metrics": otel_metrics.NoOpMeterProvider,
        "logs": otel_logs.NoOpLoggerProvider,
    }[kind]
    return type(f"SetUp{base.__name__}", (base,), {})()


class Providers:
    """OpenTelemetry's global providers as everyone sees them in a test, and who asked."""

    def __init__(self) -> None:
        self.current = _unset()
        self.asks: list[str] = []


@pytest.fixture
def providers(monkeypatch: pytest.MonkeyPatch) -> Providers:
    """No global provider set up (whatever this process holds), every look counted."""
    state = Providers()
    for kind, (module, name) in GETTERS.items():

        def provider(kind: str = kind) -> Any:
            state.asks.append(kind)
            return state.current[kind]

        monkeypatch.setattr(module, name, provider)
    monkeypatch.delenv("FASTAPI_OTEL_AUTO_CONFIGURE", raising=False)
    return state


def _app(**options: Any) -> FastAPI:
    app = FastAPI(**options)

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


async def _asks_per_request(app: FastAPI, providers: Providers, path: str = "/ping") -> float:
    """Looks at the providers per request to `path`, over five requests."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        await client.get(path)  # (anything built on the first request is built)
        before = len(providers.asks)
        for _ in range(5):
            assert (await client.get(path)).status_code == 200
    return (len(providers.asks) - before) / 5


async def test_no_provider_set_up_means_no_look_per_request(providers: Providers) -> None:
    settled = _app(**telemetry_options())
    as_fastapi_does = _app()

    assert not telemetry_configured()
    assert await _asks_per_request(settled, providers) == 0
    # FastAPI on its own asks all three on every request: what the option spares
    assert await _asks_per_request(as_fastapi_does, providers) >= 3


@pytest.mark.parametrize("kind", GETTERS)
async def test_any_provider_set_up_keeps_fastapi_s_instrumentation(
    providers: Providers, kind: str
) -> None:
    providers.current[kind] = _set_up(kind)

    assert telemetry_configured()
    assert telemetry_options() == {}  # FastAPI's defaults: it instruments each request
    assert await _asks_per_request(_app(**telemetry_options()), providers) >= 1


def test_auto_configure_and_explicit_choices(
    providers: Providers, monkeypatch: pytest.MonkeyPatch
) -> None:
    off = {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    assert telemetry_options() == off
    assert telemetry_options(True) == {}
    assert telemetry_options(False) == off
    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "True")  # FastAPI sets one up at start-up
    assert telemetry_options() == {}
    assert telemetry_options(False) == off
    providers.current["logs"] = _set_up("logs")
    assert telemetry_options(False) == off  # off when asked, whatever is set up


def test_unset_providers_are_the_ones_fastapi_takes_for_unset() -> None:
    """The two lists must agree, or FastAPI and kafkaloop would disagree about whether
    anything listens (FastAPI keeps its own list private: nothing to compare when it is gone)."""
    from fastapi.telemetry import _api

    from kafkaloop import fastapi as kafkaloop_fastapi

    theirs = getattr(_api, "_DEFERRED_PROVIDERS", None)
    if theirs is None:
        pytest.skip("this FastAPI keeps no list of unset providers to compare with")
    assert set(theirs) == set(kafkaloop_fastapi._UNSET_PROVIDERS)


@pytest.mark.parametrize(("setting", "asked"), [(None, False), (True, True), (False, False)])
async def test_the_service_settles_it_from_its_setting(
    providers: Providers, setting: bool | None, asked: bool
) -> None:
    # (the schema needs no Kafka: no lifespan runs here)
    app = create_app(ServiceSettings(bootstrap_servers="127.0.0.1:1", opentelemetry=setting))

    assert (await _asks_per_request(app, providers, "/openapi.json") > 0) is asked


def test_the_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKALOOP_OPENTELEMETRY", "true")
    assert ServiceSettings().opentelemetry is True
    monkeypatch.setenv("KAFKALOOP_OPENTELEMETRY", "false")
    assert ServiceSettings().opentelemetry is False
    monkeypatch.delenv("KAFKALOOP_OPENTELEMETRY")
    assert ServiceSettings().opentelemetry is None


@pytest.mark.parametrize(("setting", "warned"), [(None, True), (False, False), (True, False)])
async def test_the_service_says_when_opentelemetry_came_too_late(
    providers: Providers,
    caplog: pytest.LogCaptureFixture,
    kafka_bootstrap: str,
    topic_name: str,
    setting: bool | None,
    warned: bool,
) -> None:
    app = create_app(service_settings(kafka_bootstrap, topic_name, opentelemetry=setting))
    providers.current["traces"] = _set_up("traces")  # set up after the app was made

    with caplog.at_level(logging.WARNING, logger="kafkaloop"):
        async with serving(app):
            pass

    late = [r for r in caplog.records if "OpenTelemetry was set up after" in r.getMessage()]
    assert len(late) == warned
    if warned:
        assert "KAFKALOOP_OPENTELEMETRY=true" in late[0].getMessage()
