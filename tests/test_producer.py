"""AIOProducer against a real broker: outcomes, callbacks, backpressure, closing, transactions."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka.admin import NewTopic

from kafkaloop import (
    AIOAdminClient,
    AIOProducer,
    ConfigurationError,
    DeliveryCallback,
    DeliveryError,
    KafkaloopError,
    NoRunningLoopError,
    Persistence,
    ProducerClosedError,
    QueueFullError,
    RecordMetadata,
    TransactionError,
    _bridge,
)
from kafkaloop._bridge import CallbackThread
from kafkaloop.broker import LocalKafka
from tests.twins import skip_unless_the_loop_serves_reports
from tests.wakeups import CountingQueue, count_wakeups

# Nothing listens here: a cluster that is down.
UNREACHABLE = "127.0.0.1:1"


@pytest.fixture(autouse=True)
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Fail the test on anything the loop reports (e.g. 'exception was never retrieved')."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert errors == []


@pytest.fixture(params=["callbacks on the loop", "poll thread"])
async def producer(
    request: pytest.FixtureRequest, kafka_bootstrap: str
) -> AsyncIterator[AIOProducer]:
    """A producer whose callbacks the loop serves, and one with a poll thread (what a producer
    has where librdkafka's queue cannot announce its work on a pipe)."""
    on_loop = request.param == "callbacks on the loop"
    if on_loop:
        skip_unless_the_loop_serves_reports()
    async with AIOProducer(
        {"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True},
        poll_thread=not on_loop,
    ) as producer:
        polling = any(t.name == "kafkaloop-producer-poll" for t in threading.enumerate())
        assert polling is not on_loop
        yield producer


def _consume_all(bootstrap: str, topic: str, count: int, **config: Any) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **config,
        }
    )
    consumer.subscribe([topic])
    records: list[Message] = []
    deadline = time.monotonic() + 30
    try:
        while len(records) < count and time.monotonic() < deadline:
            records.extend(m for m in consumer.consume(1000, timeout=0.5) if m.error() is None)
        # Anything beyond `count` would be a duplicate: read a little longer to catch it.
        records.extend(m for m in consumer.consume(1000, timeout=1.0) if m.error() is None)
    finally:
        consumer.close()
    return records


async def consume_all(bootstrap: str, topic: str, count: int, **config: Any) -> list[Message]:
    return await asyncio.to_thread(_consume_all, bootstrap, topic, count, **config)


# -- outcomes ------------------------------------------------------------------------------


async def test_awaited_produce_resolves_with_record_metadata(
    producer: AIOProducer, topic_name: str
) -> None:
    before = int(time.time() * 1000)

    metadata = await producer.produce(topic_name, b"value", key=b"key")

    assert isinstance(metadata, RecordMetadata)
    assert (metadata.topic, metadata.partition, metadata.offset) == (topic_name, 0, 0)
    assert metadata.timestamp is not None
    assert before - 1000 <= metadata.timestamp <= int(time.time() * 1000) + 1000


async def test_str_and_bytes_keys_values_and_headers_round_trip(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    await producer.produce(topic_name, "välue", key="kéy", headers={"trace": b"1", "s": "x"})
    await producer.produce(topic_name, b"\x00raw", key=b"\xff", headers=[("a", b"1"), ("a", b"2")])
    await producer.produce(topic_name, None, key=b"tombstone")

    records = await consume_all(kafka_bootstrap, topic_name, 3)

    assert [(r.key(), r.value()) for r in records] == [
        ("kéy".encode(), "välue".encode()),
        (b"\xff", b"\x00raw"),
        (b"tombstone", None),
    ]
    assert records[0].headers() == [("trace", b"1"), ("s", b"x")]
    assert records[1].headers() == [("a", b"1"), ("a", b"2")]


async def test_produce_nowait_passes_headers_timestamp_and_callback_on(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    reported: list[tuple[DeliveryError | None, RecordMetadata]] = []
    producer.produce_nowait(topic_name, b"plain", b"k")
    producer.produce_nowait(topic_name, b"h", headers={"trace": b"1"}, timestamp=1_600_000_000_000)
    producer.produce_nowait(
        topic_name, b"cb", on_delivery=lambda err, md: reported.append((err, md))
    )
    await producer.flush()

    records = await consume_all(kafka_bootstrap, topic_name, 3)

    assert [(r.key(), r.value()) for r in records] == [
        (b"k", b"plain"),
        (None, b"h"),
        (None, b"cb"),
    ]
    assert records[1].headers() == [("trace", b"1")]
    assert records[1].timestamp()[1] == 1_600_000_000_000
    assert [(err, md.offset) for err, md in reported] == [(None, 2)]
    assert producer.metrics.delivered == 3


async def test_explicit_timestamp_and_partition_are_used(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    async with AIOAdminClient({"bootstrap.servers": kafka_bootstrap}) as admin:
        await admin.create_topics([NewTopic(topic_name, num_partitions=3)])

    metadata = await producer.produce(topic_name, b"v", partition=2, timestamp=1_600_000_000_000)
    by_keywords = await producer.produce(topic_name, value=b"w", key="k", partition=1)

    assert metadata.partition == 2
    assert metadata.timestamp == 1_600_000_000_000
    assert (by_keywords.partition, by_keywords.offset) == (1, 0)
    with pytest.raises(TypeError):
        producer.produce(topic_name, b"v", partition="1")  # type: ignore[arg-type]
    assert producer.metrics.produced == 2


async def test_gathered_produces_keep_call_order_within_a_partition(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    futures = [producer.produce(topic_name, str(i).encode()) for i in range(2000)]

    results = await asyncio.gather(*futures)

    assert [md.offset for md in results] == list(range(2000))
    records = await consume_all(kafka_bootstrap, topic_name, 2000)
    assert [r.value() for r in records] == [str(i).encode() for i in range(2000)]


async def test_rejected_message_raises_delivery_error_that_is_a_kafka_exception(
    producer: AIOProducer, topic_name: str
) -> None:
    # Within librdkafka's limit, over the broker's default 1 MiB message limit.
    big = b"x" * 1_500_000
    async with AIOProducer(
        {"bootstrap.servers": producer._bootstrap, "message.max.bytes": 2_000_000}
    ) as lax:
        with pytest.raises(DeliveryError) as caught:
            await lax.produce(topic_name, big)

    error = caught.value
    assert isinstance(error, KafkaException)
    assert isinstance(error.args[0], KafkaError)
    assert error.code == KafkaError.MSG_SIZE_TOO_LARGE
    assert error.persistence is Persistence.NOT_PERSISTED
    assert not error.retriable
    assert topic_name in str(error)
    assert "too large" in str(error).lower()


async def test_message_over_the_local_limit_raises_at_once(
    producer: AIOProducer, topic_name: str
) -> None:
    with pytest.raises(DeliveryError) as caught:
        producer.produce(topic_name, b"x" * 2_000_000)

    assert caught.value.code == KafkaError.MSG_SIZE_TOO_LARGE
    assert producer.metrics.produced == 0


async def test_every_awaited_produce_fails_within_the_message_timeout_when_kafka_is_down(
    topic_name: str,
) -> None:
    async with AIOProducer({"bootstrap.servers": UNREACHABLE, "message.timeout.ms": 1500}) as p:
        started = time.monotonic()
        results = await asyncio.gather(
            *(p.produce(topic_name, b"v") for _ in range(50)), return_exceptions=True
        )
        elapsed = time.monotonic() - started

    assert all(isinstance(r, DeliveryError) for r in results)
    assert {r.code for r in results if isinstance(r, DeliveryError)} == {KafkaError._MSG_TIMED_OUT}
    assert elapsed < 5
    assert p.metrics.failed == 50


@pytest.mark.slow
async def test_produce_fails_then_recovers_when_a_real_broker_stops_and_returns(
    tmp_path: Path, topic_name: str
) -> None:
    kafka = LocalKafka(1, state_dir=tmp_path / "kafka")
    await asyncio.to_thread(kafka.start)
    try:
        async with AIOProducer(
            {"bootstrap.servers": kafka.bootstrap_servers, "message.timeout.ms": 3000}
        ) as p:
            assert (await p.produce(topic_name, b"before")).offset == 0
            await asyncio.to_thread(kafka.stop_node, 0, hard=True)

            started = time.monotonic()
            with pytest.raises(DeliveryError) as caught:
                await p.produce(topic_name, b"while down")
            assert time.monotonic() - started < 6
            assert caught.value.persistence is Persistence.POSSIBLY_PERSISTED

            await asyncio.to_thread(kafka.start_node, 0)
            # librdkafka waits longer between reconnects the longer a broker is down (up to
            # reconnect.backoff.max.ms, 10 s): a message may time out before it tries again.
            deadline = time.monotonic() + 60
            while True:
                try:
                    metadata = await p.produce(topic_name, b"after")
                    break
                except DeliveryError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
    finally:
        await asyncio.to_thread(kafka.stop)
    assert metadata.offset >= 1


# -- cancellation --------------------------------------------------------------------------


async def test_cancelling_the_awaiting_task_neither_cancels_nor_duplicates_delivery(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    tasks = [asyncio.create_task(_await_produce(producer, topic_name, i)) for i in range(100)]
    await asyncio.sleep(0)  # every task has handed its message over
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    assert await producer.flush(10) == 0
    assert all(task.cancelled() for task in tasks)
    assert producer.metrics.delivered == 100
    records = await consume_all(kafka_bootstrap, topic_name, 100)
    assert sorted(int(r.value() or b"") for r in records) == list(range(100))


async def _await_produce(producer: AIOProducer, topic: str, i: int) -> RecordMetadata:
    return await producer.produce(topic, str(i).encode())


async def test_cancelled_failure_is_counted_and_logged_not_raised(
    topic_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with AIOProducer({"bootstrap.servers": UNREACHABLE, "message.timeout.ms": 500}) as p:
        future = p.produce(topic_name, b"v")
        future.cancel()
        await p.flush(5)

    assert p.metrics.failed == 1
    assert "awaiter had stopped waiting" in caplog.text


# -- out-of-band and fire-and-forget -------------------------------------------------------


async def test_out_of_band_callback_runs_on_the_event_loop_thread(
    producer: AIOProducer, topic_name: str
) -> None:
    seen: list[tuple[DeliveryError | None, RecordMetadata, int]] = []

    def on_delivery(err: DeliveryError | None, md: RecordMetadata) -> None:
        seen.append((err, md, threading.get_ident()))

    producer.produce_nowait(topic_name, b"v", on_delivery=on_delivery)
    await producer.flush(10)

    [(err, md, thread)] = seen
    assert err is None
    assert md.topic == topic_name
    assert md.offset == 0
    assert thread == threading.get_ident()


async def test_out_of_band_coroutine_callback_is_awaited_on_the_loop(
    producer: AIOProducer, topic_name: str
) -> None:
    done = asyncio.Event()

    async def on_delivery(err: DeliveryError | None, md: RecordMetadata) -> None:
        await asyncio.sleep(0)
        done.set()

    producer.produce_nowait(topic_name, b"v", on_delivery=on_delivery)

    await asyncio.wait_for(done.wait(), 10)


async def test_poll_thread_callback_runs_on_the_poll_thread(
    producer: AIOProducer, topic_name: str
) -> None:
    threads: list[str] = []

    def on_delivery(err: DeliveryError | None, md: RecordMetadata) -> None:
        threads.append(threading.current_thread().name)

    for _ in range(10):
        producer.produce_nowait(topic_name, b"v", on_delivery=on_delivery, on_poll_thread=True)
    await producer.flush(10)

    assert len(threads) == 10
    assert threading.current_thread().name not in threads
    assert producer.metrics.delivered == 10


async def test_thread_callbacks_of_one_poll_wake_their_thread_once(
    kafka_bootstrap: str, topic_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop's polls go through CallbackThread.run_held (test_bridge checks what it holds
    # back): the callback thread is woken once a poll has served its reports, never during it.
    wakeups: CountingQueue | None = None
    polls = sent_during_polls = 0
    run_held = CallbackThread.run_held

    def counted(self: CallbackThread, func: Any, *args: Any) -> Any:
        def poll(*poll_args: Any) -> Any:
            nonlocal polls, sent_during_polls
            polls += 1
            before = wakeups.puts if wakeups is not None else 0
            try:
                return func(*poll_args)
            finally:
                if wakeups is not None:
                    sent_during_polls += wakeups.puts - before

        return run_held(self, poll, *args)

    skip_unless_the_loop_serves_reports()
    monkeypatch.setattr(CallbackThread, "run_held", counted)
    async with AIOProducer({"bootstrap.servers": kafka_bootstrap}) as producer:
        loop = asyncio.get_running_loop()
        all_ran = asyncio.Event()
        ran = 0

        def on_delivery(err: DeliveryError | None, md: RecordMetadata) -> None:
            nonlocal ran
            ran += 1
            if ran == 300:
                loop.call_soon_threadsafe(all_ran.set)

        producer.produce_nowait(topic_name, b"v", on_delivery=on_delivery, on_poll_thread=True)
        thread = producer._callback_thread
        assert thread is not None
        wakeups = count_wakeups(thread)
        for _ in range(299):
            producer.produce_nowait(topic_name, b"v", on_delivery=on_delivery, on_poll_thread=True)
        # Served on the loop (not by a flush): every report through _poll.
        await asyncio.wait_for(all_ran.wait(), 10)

        assert polls > 0
        assert wakeups.puts > 0
        assert sent_during_polls == 0
        assert producer.metrics.delivered == 300


async def test_each_message_reports_to_its_own_callback_where_it_asked(
    producer: AIOProducer, topic_name: str
) -> None:
    # produce_nowait keeps the wrapper of the last callback: changing callback, or where it
    # runs, from one message to the next must still reach the right one, on the right thread.
    loop_thread = threading.get_ident()
    seen: dict[str, list[tuple[int, bool]]] = {"a": [], "b": []}

    def callback(name: str) -> DeliveryCallback:
        def on_delivery(err: DeliveryError | None, md: RecordMetadata) -> None:
            assert err is None
            seen[name].append((int(md.offset), threading.get_ident() == loop_thread))

        return on_delivery

    a, b = callback("a"), callback("b")
    plan = [(a, False), (a, False), (b, False), (a, True), (a, True), (b, True), (a, False)]
    for on_delivery, on_poll_thread in plan:
        producer.produce_nowait(
            topic_name, b"v", partition=0, on_delivery=on_delivery, on_poll_thread=on_poll_thread
        )
    producer.produce_nowait(topic_name, b"v", partition=0)  # fire-and-forget: no callback
    await producer.flush(10)

    assert sorted(seen["a"]) == [(0, True), (1, True), (3, False), (4, False), (6, True)]
    assert sorted(seen["b"]) == [(2, True), (5, False)]
    assert producer.metrics.delivered == 8


async def test_raising_callbacks_are_logged_and_kill_neither_thread_nor_loop(
    producer: AIOProducer, topic_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(err: DeliveryError | None, md: RecordMetadata) -> None:
        raise RuntimeError("boom")

    producer.produce_nowait(topic_name, b"v", on_delivery=explode)
    producer.produce_nowait(topic_name, b"v", on_delivery=explode, on_poll_thread=True)
    await producer.flush(10)

    assert (await producer.produce(topic_name, b"after")).offset == 2
    raised = [r for r in caplog.records if r.exc_info and str(r.exc_info[1]) == "boom"]
    assert sorted(r.message for r in raised) == [
        "An on_delivery callback raised on the event loop",
        "An on_delivery callback raised on the poll thread",
    ]
    assert producer.metrics.delivered == 3


async def test_fire_and_forget_is_counted(producer: AIOProducer, topic_name: str) -> None:
    for _ in range(500):
        producer.produce_nowait(topic_name, b"v")
    assert producer.metrics.produced == 500

    assert await producer.flush(10) == 0

    metrics = producer.metrics
    assert (metrics.produced, metrics.delivered, metrics.failed, metrics.in_flight) == (
        500,
        500,
        0,
        0,
    )


async def test_fire_and_forget_failures_are_counted_and_logged_rate_limited(
    topic_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kafkaloop")
    async with AIOProducer({"bootstrap.servers": UNREACHABLE, "message.timeout.ms": 500}) as p:
        for _ in range(200):
            p.produce_nowait(topic_name, b"v")
        await p.flush(5)

    assert p.metrics.failed == 200
    failures = [r for r in caplog.records if "Fire-and-forget message not delivered" in r.message]
    assert 1 <= len(failures) <= 2
    assert "Message timed out" in failures[0].message


@pytest.mark.parametrize("poll_thread", [False, True], ids=["loop", "poll-thread"])
@pytest.mark.parametrize("only_errors", [True, "true"])
async def test_a_producer_reporting_only_failures_counts_fire_and_forget_and_refuses_awaits(
    kafka_bootstrap: str, topic_name: str, only_errors: bool | str, poll_thread: bool
) -> None:
    reports: list[DeliveryError | None] = []
    async with AIOProducer(
        {"bootstrap.servers": kafka_bootstrap, "delivery.report.only.error": only_errors},
        poll_thread=poll_thread,
    ) as p:
        for at in range(500):
            p.produce_nowait(topic_name, b"v", on_delivery=None if at % 2 else _append_to(reports))
        # Delivered is reckoned from what librdkafka still holds: it may lag, never go back.
        seen = []
        flushing = asyncio.create_task(p.flush(10))
        while not flushing.done():
            seen.append(p.metrics.delivered)
            await asyncio.sleep(0.001)
        assert await flushing == 0
        assert seen == sorted(seen)
        assert all(0 <= delivered <= 500 for delivered in seen)

        metrics = p.metrics
        assert (metrics.produced, metrics.delivered, metrics.failed, metrics.in_flight) == (
            500,
            500,
            0,
            0,
        )
        assert reports == []  # successes are not reported
        # Events librdkafka queues for the loop (a batch's reports, a log line) count as held
        # until served: the count shown does not go back meanwhile.
        p._producer = _HoldingMore(p._producer, 3)  # type: ignore[assignment]
        assert p.metrics.delivered == 500
        with pytest.raises(ConfigurationError, match=r"produce_nowait\(\)"):
            p.produce(topic_name, b"awaited")
        with pytest.raises(ConfigurationError, match=r"delivery\.report\.only\.error"):
            await p.produce_many(topic_name, [b"awaited"])
        assert p.metrics.produced == 500  # neither was queued

    assert p.metrics == metrics  # closed: the counts stay as they were
    assert len(await consume_all(kafka_bootstrap, topic_name, 500)) == 500


@pytest.mark.parametrize("poll_thread", [False, True], ids=["loop", "poll-thread"])
async def test_a_producer_reporting_only_failures_reports_and_counts_each_failure(
    topic_name: str, caplog: pytest.LogCaptureFixture, poll_thread: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="kafkaloop")
    on_loop: list[DeliveryError | None] = []
    on_thread: list[DeliveryError | None] = []
    config = {
        "bootstrap.servers": UNREACHABLE,
        "message.timeout.ms": 500,
        "delivery.report.only.error": True,
    }
    seen = []
    async with AIOProducer(config, poll_thread=poll_thread) as p:
        for at in range(60):
            if at % 3 == 0:
                p.produce_nowait(topic_name, b"v")
            elif at % 3 == 1:
                p.produce_nowait(topic_name, b"v", on_delivery=_append_to(on_loop))
            else:
                p.produce_nowait(
                    topic_name, b"v", on_delivery=_append_to(on_thread), on_poll_thread=True
                )
        # Each failure is counted before librdkafka lets go of it: never taken for delivered.
        flushing = asyncio.create_task(p.flush(5))
        while not flushing.done():
            seen.append(p.metrics.delivered)
            await asyncio.sleep(0)
        await flushing

    assert (p.metrics.produced, p.metrics.delivered, p.metrics.failed) == (60, 0, 60)
    assert seen
    assert max(seen) == 0
    assert len(on_loop) == len(on_thread) == 20
    assert all(isinstance(report, DeliveryError) for report in on_loop + on_thread)
    assert any("Fire-and-forget message not delivered" in r.message for r in caplog.records)


async def test_reporting_only_failures_takes_a_boolean_or_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"delivery\.report\.only\.error must be true"):
        AIOProducer({"bootstrap.servers": UNREACHABLE, "delivery.report.only.error": "maybe"})


class _HoldingMore:
    """A confluent-kafka Producer whose len() (what librdkafka holds) reads `more` higher, and
    what flush() returns too unless `in_flush` is false (events queued just after it)."""

    def __init__(self, producer: Any, more: int, *, in_flush: bool = True) -> None:
        self._producer = producer
        self._more = more
        self._in_flush = in_flush

    def __len__(self) -> int:
        return len(self._producer) + self._more

    def flush(self, timeout: float) -> int:
        return int(self._producer.flush(timeout)) + (self._more if self._in_flush else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


def _append_to(reports: list[DeliveryError | None]) -> DeliveryCallback:
    def on_delivery(err: DeliveryError | None, _metadata: RecordMetadata) -> None:
        reports.append(err)

    return on_delivery


# -- bulk ----------------------------------------------------------------------------------


async def test_produce_many_returns_metadata_in_input_order(
    producer: AIOProducer, kafka_bootstrap: str, topic_name: str
) -> None:
    results = await producer.produce_many(
        topic_name, [b"a", (b"k", b"b"), ("k2", "c")], headers={"h": b"1"}
    )

    assert [r.offset for r in results if isinstance(r, RecordMetadata)] == [0, 1, 2]
    records = await consume_all(kafka_bootstrap, topic_name, 3)
    assert [(r.key(), r.value()) for r in records] == [(None, b"a"), (b"k", b"b"), (b"k2", b"c")]
    assert producer.metrics.delivered == 3


async def test_produce_many_checks_its_items(producer: AIOProducer, topic_name: str) -> None:
    class Triple(tuple[bytes, bytes, bytes]):
        pass

    with pytest.raises(ValueError, match="item 1 is a tuple but not a"):
        await producer.produce_many(topic_name, [b"a", Triple((b"k", b"v", b"x"))])  # type: ignore[list-item]
    assert producer.metrics.produced == 0  # nothing was sent

    with pytest.raises(TypeError):  # found only as it is handed over: the rest is not sent
        await producer.produce_many(topic_name, [b"a", b"b", 5, b"d"])  # type: ignore[list-item]
    assert await producer.flush(10) == 0
    metrics = producer.metrics
    assert (metrics.produced, metrics.delivered, metrics.failed) == (4, 2, 2)
    assert metrics.in_flight == 0


async def test_produce_many_fails_one_message_librdkafka_refuses_and_sends_the_rest(
    producer: AIOProducer, topic_name: str
) -> None:
    items = [b"a", b"x" * 2_000_000, b"c"]  # the second is over message.max.bytes

    results = await producer.produce_many(topic_name, items, return_exceptions=True)

    first, refused, last = results
    assert isinstance(refused, DeliveryError)
    assert refused.code == KafkaError.MSG_SIZE_TOO_LARGE
    assert topic_name in str(refused)
    assert isinstance(first, RecordMetadata)
    assert isinstance(last, RecordMetadata)
    assert (first.offset, last.offset) == (0, 1)
    metrics = producer.metrics
    assert (metrics.produced, metrics.delivered, metrics.failed) == (3, 2, 1)


async def test_a_cancelled_produce_many_fails_what_it_did_not_send(topic_name: str) -> None:
    async with AIOProducer(
        {
            "bootstrap.servers": UNREACHABLE,
            "queue.buffering.max.messages": 2,
            "message.timeout.ms": 60_000,
        }
    ) as p:
        many = asyncio.ensure_future(p.produce_many(topic_name, [b"v"] * 5))
        await asyncio.sleep(0.2)  # two are queued, the rest waits for room
        many.cancel()
        with pytest.raises(asyncio.CancelledError):
            await many
        assert p.metrics.produced == 5  # the batch's outcomes are counted once all are in
        assert await p.close(timeout=0) == 2
    metrics = p.metrics
    assert (metrics.produced, metrics.delivered, metrics.failed) == (5, 0, 5)
    assert metrics.in_flight == 0


async def test_produce_many_reports_failures(topic_name: str) -> None:
    async with AIOProducer({"bootstrap.servers": UNREACHABLE, "message.timeout.ms": 500}) as p:
        results = await p.produce_many(topic_name, [b"a", b"b"], return_exceptions=True)
        with pytest.raises(DeliveryError):
            await p.produce_many(topic_name, [b"c"])

    assert all(isinstance(r, DeliveryError) for r in results)
    assert p.metrics.failed == 3


# -- a full queue --------------------------------------------------------------------------


async def test_awaited_produce_waits_for_room_and_keeps_order(
    kafka_bootstrap: str, topic_name: str
) -> None:
    topic = topic_name
    async with AIOProducer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "enable.idempotence": True,
            "queue.buffering.max.messages": 5,
        }
    ) as p:
        futures = [p.produce(topic, str(i).encode()) for i in range(300)]
        assert p.metrics.waiting_for_room > 0
        results = await asyncio.gather(*futures)

    assert [md.offset for md in results] == list(range(300))
    assert p.metrics.delivered == 300


async def test_full_queue_fails_nowait_at_once_and_awaited_after_the_timeout(
    topic_name: str,
) -> None:
    async with AIOProducer(
        {
            "bootstrap.servers": UNREACHABLE,
            "queue.buffering.max.messages": 3,
            "message.timeout.ms": 60_000,
        },
        queue_full_timeout=0.3,
        max_waiting=2,
    ) as p:
        accepted = [p.produce(topic_name, b"v") for _ in range(3)]
        with pytest.raises(QueueFullError, match=r"queue is full.*Await produce"):
            p.produce_nowait(topic_name, b"v")
        waiting = [p.produce(topic_name, b"v") for _ in range(2)]
        # The bound on waiting messages: memory stays flat. (Awaiting is no advice here.)
        with pytest.raises(QueueFullError, match=r"max_waiting \(2\)") as refused:
            p.produce(topic_name, b"v")
        assert "Await produce" not in str(refused.value)
        started = time.monotonic()
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        waited = time.monotonic() - started

        assert all(isinstance(o, QueueFullError) for o in outcomes)
        assert all("waited queue_full_timeout (0.3s)" in str(o) for o in outcomes)
        assert 0.2 < waited < 2
        assert await p.close(timeout=0.2) == 3
    for future in accepted:
        with pytest.raises(DeliveryError):
            future.result()


# -- lifecycle -----------------------------------------------------------------------------


def test_creating_outside_a_running_loop_is_refused() -> None:
    with pytest.raises(NoRunningLoopError, match="running event loop"):
        AIOProducer({"bootstrap.servers": UNREACHABLE})


async def test_close_is_idempotent_and_later_produces_are_refused(
    kafka_bootstrap: str, topic_name: str
) -> None:
    p = AIOProducer({"bootstrap.servers": kafka_bootstrap})
    produce = p.produce  # taken while open, as a benchmark or a hot loop would
    await produce(topic_name, b"v")
    p.produce_nowait(topic_name, b"v", on_delivery=lambda err, md: None, on_poll_thread=True)

    first, second = await asyncio.gather(p.close(), p.close())

    assert (first, second, await p.close()) == (0, 0, 0)
    with pytest.raises(ProducerClosedError, match="create a new one"):
        p.produce(topic_name, b"v")
    with pytest.raises(ProducerClosedError, match="create a new one"):
        produce(topic_name, b"v")
    with pytest.raises(ProducerClosedError):
        p.produce_nowait(topic_name, b"v")
    assert p.metrics.produced == 2
    names = {t.name for t in threading.enumerate()}
    assert not names & {"kafkaloop-producer-poll", "kafkaloop-producer-callbacks"}


async def test_a_poll_thread_serves_callbacks_where_the_queue_cannot_be_watched(
    kafka_bootstrap: str, topic_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_bridge, "watch_main_queue", lambda client: None)
    async with AIOProducer({"bootstrap.servers": kafka_bootstrap}) as p:
        assert any(t.name == "kafkaloop-producer-poll" for t in threading.enumerate())
        assert (await p.produce(topic_name, b"v")).offset == 0
    assert not any(t.name == "kafkaloop-producer-poll" for t in threading.enumerate())


async def test_produce_is_the_documented_method_and_a_subclass_can_override_it(
    kafka_bootstrap: str, topic_name: str
) -> None:
    async with AIOProducer({"bootstrap.servers": kafka_bootstrap}) as p:
        assert inspect.signature(p.produce) == inspect.signature(AIOProducer.produce.__get__(p))
        assert p.produce.__doc__ == AIOProducer.produce.__doc__

    class Counting(AIOProducer):
        calls = 0

        def produce(self, *args: Any, **kwargs: Any) -> asyncio.Future[RecordMetadata]:
            Counting.calls += 1
            return super().produce(*args, **kwargs)

    async with Counting({"bootstrap.servers": kafka_bootstrap}) as counting:
        await counting.produce(topic_name, b"v")
    assert Counting.calls == 1


async def test_close_with_a_timeout_purges_and_counts_what_was_not_delivered(
    topic_name: str,
) -> None:
    p = AIOProducer({"bootstrap.servers": UNREACHABLE, "message.timeout.ms": 60_000})
    futures = [p.produce(topic_name, b"v") for _ in range(10)]
    p.produce_nowait(topic_name, b"v")

    started = time.monotonic()
    undelivered = await p.close(timeout=0.5)

    assert undelivered == 11
    assert time.monotonic() - started < 5
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(o, DeliveryError) for o in outcomes)
    assert p.metrics.failed == 11
    # Withdrawn, not refused: the advice is not "will fail the same way".
    assert "withdrew it" in str(outcomes[0])
    assert "fix the cause" not in str(outcomes[0])


async def test_a_cancelled_flush_does_not_hold_up_close(topic_name: str) -> None:
    p = AIOProducer({"bootstrap.servers": UNREACHABLE, "message.timeout.ms": 60_000})
    p.produce_nowait(topic_name, b"v")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(p.flush(), 0.3)  # no limit: until message.timeout.ms

    started = time.monotonic()
    undelivered = await p.close(timeout=0.5)

    assert undelivered == 1
    assert time.monotonic() - started < 5  # not the minute librdkafka's flush would take


async def test_flush_does_not_block_the_event_loop(topic_name: str) -> None:
    async with AIOProducer({"bootstrap.servers": UNREACHABLE, "message.timeout.ms": 60_000}) as p:
        p.produce_nowait(topic_name, b"v")
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        assert await p.flush(1.0) == 1
        stop.set()
        await ticking
        await p.close(timeout=0)

    # A flush blocking the loop would show one gap of about its 1 s; a loaded machine,
    # a few of 0.1-0.3 s.
    assert len(gaps) > 5
    assert max(gaps) < 0.6


@pytest.mark.parametrize("only_errors", [False, True], ids=["all-reports", "failures-only"])
async def test_flush_counts_messages_not_the_events_librdkafka_has_queued(
    topic_name: str, only_errors: bool
) -> None:
    config = {
        "bootstrap.servers": UNREACHABLE,
        "message.timeout.ms": 60_000,
        "delivery.report.only.error": only_errors,
    }
    p = AIOProducer(config)
    try:
        # librdkafka's count also holds the log lines and errors queued for the application
        # (a broker it cannot reach makes them in bursts): here, three of them, always.
        p._producer = _HoldingMore(p._producer, 3)  # type: ignore[assignment]
        p.produce_nowait(topic_name, b"v")

        assert await p.flush(0.3) == 1
        assert p.metrics.in_flight == 1
        assert await p.close(timeout=0) == 1
    finally:
        await p.close(timeout=0)


async def test_a_flush_that_emptied_librdkafka_leaves_none_undelivered_reporting_failures_only(
    kafka_bootstrap: str, topic_name: str
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap, "delivery.report.only.error": True}
    async with AIOProducer(config) as p:
        # Events librdkafka queues after its flush returned: its count reads higher again.
        p._producer = _HoldingMore(p._producer, 3, in_flush=False)  # type: ignore[assignment]
        for _ in range(10):
            p.produce_nowait(topic_name, b"v")

        assert await p.flush(10) == 0
        assert (p.metrics.delivered, p.metrics.in_flight) == (10, 0)


@pytest.mark.parametrize(
    ("mistake", "named"),
    [
        ({"no.such.property": "1"}, "no.such.property"),
        # The secret pasted where it does not belong: librdkafka's message quotes the value.
        ({"security.protocol": "hunter2"}, 'Invalid value "***" for configuration property'),
    ],
    ids=["unknown-property", "secret-in-a-checked-property"],
)
async def test_bad_configuration_is_a_clear_error_without_secrets(
    mistake: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        AIOProducer({"bootstrap.servers": UNREACHABLE, "sasl.password": "hunter2", **mistake})

    assert named in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


async def test_repr_shows_no_credentials() -> None:
    async with AIOProducer(
        {
            "bootstrap.servers": UNREACHABLE,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "u",
            "sasl.password": "hunter2",
        }
    ) as p:
        text = repr(p)
        await p.close(timeout=0)

    assert "hunter2" not in text
    assert UNREACHABLE in text


async def test_error_callback_runs_on_the_loop(topic_name: str) -> None:
    errors: list[tuple[KafkaError, int]] = []
    async with AIOProducer(
        {
            "bootstrap.servers": UNREACHABLE,
            "message.timeout.ms": 1000,
            "error_cb": lambda e: errors.append((e, threading.get_ident())),
        }
    ) as p:
        with pytest.raises(DeliveryError):
            await p.produce(topic_name, b"v")

    assert errors
    assert {thread for _, thread in errors} == {threading.get_ident()}
    assert p.last_error is not None


# -- transactions --------------------------------------------------------------------------


async def test_committed_transactions_are_visible_and_aborted_ones_are_not(
    kafka_bootstrap: str, topic_name: str
) -> None:
    async with AIOProducer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{topic_name}"}
    ) as p:
        await p.init_transactions()
        await p.begin_transaction()
        p.produce_nowait(topic_name, b"aborted")
        await p.abort_transaction()
        await p.begin_transaction()
        committed = p.produce(topic_name, b"committed")
        await p.commit_transaction()
        assert committed.done()

    records = await consume_all(
        kafka_bootstrap, topic_name, 1, **{"isolation.level": "read_committed"}
    )
    assert [r.value() for r in records] == [b"committed"]


async def test_a_failed_transaction_call_is_a_transaction_error_saying_what_to_do(
    topic_name: str,
) -> None:
    async with AIOProducer({"bootstrap.servers": UNREACHABLE}) as p:  # no transactional.id
        with pytest.raises(TransactionError) as caught:
            await p.init_transactions(timeout=5)

    error = caught.value
    assert isinstance(error, KafkaloopError)
    assert isinstance(error, KafkaException)  # as confluent-kafka raises it
    assert error.args[0].code() == KafkaError._NOT_CONFIGURED
    assert str(error).startswith("init_transactions() failed:")
    assert "set transactional.id" in str(error)
    assert not error.fatal


async def test_produce_many_larger_than_the_queue_waits_for_room(
    kafka_bootstrap: str, topic_name: str
) -> None:
    async with AIOProducer(
        {"bootstrap.servers": kafka_bootstrap, "queue.buffering.max.messages": 100}
    ) as p:
        results = await p.produce_many(topic_name, [str(i).encode() for i in range(3000)])

    assert [r.offset for r in results if isinstance(r, RecordMetadata)] == list(range(3000))
    assert p.metrics.delivered == 3000


async def test_produce_many_without_room_fails_the_rest_and_settles(topic_name: str) -> None:
    async with AIOProducer(
        {
            "bootstrap.servers": UNREACHABLE,
            "queue.buffering.max.messages": 10,
            "message.timeout.ms": 60_000,
        },
        queue_full_timeout=0.3,
    ) as p:
        started = time.monotonic()
        task = asyncio.ensure_future(
            p.produce_many(topic_name, [b"v"] * 30, return_exceptions=True)
        )
        await asyncio.sleep(1.0)
        assert await p.close(timeout=0) == 10  # the 10 that fit are purged
        results = await task

    assert time.monotonic() - started < 5
    codes = [r.code for r in results if isinstance(r, DeliveryError)]
    assert len(codes) == 30
    assert codes.count(KafkaError._QUEUE_FULL) == 20
    assert p.metrics.failed == 30
    assert p.metrics.in_flight == 0
