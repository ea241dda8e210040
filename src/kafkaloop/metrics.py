"""Prometheus metrics for a kafkaloop web service (prometheus-client, a registry per app)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kafkaloop._models import ProducerMetrics
from kafkaloop._producer import AIOProducer

__all__ = ["RequestMetrics", "ServiceMetrics"]

# Clients choose the method: anything else is "OTHER", so labels stay bounded.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


# Each watched producer's counts: name, help, whether a counter (else a gauge), the reading.
_PRODUCER_METRICS: tuple[tuple[str, str, bool, Callable[[ProducerMetrics], int]], ...] = (
    ("kafka_messages_produced", "Messages accepted by the producer", True, lambda m: m.produced),
    (
        "kafka_messages_delivered",
        "Messages acknowledged by Kafka (may lag for a producer that reports failures only)",
        True,
        lambda m: m.delivered,
    ),
    ("kafka_messages_failed", "Messages Kafka did not take", True, lambda m: m.failed),
    (
        "kafka_messages_in_flight",
        "Accepted, not yet delivered or failed",
        False,
        lambda m: m.in_flight,
    ),
    (
        "kafka_messages_waiting_for_room",
        "Waiting for room in librdkafka's queue",
        False,
        lambda m: m.waiting_for_room,
    ),
)


class ServiceMetrics:
    """HTTP, produce and consumer metrics, exposed in Prometheus' text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.produce_latency = Histogram(
            "kafka_produce_latency_seconds",
            "Time from produce() to Kafka's acknowledgement",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._sources: list[Callable[[], Iterator[Metric]]] = []
        self._producers: dict[str, AIOProducer] = {}
        self.registry.register(self)  # a collector: it has collect() and describe()

    def watch_producer(self, producer: AIOProducer, name: str = "producer") -> None:
        """Export a producer's produced / delivered / failed / in-flight counts on every
        scrape, labelled ``producer=name`` (a name watched again is the new producer's)."""
        if not self._producers:
            self._sources.append(self._collect_producers)
        self._producers[name] = producer

    def _collect_producers(self) -> Iterator[Metric]:
        counts = [(name, producer.metrics) for name, producer in self._producers.items()]
        for metric, doc, counter, read in _PRODUCER_METRICS:
            family = (
                CounterMetricFamily(metric, doc, labels=["producer"])
                if counter
                else GaugeMetricFamily(metric, doc, labels=["producer"])
            )
            for name, m in counts:
                family.add_metric([name], read(m))
            yield family

    def watch_gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """Export `read()` as a gauge on every scrape (consumer lag, subscribers, ...)."""
        self._watch(GaugeMetricFamily, name, doc, read)

    def watch_counter(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """Export `read()`, a count that never goes down, as a counter (``name_total``) on
        every scrape."""
        self._watch(CounterMetricFamily, name, doc, read)

    def _watch(
        self,
        family: type[GaugeMetricFamily | CounterMetricFamily],
        name: str,
        doc: str,
        read: Callable[[], float],
    ) -> None:
        def collect() -> Iterator[Metric]:
            yield family(name, doc, value=read())

        self._sources.append(collect)

    def collect(self) -> Iterator[Metric]:
        """The collector protocol: what the watched sources say now."""
        for source in self._sources:
            yield from source()

    def describe(self) -> list[Metric]:
        """Nothing up front: these metrics are produced on collection."""
        return []

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware counting and timing every HTTP request by route template."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self._requests = metrics.requests
        self._latency = metrics.request_latency
        # Each label set's child, looked up once: labels() costs about 0.75 µs a call, twice a
        # request. Bounded like the children themselves: methods, route templates, statuses.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            counter = self._counters.get((method, template, status))
            if counter is None:
                counter = self._requests.labels(method, template, str(status))
                self._counters[method, template, status] = counter
            counter.inc()
            timer = self._timers.get(template)
            if timer is None:
                timer = self._timers[template] = self._latency.labels(template)
            timer.observe(time.perf_counter() - started)
