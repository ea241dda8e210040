"""The librdkafka calls kafkaloop makes itself: watching a producer's main queue."""

from __future__ import annotations

import os
import select
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer

from kafkaloop import _rdkafka
from kafkaloop._extensions import DISABLED


def test_the_queue_can_be_watched_here() -> None:
    if DISABLED:
        pytest.skip("KAFKALOOP_NO_EXTENSIONS is set")
    client = Producer({})
    watch = _rdkafka.watch_main_queue(client)
    assert watch is not None, "kafkaloop cannot reach confluent-kafka's librdkafka handle"
    watch.close()


def test_a_producers_main_queue_announces_its_delivery_reports(
    kafka_bootstrap: str, topic_name: str
) -> None:
    client = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 1})
    watch = _rdkafka.watch_main_queue(client)
    if watch is None:
        pytest.skip("librdkafka's queue cannot be watched here")
    reports: list[tuple[KafkaError | None, Message]] = []
    try:
        client.produce(topic_name, b"v", on_delivery=lambda err, msg: reports.append((err, msg)))
        readable, _, _ = select.select([watch.fileno()], [], [], 30)
        assert readable, "no byte on the descriptor within 30 s"
        assert watch.pending() >= 1
        watch.clear()
        client.poll(0)
        assert [(err, msg.offset()) for err, msg in reports] == [(None, 0)]
        assert watch.pending() == 0
        readable, _, _ = select.select([watch.fileno()], [], [], 0)
        assert readable == []  # cleared, and nothing new
    finally:
        watch.close()
        watch.close()  # idempotent
    assert watch.pending() == 0
    client.produce(topic_name, b"after")  # the producer goes on without its watch
    assert client.flush(30) == 0


def test_only_a_producer_is_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = Consumer({"group.id": "g"})
    try:
        assert _rdkafka.watch_main_queue(consumer) is None  # type: ignore[arg-type]
    finally:
        consumer.close()
    assert _rdkafka.watch_main_queue(object()) is None  # type: ignore[arg-type]
    monkeypatch.setattr(_rdkafka, "DISABLED", True)
    assert _rdkafka.watch_main_queue(Producer({})) is None


def test_a_watch_opens_no_file_for_good() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        client = Producer({})
        watch = _rdkafka.watch_main_queue(client)
        if watch is None:
            pytest.skip("librdkafka's queue cannot be watched here")
        watch.close()
        del client
    time.sleep(0)
    assert len(os.listdir("/proc/self/fd")) <= before
