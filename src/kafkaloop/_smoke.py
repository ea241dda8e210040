"""`kafkaloop smoke`: produce a batch of messages and read every one of them back."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer

from kafkaloop._config import make_client
from kafkaloop._exceptions import KafkaloopError
from kafkaloop._logging import librdkafka_logger

_NOT_FOR_SMOKE = ("transactional.id", "delivery.report.only.error")
"""The user's producer properties that the smoke's plain producer leaves out: it opens no
transaction, and wants every delivery reported."""


def run_smoke(
    producer_config: dict[str, Any],
    consumer_config: dict[str, Any],
    topic: str,
    count: int,
    timeout: float = 60.0,
) -> int:
    """Produce `count` messages tagged with a fresh run id, consume them back, print timings.

    The configurations are librdkafka's (``bootstrap.servers`` and the rest: security...); a
    configuration librdkafka refuses raises :class:`ConfigurationError`."""
    bootstrap = producer_config["bootstrap.servers"]
    producer_config = {k: v for k, v in producer_config.items() if k not in _NOT_FOR_SMOKE}
    producer_config.setdefault("logger", librdkafka_logger)  # (rate-limited while unreachable)
    run_id = uuid.uuid4().hex
    failures: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(err)

    started = time.monotonic()
    producer = make_client(Producer, producer_config, producer_config, "smoke producer")
    for i in range(count):
        producer.produce(topic, f"{run_id}:{i}".encode(), on_delivery=on_delivery)
        producer.poll(0)
    unacknowledged = producer.flush(timeout)
    if unacknowledged:  # withdrawn, so they fail here (not in a warning as the client goes)
        producer.purge()
        producer.flush(timeout)
    if failures:
        refused = [f for f in failures if f.code() != KafkaError._PURGE_QUEUE]
        why = (
            str(refused[0])
            if refused
            else f"no acknowledgement within {timeout:g}s: is the cluster reachable?"
        )
        raise KafkaloopError(
            f"{len(failures)} of {count} messages to {topic!r} on {bootstrap} were not "
            f"delivered ({why})"
        )
    produced = time.monotonic() - started
    print(f"produced {count} messages to {topic!r} on {bootstrap} in {produced:.2f}s")

    consumer_config = {
        "logger": librdkafka_logger,
        **consumer_config,
        "group.id": f"kafkaloop-smoke-{run_id}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    consumer = make_client(Consumer, consumer_config, consumer_config, "smoke consumer")
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        consumer.subscribe([topic])
        while len(seen) < count and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                value = msg.value()
                if msg.error() is None and value is not None and value.startswith(run_id.encode()):
                    seen.add(int(value.split(b":")[1]))
    finally:
        consumer.close()
    if len(seen) < count:
        raise KafkaloopError(f"consumed only {len(seen)} of {count} messages within {timeout}s")
    print(f"consumed all {count} back in {time.monotonic() - started - produced:.2f}s")
    return 0
