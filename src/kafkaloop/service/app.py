"""The reference service: the design note's five endpoints, live push, a cached view, health.

Built only from the library's public pieces (``kafkaloop.fastapi``, ``push``, ``table``,
``metrics``, ``settings``), as a user's own app would be. (No ``from __future__ import
annotations`` here: FastAPI reads the endpoints' annotations, some of them local names.)
"""

import asyncio
import contextlib
import dataclasses
import heapq
import json
import signal
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from importlib import resources
from types import FrameType
from typing import Annotated, Any

from confluent_kafka.admin import NewTopic
from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, create_model
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from kafkaloop._exceptions import DeliveryError
from kafkaloop._logging import RateLimitedLog, logger
from kafkaloop._models import ConsumerRecord, RecordMetadata
from kafkaloop._producer import AIOProducer
from kafkaloop.fastapi import (
    Deadline,
    KafkaClients,
    RequestLimits,
    RequestQueue,
    abort_connection,
    get_kafka,
    install_error_handlers,
    kafka_clients,
    kafka_ready,
    serving_gc,
    telemetry_configured,
    telemetry_options,
)
from kafkaloop.metrics import RequestMetrics, ServiceMetrics
from kafkaloop.push import TOO_SLOW, Broadcaster, SlowClientError
from kafkaloop.settings import ServiceSettings
from kafkaloop.table import TopicTable, count

__all__ = ["create_app"]


class Delivered(BaseModel):
    """Where Kafka stored the item."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None = Field(description="Milliseconds since the epoch")


class Accepted(BaseModel):
    """The item was handed to the producer; its delivery is reported out of band."""

    status: str = "accepted"


class ErrorBody(BaseModel):
    """Why the request failed, and whether retrying may help."""

    detail: str
    error: str
    retriable: bool | None = None


class ItemCount(BaseModel):
    """How many items a name has had, from the in-process cache."""

    name: str
    count: int


class Counts(BaseModel):
    """Item counts per name (the busiest first) and how far the cache is behind Kafka."""

    counts: dict[str, int]
    lag: int


class Detail(BaseModel):
    """What was wrong with the request."""

    detail: str


# Every POST: the body may be unparseable (400) or too large (413), besides invalid (422).
_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Detail, "description": "The body could not be parsed (e.g. not UTF-8)"},
    413: {"model": ErrorBody, "description": "The body or the message is too large"},
    431: {"model": ErrorBody, "description": "Too many headers, or too large"},
}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    **_BODY_ERRORS,
    503: {"model": ErrorBody, "description": "Kafka is unreachable or too slow; see Retry-After"},
}


def _encode_item(record: ConsumerRecord) -> str:
    """The push payload of one consumed item."""
    try:
        name = json.loads(record.value)["name"]
    except (TypeError, ValueError, KeyError):
        name = (record.key or b"").decode(errors="replace")
    return json.dumps(
        {
            "name": name,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
        }
    )


def _off(feature: str, variable: str) -> JSONResponse:
    return JSONResponse(
        {"detail": f"{feature} is switched off ({variable}=false)"}, status_code=404
    )


BUSIEST_EVERY = 0.1
"""Seconds GET /items reuses its ranking of the busiest names for."""


@dataclasses.dataclass
class _Busiest:
    """GET /items's last ranking: of which table, after how many records, when."""

    table: object = None
    applied: int = -1
    at: float = 0.0
    counts: dict[str, int] = dataclasses.field(default_factory=dict)


class _EventStream(StreamingResponse):
    """Server-Sent Events for a client that must keep reading: a send that waits longer than
    `send_timeout` (the client stopped reading and the socket's buffers are full) ends the
    response there, unfinished. The generator is closed with it, and its subscription, and
    the connection is dropped where the server offers the ``kafkaloop.abort`` extension
    (``kafkaloop serve`` with write batching, the default); elsewhere the server closes it
    once the client has read what is buffered.
    """

    def __init__(
        self, events: AsyncGenerator[str, None], *, send_timeout: float, log: RateLimitedLog
    ) -> None:
        super().__init__(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
        self.events = events
        self.send_timeout = send_timeout
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_in_time(message: Message) -> None:
            async with asyncio.timeout(self.send_timeout):
                await send(message)

        try:
            await super().__call__(scope, receive, send_in_time)
        except TimeoutError:
            dropped = abort_connection(scope)
            self.log.warning(
                "An SSE client read nothing for %gs: its connection is %s",
                self.send_timeout,
                "dropped" if dropped else "closed once it reads",
            )
        finally:
            await self.events.aclose()


def _end_streams_on_stop_signals(hub: Broadcaster) -> Callable[[], None]:
    """On SIGTERM/SIGINT, end the WebSocket and SSE streams, then let the server's own handler
    run: it waits for open responses before it shuts down, and those streams never end alone.
    Returns what puts the previous handlers back."""
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(hub.close_all)
        handler = previous.get(signum)
        if callable(handler):
            handler(signum, frame)
        elif handler != signal.SIG_IGN:  # the default: stop, as if we had not been here
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[signum] = signal.signal(signum, on_signal)
        except ValueError:  # not the main thread: the server handles signals elsewhere
            break

    def restore() -> None:
        for signum, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, handler)

    return restore


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The reference service, configured from `settings` (default: the environment)."""
    settings = settings or ServiceSettings()
    metrics = ServiceMetrics()
    topic = settings.items_topic
    # Bounds every awaited produce; one sweep for all requests, no timer per request.
    deadline = Deadline(settings.request_deadline)
    out_of_band_failures = RateLimitedLog(logger)
    stalled_streams = RateLimitedLog(logger)

    # FastAPI's OpenTelemetry instrumentation, settled now rather than asked on every request.
    telemetry = telemetry_options(settings.opentelemetry)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        if telemetry and settings.opentelemetry is None and telemetry_configured():
            logger.warning(
                "OpenTelemetry was set up after the service's app was made: FastAPI's "
                "instrumentation of its requests stays off. Set it up before (as "
                "opentelemetry-instrument does), or set KAFKALOOP_OPENTELEMETRY=true"
            )
        topics = [
            NewTopic(
                topic,
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication,
            )
        ]
        async with kafka_clients(
            settings, topics, shutdown_timeout=settings.shutdown_timeout / 2
        ) as kafka:
            clients["producer"] = kafka.producer
            clients["fire_and_forget"] = kafka.fire_and_forget
            metrics.watch_producer(kafka.producer)
            if kafka.fire_and_forget is not kafka.producer:
                metrics.watch_producer(kafka.fire_and_forget, "fire_and_forget")
            async with contextlib.AsyncExitStack() as stack:
                state: dict[str, Any] = {"kafka": kafka, "hub": None, "table": None}
                if settings.item_cache:
                    table: TopicTable[int] = TopicTable(
                        settings.consumer(**{"group.id": "kafkaloop-service-cache"}),
                        topic,
                        fold=count,
                        max_keys=settings.item_cache_max_names,
                    )
                    await table.start()
                    stack.push_async_callback(table.stop)
                    metrics.watch_gauge(
                        "kafka_cache_lag", "Records the item-count cache is behind", table.lag
                    )
                    metrics.watch_counter(
                        "kafka_cache_skipped",
                        "Items the count cache left out: their names came once it was full",
                        lambda: table.skipped,
                    )
                    state["table"] = table
                if settings.live_push:
                    hub = Broadcaster(
                        settings.consumer(),
                        [topic],
                        encode=_encode_item,
                        queue_size=settings.client_queue_size,
                        slow_timeout=settings.slow_client_timeout,
                    )
                    await hub.start()
                    stack.push_async_callback(hub.stop)
                    stack.callback(_end_streams_on_stop_signals(hub))
                    metrics.watch_gauge(
                        "kafka_push_lag", "Records the live-push consumer is behind", hub.lag
                    )
                    metrics.watch_gauge(
                        "push_subscribers",
                        "Connected WebSocket/SSE clients",
                        lambda: hub.subscribers,
                    )
                    metrics.watch_counter(
                        "push_dropped", "Items dropped for slow push clients", lambda: hub.dropped
                    )
                    state["hub"] = hub
                if settings.gc_tuning:
                    stack.enter_context(serving_gc())
                yield state

    app = FastAPI(
        title="kafkaloop reference service",
        description="Items POSTed here go to Kafka; every consumed item is pushed live.",
        lifespan=lifespan,
        **telemetry,
    )
    documentation = {id(route) for route in app.router.routes}  # FastAPI's own, so far
    install_error_handlers(app)

    Item = create_model(
        "Item",
        name=(
            str,
            Field(
                min_length=1,
                max_length=settings.max_name_length,
                description="The item's name; also its Kafka key",
            ),
        ),
    )

    # The model's serializer, called directly: model_dump_json() parses a dozen keyword
    # arguments and returns str, which would then be encoded back (0.59 µs against 0.14).
    to_json = Item.__pydantic_serializer__.to_json

    def message(item: BaseModel) -> tuple[bytes, str]:
        name: str = item.name  # type: ignore[attr-defined]
        return to_json(item), name

    def on_delivery_loop(err: DeliveryError | None, _md: RecordMetadata) -> None:
        if err is not None:
            out_of_band_failures.warning("Item not delivered (reported on the loop): %s", err)

    def on_delivery_thread(err: DeliveryError | None, _md: RecordMetadata) -> None:
        if err is not None:
            out_of_band_failures.warning(
                "Item not delivered (reported on the poll thread): %s", err
            )

    # The five load-test endpoints answer with bytes made here rather than through FastAPI's
    # response models (still declared, for the OpenAPI schema): all five the same way, so
    # their ratios to the no-op measure Kafka's cost alone. The producer comes from the
    # lifespan through a closure: the dependency resolution a Depends() costs per request is
    # a tenth of the request on this path. (/readyz shows the Depends() way.)
    clients: dict[str, AIOProducer] = {}
    topic_json = json.dumps(topic)

    def accepted() -> Response:
        return Response(b'{"status":"accepted"}', 202, media_type="application/json")

    @app.post(
        "/items1",
        response_model=Delivered,
        responses=_UNAVAILABLE,
        summary="Produce and wait for Kafka's acknowledgement",
    )
    async def items1(item: Item) -> Response:
        value, key = message(item)
        started = time.perf_counter()
        delivery = deadline.watch(clients["producer"].produce(topic, value, key))
        try:
            md = await delivery
        finally:
            deadline.forget(delivery)
        metrics.produce_latency.observe(time.perf_counter() - started)
        timestamp = "null" if md.timestamp is None else str(md.timestamp)
        body = (
            f'{{"topic":{topic_json},"partition":{md.partition},"offset":{md.offset},'
            f'"timestamp":{timestamp}}}'
        )
        return Response(body.encode(), media_type="application/json")

    @app.post(
        "/items2",
        response_model=Accepted,
        status_code=202,
        responses=_UNAVAILABLE,
        summary="Produce; the outcome is reported to a callback on the event loop",
    )
    async def items2(item: Item) -> Response:
        value, key = message(item)
        clients["producer"].produce_nowait(topic, value, key, on_delivery=on_delivery_loop)
        return accepted()

    @app.post(
        "/items3",
        response_model=Accepted,
        status_code=202,
        responses=_UNAVAILABLE,
        summary="Produce; the outcome is reported to a callback on the poll thread",
    )
    async def items3(item: Item) -> Response:
        value, key = message(item)
        clients["producer"].produce_nowait(
            topic, value, key, on_delivery=on_delivery_thread, on_poll_thread=True
        )
        return accepted()

    @app.post(
        "/items4",
        response_model=Accepted,
        status_code=202,
        responses=_UNAVAILABLE,
        summary="Produce and forget (failures are still counted and logged)",
    )
    async def items4(item: Item) -> Response:
        value, key = message(item)
        clients["fire_and_forget"].produce_nowait(topic, value, key)
        return accepted()

    @app.post(
        "/items5",
        response_model=Accepted,
        status_code=202,
        responses=_BODY_ERRORS,
        summary="Validate the item and do nothing (the load test's reference)",
    )
    async def items5(item: Item) -> Response:
        return accepted()

    @app.get(
        "/items/{name}",
        response_model=ItemCount,
        responses={404: {"description": "No item of that name seen, or the cache is off"}},
        summary="How many items a name has had (from the cache, not from Kafka)",
    )
    async def item_count(name: str, request: Request) -> ItemCount | JSONResponse:
        table: TopicTable[int] | None = request.state.table
        if table is None:
            return _off("the item cache", "KAFKALOOP_ITEM_CACHE")
        seen = table.get(name.encode())
        if seen is None:
            full = (
                f" (the cache is full at {len(table)} names: names that came later are not counted)"
                if table.full
                else ""
            )
            return JSONResponse(
                {"detail": f"No item named {name!r} has been seen{full}"}, status_code=404
            )
        return ItemCount(name=name, count=seen)

    busiest = _Busiest()

    @app.get(
        "/items",
        response_model=Counts,
        responses={404: {"description": "The item cache is switched off"}},
        summary="The 100 busiest names (from the cache)",
    )
    async def item_counts(request: Request) -> Counts | JSONResponse:
        table: TopicTable[int] | None = request.state.table
        if table is None:
            return _off("the item cache", "KAFKALOOP_ITEM_CACHE")
        # Ranking walks every name (some 9 ms of the loop at 100,000): at most once per
        # BUSIEST_EVERY seconds, and only when the cache changed, however often it is asked.
        now = time.monotonic()
        if busiest.table is not table or (
            table.applied != busiest.applied and now - busiest.at >= BUSIEST_EVERY
        ):
            ranked = heapq.nlargest(100, table.items(), key=lambda kv: kv[1])
            busiest.counts = {(k or b"").decode(errors="replace"): v for k, v in ranked}
            busiest.table, busiest.applied, busiest.at = table, table.applied, now
        return Counts(counts=busiest.counts, lag=table.lag())

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        responses={503: {"description": "Not ready; see the reason"}},
        summary="Readiness: Kafka answers and the producer can produce",
    )
    async def readyz(kafka: Annotated[KafkaClients, Depends(get_kafka)]) -> JSONResponse:
        ready, reason = await kafka_ready(kafka)
        return JSONResponse(
            {"ready": ready, "reason": reason},
            status_code=200 if ready else 503,
            headers=None if ready else {"Retry-After": "1"},
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.websocket("/ws/items")
    async def ws_items(websocket: WebSocket) -> None:
        hub: Broadcaster | None = websocket.state.hub
        if hub is None:
            await websocket.close(1008, reason="live push is off (KAFKALOOP_LIVE_PUSH)")
            return
        await websocket.accept()
        subscription = hub.subscribe()

        async def pump() -> None:
            while True:
                payload = await subscription.get()
                try:
                    async with asyncio.timeout(settings.slow_client_timeout):
                        await websocket.send_text(payload)
                except TimeoutError:
                    raise SlowClientError(
                        f"too slow: a send waited {settings.slow_client_timeout:g}s", TOO_SLOW
                    ) from None

        async def listen() -> None:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass

        tasks = {asyncio.create_task(pump()), asyncio.create_task(listen())}
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                error = task.exception()
                if isinstance(error, SlowClientError):
                    # A client that does not read may not take the close frame either.
                    with contextlib.suppress(TimeoutError, RuntimeError):
                        async with asyncio.timeout(1.0):
                            await websocket.close(error.code, reason=str(error)[:120])
                elif error is not None and not isinstance(
                    error, WebSocketDisconnect | TimeoutError | RuntimeError
                ):
                    raise error
        finally:
            for task in tasks:
                task.cancel()
            subscription.close()

    @app.get(
        "/sse/items",
        response_class=StreamingResponse,
        response_model=None,
        responses={404: {"description": "Live push is switched off"}},
        summary="Server-Sent Events: every consumed item as it arrives",
    )
    async def sse_items(request: Request) -> Response:
        hub: Broadcaster | None = request.state.hub
        if hub is None:
            return _off("live push", "KAFKALOOP_LIVE_PUSH")
        subscription = hub.subscribe()

        async def stream() -> AsyncGenerator[str, None]:
            try:
                yield ": connected\n\n"
                while True:
                    try:
                        payload = await asyncio.wait_for(subscription.get(), 15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    except SlowClientError as exc:
                        yield f"event: close\ndata: {json.dumps(str(exc))}\n\n"
                        return
                    yield f"data: {payload}\n\n"
            finally:
                subscription.close()

        return _EventStream(
            stream(), send_timeout=settings.slow_client_timeout, log=stalled_streams
        )

    page = resources.files("kafkaloop.service").joinpath("index.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    # A request tries the routes in order (0.6-0.9 µs a route on the benchmark's machine), and
    # FastAPI put its documentation's first: the API's go before them (a stable sort keeps
    # their order). bench/README.md, "The API's routes before the documentation's".
    app.router.routes.sort(key=lambda route: id(route) in documentation)

    # Innermost first: limits answer 413/431 (and read a chunked body) only once a request is
    # let in; the queue lets requests in, probes never wait in it; metrics count everything,
    # time spent queued included.
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(
        RequestQueue,
        concurrency=settings.request_concurrency,
        max_queued=settings.max_queued_requests,
        exempt=("/healthz", "/readyz", "/metrics"),
    )
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
