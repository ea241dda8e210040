"""FastAPI integration: clients in a lifespan, dependencies, HTTP errors, request limits and queue.

from contextlib import asynccontextmanager

from confluent_kafka.admin import NewTopic
from fastapi import Depends, FastAPI
from pydantic import BaseModel

from kafkaloop import AIOProducer
from kafkaloop.fastapi import (
    get_producer, install_error_handlers, kafka_clients, produce_within, telemetry_options
)
from kafkaloop.settings import KafkaSettings

class Item(BaseModel):
    name: str

@asynccontextmanager
async def lifespan(app):
    async with kafka_clients(KafkaSettings(), topics=[NewTopic("items", 3)]) as kafka:
        yield {"kafka": kafka}

app = FastAPI(lifespan=lifespan, **telemetry_options())
install_error_handlers(app)

@app.post("/items")
async def create(item: Item, producer: AIOProducer = Depends(get_producer)):
    return await produce_within(producer.produce("items", item.name), deadline=5)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import inspect
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import fastapi.applications
from confluent_kafka import KafkaError
from confluent_kafka.admin import NewTopic
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from kafkaloop._admin import AIOAdminClient
from kafkaloop._asgi import abort_connection, replay, reply
from kafkaloop._exceptions import (
    ClientClosedError,
    DeliveryError,
    KafkaloopError,
    QueueFullError,
)
from kafkaloop._logging import logger
from kafkaloop._producer import AIOProducer
from kafkaloop.request_queue import RequestQueue
from kafkaloop.settings import KafkaSettings

__all__ = [
    "Deadline",
    "KafkaClients",
    "KafkaUnavailable",
    "RequestLimits",
    "RequestQueue",
    "abort_connection",
    "get_kafka",
    "get_producer",
    "install_error_handlers",
    "kafka_clients",
    "kafka_ready",
    "produce_within",
    "serving_gc",
    "telemetry_configured",
    "telemetry_options",
]

T = TypeVar("T")


@dataclasses.dataclass
class KafkaClients:
    """The clients an app shares between requests."""

    producer: AIOProducer
    admin: AIOAdminClient
    settings: KafkaSettings
    fire_and_forget: AIOProducer
    """For fire-and-forget messages (``produce_nowait``; a callback hears of failures only): a
    producer that reports failed deliveries only (``KafkaSettings.fire_and_forget``), or the
    producer itself when ``fire_and_forget_producer`` is off. The two keep no order between
    them."""
    _ready_cache: tuple[float, bool, str] = (0.0, False, "not checked yet")


@contextlib.asynccontextmanager
async def kafka_clients(
    settings: KafkaSettings,
    topics: Sequence[NewTopic] = (),
    *,
    shutdown_timeout: float = 30.0,
) -> AsyncIterator[KafkaClients]:
    """Create the producers and admin client, ensure `topics`; on exit flush and close.

    Messages still undelivered after `shutdown_timeout` seconds are logged with their count.
    """
    admin = AIOAdminClient(settings.admin())
    producers: list[AIOProducer] = []
    try:
        producers.append(
            AIOProducer(settings.producer(), poll_thread=settings.producer_poll_thread)
        )
        if settings.fire_and_forget_producer:
            producers.append(
                AIOProducer(settings.fire_and_forget(), poll_thread=settings.producer_poll_thread)
            )
    except BaseException:
        for producer in producers:
            await producer.close()
        await admin.close()
        raise
    try:
        if topics:
            created = await admin.ensure_topics(topics)
            if created:
                logger.info("Created topics %s", ", ".join(created))
        yield KafkaClients(producers[0], admin, settings, producers[-1])
    finally:
        closing = (producer.close(timeout=shutdown_timeout) for producer in producers)
        closed = await asyncio.gather(*closing, return_exceptions=True)
        undelivered = sum(count for count in closed if isinstance(count, int))
        if undelivered:
            logger.error("Shut down with %d message(s) not delivered to Kafka", undelivered)
        else:
            logger.info("Producers flushed: every accepted message was delivered")
        await admin.close()
        for failure in closed:  # each producer closed (or tried to) before this is raised
            if isinstance(failure, BaseException):
                raise failure


# Dependencies are coroutines: FastAPI runs a plain function dependency in its threadpool, a
# thread hop per request (it halved the service's throughput under load).
async def get_kafka(request: Request) -> KafkaClients:
    """Dependency: the app's :class:`KafkaClients` (from the lifespan state ``kafka``)."""
    kafka: KafkaClients = request.state.kafka
    return kafka


async def get_producer(request: Request) -> AIOProducer:
    """Dependency: the app's shared :class:`AIOProducer`."""
    kafka: KafkaClients = request.state.kafka
    return kafka.producer


class KafkaUnavailable(KafkaloopError):
    """Kafka did not acknowledge within the request's deadline (an HTTP 503)."""


async def produce_within(awaitable: Awaitable[T], deadline: float) -> T:
    """Await a produce for at most `deadline` seconds, else :class:`KafkaUnavailable`.

    The message is not withdrawn: it may still be delivered after the answer went out.
    """
    try:
        async with asyncio.timeout(deadline):
            return await awaitable
    except TimeoutError:
        raise _not_acknowledged(deadline) from None


def _not_acknowledged(seconds: float) -> KafkaUnavailable:
    return KafkaUnavailable(
        f"Kafka did not acknowledge within {seconds:g}s; the item may still be stored. Retry later."
    )


class Deadline:
    """One deadline for every awaited produce of an app, without a timer per request.

    ``watch(future)`` starts the clock on a produce's future; ``forget(future)`` stops it
    once the future has been awaited (in a ``finally``). A future still pending ``seconds``
    after it was watched fails with :class:`KafkaUnavailable` (an HTTP 503); the message is
    not withdrawn and may still be delivered after the answer went out. One sweep every
    ``resolution`` seconds, while anything is watched, finds the futures that are due, so a
    request fails between ``seconds`` and ``seconds + resolution`` after it began.

    ``produce_within`` does the same for any awaitable with ``asyncio.timeout``, which
    schedules and cancels a timer per request: about 5 µs more than a bare await with 400 in
    flight, against 0.24 µs more here (``python -m bench.deadline``), on a request of about
    130 µs.
    """

    def __init__(self, seconds: float, *, resolution: float = 0.05) -> None:
        if seconds <= 0 or resolution <= 0:
            raise ValueError("seconds and resolution must be positive")
        self.seconds = seconds
        self.resolution = resolution
        # Watched futures and when each is due. Watched in order of time, so they are due in
        # insertion order: a sweep stops at the first one not yet due.
        self._due: dict[asyncio.Future[Any], float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep_timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Deadline seconds={self.seconds:g} watched={len(self._due)}>"

    def watch(self, future: asyncio.Future[T]) -> asyncio.Future[T]:
        """Fail `future` with :class:`KafkaUnavailable` if still pending after the deadline.

        A Deadline serves one event loop at a time (the app's): watching a future of
        another loop while the first still has futures watched raises ``RuntimeError``.
        """
        loop = future.get_loop()
        if loop is not self._loop:
            self._switch_to(loop)
        self._due.pop(future, None)  # watched again: its place follows its new time
        self._due[future] = loop.time() + self.seconds
        if self._sweep_timer is None:
            self._sweep_timer = loop.call_later(self.resolution, self._sweep, loop)
        return future

    def forget(self, future: asyncio.Future[Any]) -> None:
        """Stop watching `future` (done, or no longer awaited)."""
        self._due.pop(future, None)

    def _switch_to(self, loop: asyncio.AbstractEventLoop) -> None:
        old = self._loop
        if self._due and old is not None and not old.is_closed():
            raise RuntimeError(
                "This Deadline watches futures of another event loop: create one per loop."
            )
        self._due.clear()  # futures of a closed loop: nobody can await them any more
        self._loop = loop
        self._sweep_timer = None  # a timer left on the old loop finds it is not current

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return
        now = loop.time()
        expired: list[asyncio.Future[Any]] = []
        for future, due in self._due.items():
            if due > now:
                break
            expired.append(future)
        for future in expired:
            del self._due[future]
            if not future.done():
                future.set_exception(_not_acknowledged(self.seconds))
        self._sweep_timer = (
            loop.call_later(self.resolution, self._sweep, loop) if self._due else None
        )


# serving_gc's state: lifespans may nest or overlap (tests, several apps in one process); the
# collector is tuned on the first entry and put back on the last exit.
_serving_depth = 0
_saved_gc: tuple[tuple[int, int, int], bool] | None = None


@contextlib.contextmanager
def serving_gc(young_threshold: int = 50_000) -> Iterator[None]:
    """Tune the garbage collector for serving while the block runs (wrap a lifespan's yield).

    A handler that awaits Kafka keeps its request's objects alive across loop turns, where one
    that answers at once frees them before any collection sees them. Those survivors set off
    young collections and get promoted, and the older collections then walk the whole heap:
    every route, model and schema built at start-up. On the reference service that cost the
    awaited endpoint about a third of its throughput (bench/README.md, the web load section).

    So: collect once, ``gc.freeze()`` what start-up left (never walked again), and collect the
    young generation every `young_threshold` allocations instead of every 700 (a collector
    switched off, threshold 0, or a higher threshold is left alone). Reference cycles are
    still collected; between collections at most that many more objects wait. Undone when the
    outermost such block exits; objects frozen before it (a pre-fork ``gc.freeze()``) stay so.
    """
    global _serving_depth, _saved_gc
    if _serving_depth == 0:
        thresholds = gc.get_threshold()
        nothing_frozen = gc.get_freeze_count() == 0
        gc.collect()
        gc.freeze()
        if 0 < thresholds[0] < young_threshold:
            gc.set_threshold(young_threshold, *thresholds[1:])
        _saved_gc = (thresholds, nothing_frozen)
    _serving_depth += 1
    try:
        yield
    finally:
        _serving_depth -= 1
        if _serving_depth == 0 and _saved_gc is not None:
            thresholds, nothing_frozen = _saved_gc
            _saved_gc = None
            gc.set_threshold(*thresholds)
            if nothing_frozen:
                gc.unfreeze()


# The classes OpenTelemetry's API hands out until an SDK (or `opentelemetry-instrument`) sets a
# global provider: while all three are these, nothing is listening.
_UNSET_PROVIDERS = frozenset(
    {
        ("opentelemetry.trace", "ProxyTracerProvider"),
        ("opentelemetry.metrics._internal", "_ProxyMeterProvider"),
        ("opentelemetry._logs._internal", "ProxyLoggerProvider"),
    }
)
_TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False}


def telemetry_options(enabled: bool | None = None) -> dict[str, Any]:
    """Keyword arguments for ``FastAPI()`` that settle its OpenTelemetry instrumentation once,
    when the app is made.

        app = FastAPI(lifespan=lifespan, **telemetry_options())

    FastAPI's native telemetry asks OpenTelemetry's three global providers, on every request,
    whether any of them is set up: some 5 µs a request, a few percent of a small endpoint's
    throughput, spent even where nothing will ever listen. `enabled` None (the default) decides
    once instead: on (FastAPI's own behaviour, nothing passed) when a global provider is set up
    by now (:func:`telemetry_configured`) or ``FASTAPI_OTEL_AUTO_CONFIGURE=true`` asks FastAPI to
    set one up at start-up; off otherwise. OpenTelemetry set up later (in a lifespan, in a
    worker after a pre-forking server loaded the app) is then not seen: set it up before the app
    is made (``opentelemetry-instrument`` does), or pass True. True: FastAPI's defaults; False:
    off. A FastAPI without native telemetry gets nothing passed either way.
    """
    if enabled is None:
        enabled = os.environ.get("FASTAPI_OTEL_AUTO_CONFIGURE", "").lower() == "true" or (
            telemetry_configured()
        )
    # (FastAPI's own class: an instrumentor may have put a subclass in its place)
    if enabled or "telemetry" not in inspect.signature(fastapi.applications.FastAPI).parameters:
        return {}
    return {"telemetry": dict(_TELEMETRY_OFF)}


def telemetry_configured() -> bool:
    """Whether any of OpenTelemetry's global providers (traces, metrics, logs) is set up: what
    FastAPI's native telemetry asks on every request."""
    try:
        from opentelemetry import _logs, metrics, trace
    except ImportError:
        return False
    providers = (
        trace.get_tracer_provider(),
        metrics.get_meter_provider(),
        _logs.get_logger_provider(),
    )
    return any((type(p).__module__, type(p).__name__) not in _UNSET_PROVIDERS for p in providers)


async def kafka_ready(
    kafka: KafkaClients, timeout: float = 2.0, cache: float = 1.0
) -> tuple[bool, str]:
    """Whether the cluster answers and the producers can produce, with a reason.

    Answers are reused for `cache` seconds, so frequent probes do not load the brokers.
    """
    checked_at, ready, reason = kafka._ready_cache
    now = time.monotonic()
    if now - checked_at < cache:
        return ready, reason
    producers = {"producer": kafka.producer, "fire-and-forget producer": kafka.fire_and_forget}
    if any(producer.closed for producer in producers.values()):
        ready, reason = False, "the producer is closed (the service is stopping)"
    else:
        try:
            async with asyncio.timeout(timeout):
                cluster = await kafka.admin.describe_cluster()
        except (TimeoutError, KafkaloopError) as exc:
            said = f" ({exc})" if str(exc) else ""  # (a TimeoutError says nothing)
            ready, reason = False, f"the cluster did not answer within {timeout:g}s{said}"
        else:
            refusing = [
                f"the {name} refuses messages: {producer.fatal_error.str()}"
                for name, producer in producers.items()
                if producer.fatal_error is not None
            ]
            if refusing:
                ready, reason = False, refusing[0]
            else:
                ready, reason = True, f"{len(cluster.brokers)} broker(s) answering"
    kafka._ready_cache = (now, ready, reason)
    return ready, reason


def _error_response(status: int, exc: Exception, retry_after: int | None) -> JSONResponse:
    body: dict[str, Any] = {"detail": str(exc), "error": type(exc).__name__}
    if isinstance(exc, DeliveryError):
        body["retriable"] = exc.retriable
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(body, status_code=status, headers=headers)


# A body that is not JSON (no JSON content type) is validated, and echoed back, as bytes,
# which need not be UTF-8: FastAPI's encoder would fail on them with a 500.
_BYTES_AS_TEXT: dict[Any, Callable[[Any], Any]] = {
    bytes: lambda body: body.decode("utf-8", "replace")
}


def _json_safe(value: Any) -> Any:
    """`value` as strict JSON in UTF-8 can carry it: non-finite numbers as text, unpaired
    surrogates replaced. Python's JSON parser accepts ``NaN``, ``Infinity``, ``1e999`` and
    ``"\\ud800"``, and a validation error echoes such input back."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def install_error_handlers(app: FastAPI, retry_after: int = 1) -> None:
    """Map kafkaloop's errors to HTTP answers: 503 (+ Retry-After) for an unavailable Kafka,
    413 for a message Kafka refuses as too large; never a 500 for those. An invalid body gets
    FastAPI's 422 whatever it holds (FastAPI's own handler fails with a 500 on a body that
    echoes ``NaN`` or an unpaired surrogate back). A body FastAPI cannot parse leaves no
    reference cycle for the garbage collector (see `_forget_cause`)."""

    async def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        _forget_cause(exc)
        errors = exc.errors()
        try:
            detail = _json_safe(jsonable_encoder(errors, custom_encoder=_BYTES_AS_TEXT))
        except RecursionError:  # input nested deeper than the encoders go: leave it out
            errors = [{k: v for k, v in error.items() if k != "input"} for error in errors]
            detail = _json_safe(jsonable_encoder(errors, custom_encoder=_BYTES_AS_TEXT))
        return JSONResponse({"detail": detail}, 422)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        _forget_cause(exc)
        return await http_exception_handler(request, exc)

    async def delivery_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DeliveryError)
        if exc.code == KafkaError.MSG_SIZE_TOO_LARGE:
            return _error_response(413, exc, None)
        return _error_response(503, exc, retry_after)

    async def unavailable(_request: Request, exc: Exception) -> JSONResponse:
        return _error_response(503, exc, retry_after)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(DeliveryError, delivery_error)
    app.add_exception_handler(QueueFullError, unavailable)
    app.add_exception_handler(KafkaUnavailable, unavailable)
    app.add_exception_handler(ClientClosedError, unavailable)


def _forget_cause(exc: BaseException) -> None:
    """Drop what `exc` was raised from, once it is being answered. FastAPI raises its errors
    for a body it cannot parse (malformed JSON: 422, not UTF-8: 400) ``from`` the parser's
    exception, whose traceback holds the frame that holds the new error: a reference cycle
    per bad request, which only the garbage collector frees. The answer needs neither."""
    exc.__cause__ = exc.__context__ = None


class RequestLimits:
    """ASGI middleware: 431 for too many or too large headers; 413 for a body over
    `max_body_bytes`, decided from Content-Length before reading anything, or as soon as a
    streamed body passes the limit."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        max_headers: int = 100,
        max_header_bytes: int = 16 * 1024,
    ) -> None:
        self.app = app
        self.max_bytes = max_body_bytes
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if len(headers) > self.max_headers or (
            sum(len(name) + len(value) for name, value in headers) > self.max_header_bytes
        ):
            await _reply(
                send,
                431,
                f"At most {self.max_headers} headers and "
                f"{self.max_header_bytes} bytes of them are accepted",
            )
            return
        for name, value in headers:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await _reply(send, 400, "Content-Length is not a number")
                    return
                if length > self.max_bytes:
                    await _reply(send, 413, f"The body is over the {self.max_bytes}-byte limit")
                    return
                # Honest Content-Length: the server already stops at that many bytes.
                await self.app(scope, receive, send)
                return
        # No Content-Length (a chunked body): read it here, up to the limit, then replay it.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _reply(send, 413, f"The body is over the {self.max_bytes}-byte limit")
                return
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": bytes(body), "more_body": False}
        await self.app(scope, replay(whole, receive), send)


async def _reply(send: Send, status: int, detail: str) -> None:
    error = "RequestTooLarge" if status in (413, 431) else "BadRequest"
    await reply(send, status, detail, error, ((b"connection", b"close"),))
