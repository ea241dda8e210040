"""The reference service over real HTTP, against the real broker: endpoints, errors, push."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from pydantic import ValidationError

from kafkaloop import AIOConsumer, ConsumerRecord, cli
from kafkaloop._config import check_config
from kafkaloop.broker import LocalKafka
from kafkaloop.fastapi import RequestQueue
from kafkaloop.service import create_app
from kafkaloop.settings import (
    BOOTSTRAP_VARIABLES,
    KafkaSettings,
    ServiceSettings,
    bootstrap_from_env,
)
from tests.service_helpers import (
    requests_left_for_the_collector,
    serve_process,
    service,
    service_settings,
    serving,
)
from tests.twins import skip_unless_the_loop_serves_reports


async def read_topic(
    bootstrap: str, topic: str, count: int, timeout: float = 30
) -> list[ConsumerRecord]:
    """Every record of partition 0 of `topic`, waiting until there are `count`."""
    config = {"bootstrap.servers": bootstrap, "group.id": f"check-{time.monotonic_ns()}"}
    async with AIOConsumer(config) as consumer:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            records += await consumer.getmany(timeout=0.5)
        records += await consumer.getmany(timeout=0.5)  # anything more is a duplicate
        return records


async def test_awaited_endpoint_answers_with_where_kafka_stored_it(
    kafka_bootstrap: str, topic_name: str
) -> None:
    async with service(kafka_bootstrap, topic_name) as (_url, client):
        response = await client.post("/items1", json={"name": "alice"})

    assert response.status_code == 200
    body = response.json()
    assert body["topic"] == topic_name
    assert isinstance(body["partition"], int)
    assert isinstance(body["offset"], int)
    assert abs(body["timestamp"] - time.time() * 1000) < 60_000
    [record] = await read_topic(kafka_bootstrap, topic_name, 1)
    assert record.key == b"alice"
    assert json.loads(record.value) == {"name": "alice"}


@pytest.mark.parametrize("poll_thread", [False, True], ids=["loop", "poll-thread"])
async def test_out_of_band_and_fire_and_forget_endpoints_deliver_and_no_op_does_not(
    kafka_bootstrap: str, topic_name: str, poll_thread: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not poll_thread:
        skip_unless_the_loop_serves_reports()
    monkeypatch.setenv("KAFKALOOP_PRODUCER_POLL_THREAD", str(poll_thread).lower())
    overrides = {"producer_poll_thread": ServiceSettings().producer_poll_thread}
    async with service(kafka_bootstrap, topic_name, **overrides) as (_url, client):
        answers = [await client.post(f"/items{n}", json={"name": f"n{n}"}) for n in (2, 3, 4, 5)]
        threads = {t.name for t in threading.enumerate()}

    assert ("kafkaloop-producer-poll" in threads) is poll_thread

    assert [a.status_code for a in answers] == [202, 202, 202, 202]
    assert all(a.json() == {"status": "accepted"} for a in answers)
    records = await read_topic(kafka_bootstrap, topic_name, 3)
    assert sorted(r.key for r in records) == [b"n2", b"n3", b"n4"]


async def test_fire_and_forget_goes_through_its_own_producer_which_counts_each_failure(
    kafka_bootstrap: str, topic_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kafkaloop")
    # The fire-and-forget producer alone points at a cluster that is down.
    down = {"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 500}
    async with service(kafka_bootstrap, topic_name, fire_and_forget_config=down) as (_, client):
        forgotten = [await client.post("/items4", json={"name": f"f{n}"}) for n in range(3)]
        awaited = await client.post("/items1", json={"name": "a"})
        failed = 'kafka_messages_failed_total{producer="fire_and_forget"} 3.0'
        metrics = await _metrics_once(client, failed)

    assert [a.status_code for a in forgotten] == [202] * 3
    assert awaited.status_code == 200
    assert failed in metrics
    assert 'kafka_messages_delivered_total{producer="fire_and_forget"} 0.0' in metrics
    assert 'kafka_messages_delivered_total{producer="producer"} 1.0' in metrics
    assert any("Fire-and-forget message not delivered" in r.message for r in caplog.records)


async def test_fire_and_forget_can_go_through_the_producer(
    kafka_bootstrap: str, topic_name: str
) -> None:
    async with service(kafka_bootstrap, topic_name, fire_and_forget_producer=False) as (_, client):
        forgotten = await client.post("/items4", json={"name": "shared"})
        delivered = 'kafka_messages_delivered_total{producer="producer"} 1.0'
        metrics = await _metrics_once(client, delivered)

    assert forgotten.status_code == 202
    assert delivered in metrics
    assert 'producer="fire_and_forget"' not in metrics
    records = await read_topic(kafka_bootstrap, topic_name, 1)
    assert [r.key for r in records] == [b"shared"]


def test_the_fire_and_forget_producer_lingers_longer_and_reports_failures_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer = {"linger.ms": 2, "acks": "all", "transactional.id": "t", "client.id": "svc"}
    settings = ServiceSettings(
        bootstrap_servers="b:9092",
        client_config={},
        producer_config=producer,
        fire_and_forget_config={},
    )
    assert settings.fire_and_forget() == {
        "bootstrap.servers": "b:9092",
        "linger.ms": 20,
        "acks": "all",
        "client.id": "svc-fire-and-forget",
        "delivery.report.only.error": True,
    }
    # Its own config comes last, but cannot ask for every delivery to be reported.
    mine = {"linger.ms": 5, "delivery.report.only.error": False}
    settings = ServiceSettings(fire_and_forget_config=mine)
    assert settings.fire_and_forget()["linger.ms"] == 5
    assert settings.fire_and_forget()["delivery.report.only.error"] is True
    # The service has one by default; a library user's KafkaSettings only when asked.
    monkeypatch.delenv("KAFKALOOP_FIRE_AND_FORGET_PRODUCER", raising=False)
    assert ServiceSettings().fire_and_forget_producer is True
    assert KafkaSettings().fire_and_forget_producer is False


def test_the_service_refuses_a_producer_that_would_not_report_deliveries() -> None:
    with pytest.raises(ValidationError, match="must report every delivery"):
        ServiceSettings(producer_config={"delivery.report.only.error": "true"})


@pytest.mark.parametrize(
    ("environment", "cluster"),
    [
        ({}, None),
        ({"KAFKALOOP_BOOTSTRAP_SERVERS": "b:9092"}, "b:9092"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "a:9092", "KAFKALOOP_BOOTSTRAP_SERVERS": "b:9092"}, "a:9092"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "", "KAFKALOOP_BOOTSTRAP_SERVERS": "b:9092"}, "b:9092"),
        ({"KAFKA_BOOTSTRAP_SERVERS": ""}, None),
    ],
    ids=["neither", "kafkaloop-name", "both", "first-empty", "empty"],
)
def test_what_starts_a_local_broker_and_the_settings_agree_on_the_cluster(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], cluster: str | None
) -> None:
    for variable in BOOTSTRAP_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)

    # None: make run, kafkaloop smoke and the tests start a local broker at the default address.
    assert bootstrap_from_env() == cluster
    assert KafkaSettings().bootstrap_servers == (cluster or "127.0.0.1:9092")


# Each bad value holds the secret "hunter2": the message must name the setting, not echo it
# (pydantic's own message would: input_value='hunter2').
@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        (
            "KAFKALOOP_REQUEST_DEADLINE",
            "hunter2",
            "invalid settings in the environment (KAFKALOOP_*, KAFKA_BOOTSTRAP_SERVERS): "
            "request_deadline: Input should be a valid number",
        ),
        (
            "KAFKALOOP_PRODUCER_CONFIG",
            '{"delivery.report.only.error": true, "sasl.password": "hunter2"}',
            "every delivery",
        ),
        (
            "KAFKALOOP_CLIENT_CONFIG",
            '{"sasl.password": "hunter2"',
            "invalid settings in the environment (KAFKALOOP_*, KAFKA_BOOTSTRAP_SERVERS): "
            'error parsing value for field "client_config"',
        ),
        ("KAFKALOOP_PORT", "hunter2", "KAFKALOOP_PORT: not a port number"),
        # What librdkafka refuses: said before uvicorn starts, not as a start-up traceback.
        (
            "KAFKALOOP_PRODUCER_CONFIG",
            '{"linger.mss": 1, "sasl.password": "hunter2"}',
            "librdkafka refused the producer configuration (from KAFKALOOP_CLIENT_CONFIG, "
            'KAFKALOOP_PRODUCER_CONFIG): No such configuration property: "linger.mss". Check',
        ),
        (
            "KAFKALOOP_CLIENT_CONFIG",
            '{"sasl.password": "hunter2", "linger.ms": "hunter2"}',
            # (linger.ms is an alias of queue.buffering.max.ms)
            "librdkafka refused the producer configuration (from KAFKALOOP_CLIENT_CONFIG, "
            "KAFKALOOP_PRODUCER_CONFIG): Invalid value for configuration property "
            '"queue.buffering.max.ms"',
        ),
        (
            "KAFKALOOP_FIRE_AND_FORGET_CONFIG",
            '{"enable.idempotence": true, "acks": 1, "sasl.password": "hunter2"}',
            "librdkafka refused the fire-and-forget producer configuration (from "
            "KAFKALOOP_CLIENT_CONFIG, KAFKALOOP_PRODUCER_CONFIG, "
            "KAFKALOOP_FIRE_AND_FORGET_CONFIG): Failed to create producer: `acks` must be set to "
            "`all` when `enable.idempotence` is true",
        ),
        (
            "KAFKALOOP_CONSUMER_CONFIG",
            '{"check.crcs": "hunter2"}',
            "librdkafka refused the consumer configuration (from KAFKALOOP_CLIENT_CONFIG, "
            'KAFKALOOP_CONSUMER_CONFIG): Expected bool value for "check.crcs"',
        ),
        (  # (librdkafka ends this message with a newline: still one line)
            "KAFKALOOP_PRODUCER_CONFIG",
            '{"linger.ms": 1000000, "sasl.password": "hunter2"}',
            "outside allowed range 0..900000. Check",
        ),
        (
            "KAFKALOOP_SHUTDOWN_TIMEOUT",
            "6",
            "KAFKALOOP_REQUEST_DEADLINE (5s) must be under half of KAFKALOOP_SHUTDOWN_TIMEOUT (6s)",
        ),
        (
            "KAFKA_BOOTSTRAP_SERVERS",
            "127.0.0.1:9092,localhost:notaport",
            "KAFKA_BOOTSTRAP_SERVERS: Value error, 'localhost:notaport' is not host:port",
        ),
    ],
    ids=[
        "not-a-number",
        "refused-config",
        "malformed-json",
        "port",
        "unknown-librdkafka-property",
        "secret-as-a-bad-value",
        "conflicting-properties",
        "consumer-property",
        "out-of-range",
        "deadline-past-the-stop",
        "bootstrap-servers",
    ],
)
def test_serve_says_which_setting_is_wrong_without_echoing_values(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    says: str,
) -> None:
    monkeypatch.setenv(variable, value)

    assert cli.main(["serve"]) == 2

    error = capsys.readouterr().err
    assert error.startswith("kafkaloop: ")
    assert error.count("\n") == 1
    assert says in error
    assert "hunter2" not in error


def test_serve_gives_up_on_a_cluster_that_does_not_answer_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # nothing listens there
    monkeypatch.setenv("KAFKALOOP_CLIENT_CONFIG", '{"sasl.password": "hunter2"}')
    monkeypatch.setattr(cli, "KAFKA_WAIT", 1.0)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("it served"))

    assert cli.main(["serve"]) == 2

    error = capsys.readouterr().err
    assert error.startswith("kafkaloop: Kafka at 127.0.0.1:1 did not answer within 1s (")
    assert "set KAFKA_BOOTSTRAP_SERVERS or KAFKALOOP_BOOTSTRAP_SERVERS" in error
    assert error.count("\n") == 1
    assert "hunter2" not in error


@pytest.mark.parametrize(
    "servers", ["127.0.0.1:9092", "kafka", "[::1]:9092", "[::1]", "SSL://a:9093, b:9094"]
)
def test_bootstrap_servers_librdkafka_takes_are_taken(
    monkeypatch: pytest.MonkeyPatch, servers: str
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", servers)

    assert ServiceSettings().bootstrap_servers == servers


def test_the_configuration_check_accepts_what_the_clients_accept_and_says_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Flags as JSON from the environment may give them: strings the clients turn into bools.
    monkeypatch.setenv("KAFKALOOP_PRODUCER_CONFIG", '{"delivery.report.only.error": "false"}')
    monkeypatch.setenv("KAFKALOOP_CONSUMER_CONFIG", '{"enable.auto.offset.store": "true"}')
    # A producer's property for every client: librdkafka warns the admin client and the
    # consumer; the clients the service makes say so, the check does not say it again.
    monkeypatch.setenv("KAFKALOOP_CLIENT_CONFIG", '{"linger.ms": 5}')
    # Nothing listens there: the check connects nowhere, so it logs no refused connection.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")

    with caplog.at_level(logging.DEBUG):
        ServiceSettings().check()

    assert caplog.records == []


def test_the_configuration_check_makes_its_client_connect_nowhere_and_closes_it() -> None:
    made: list[Any] = []

    class Client:
        def __init__(self, conf: dict[str, Any]) -> None:
            made.append(conf)

        def close(self) -> None:
            made.append("closed")

    conf = {"bootstrap.servers": "a:1", "metadata.broker.list": "b:2", "linger.ms": 5}
    check_config(Client, conf, {"linger.ms": 5}, "producer")

    [checked, closed] = made
    assert {k: v for k, v in checked.items() if k != "logger"} == {"linger.ms": 5, "log_level": 3}
    assert closed == "closed"
    assert "bootstrap.servers" in conf  # the caller's configuration is left as it was


async def _metrics_once(client: httpx.AsyncClient, line: str) -> str:
    """/metrics once it shows `line` (or after 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        metrics = (await client.get("/metrics")).text
        if line in metrics or time.monotonic() > deadline:
            return metrics
        await asyncio.sleep(0.1)


async def test_no_request_leaves_reference_cycles_for_the_collector(
    kafka_bootstrap: str, topic_name: str
) -> None:
    """The service's answers, bad bodies' included, free their requests' objects when they
    are done, by reference counting: under load, collecting cycles took a fifth of the loop's
    time (bench/README.md)."""
    async with service(kafka_bootstrap, topic_name) as (_url, client):

        async def every_kind() -> list[int]:
            item = {"name": "cycle"}
            json_type = {"content-type": "application/json"}
            answers = [await client.post(f"/items{n}", json=item) for n in range(1, 6)]
            answers += [
                await client.post("/items1", content=b'{"name": NaN}', headers=json_type),
                await client.post("/items1", json={"nom": "x"}),
                await client.post("/items1", content=b'{"name":', headers=json_type),
                await client.post("/items1", content=b'{"name": "\xff"}', headers=json_type),
                await client.post(
                    "/items1", content=b"\xff", headers={"content-type": "text/plain"}
                ),
                await client.get("/items/cycle"),
                await client.get("/items"),
                await client.get("/nowhere"),
                await client.get("/metrics"),
                await client.get("/readyz"),
            ]
            return [answer.status_code for answer in answers]

        await every_kind()  # first uses (caches, lazily built routes) out of the way
        deadline = time.monotonic() + 30
        while (await client.get("/items/cycle")).status_code == 404:  # the cache has read it
            assert time.monotonic() < deadline, "the cache never saw the item"
            await asyncio.sleep(0.1)
        with requests_left_for_the_collector() as left:
            statuses = await every_kind()

    assert statuses == [200, 202, 202, 202, 202, 422, 422, 422, 400, 422, 200, 200, 404, 200, 200]
    assert left == []


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{}", {}, 422),
        (b'{"name": 5}', {}, 422),
        (b'{"name": ""}', {}, 422),
        (b"not json", {}, 422),
        (b'{"name": "\xff\xfe"}', {}, 400),
        (json.dumps({"name": "x" * 300}).encode(), {}, 422),
        (b'{"name": "a"}', {"content-type": "text/plain"}, 422),
        (b'{"name": "\xff\xfe"}', {"content-type": "text/plain"}, 422),
        (b'{"name": NaN}', {}, 422),
        (b'{"name": -Infinity}', {}, 422),
        (b'{"name": 1e999}', {}, 422),
        (b"NaN", {}, 422),
        (b'{"name": "\\ud800"}', {}, 422),
        (b'{"name": ' + b"[" * 600 + b"]" * 600 + b"}", {}, 422),
    ],
    ids=[
        "missing",
        "not-a-string",
        "empty",
        "invalid-json",
        "invalid-utf8",
        "too-long",
        "not-json-content-type",
        "invalid-utf8-not-json-content-type",
        "nan",
        "infinity",
        "overflowing-number",
        "bare-nan",
        "unpaired-surrogate",
        "deeply-nested",
    ],
)
async def test_a_bad_body_is_a_clear_4xx_never_a_500(
    kafka_bootstrap: str, topic_name: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    async with service(kafka_bootstrap, topic_name) as (_url, client):
        response = await client.post(
            "/items1", content=body, headers={"content-type": "application/json", **headers}
        )

    # 400: the body is not UTF-8, so not JSON text at all; 422: malformed JSON or not an Item
    # (Python's parser takes NaN, Infinity, 1e999 and unpaired surrogates; no Item holds them).
    assert response.status_code == status
    assert json.loads(response.content.decode(), parse_constant=_not_json)["detail"]


def _not_json(constant: str) -> None:
    raise AssertionError(f"the answer is not strict JSON: it holds {constant}")


async def test_an_oversized_body_is_refused_before_it_is_read(
    kafka_bootstrap: str, topic_name: str
) -> None:
    async with service(kafka_bootstrap, topic_name, max_body_bytes=4096) as (url, client):
        declared = await client.post(
            "/items1",
            content=b"{" + b" " * 10_000 + b"}",
            headers={"content-type": "application/json"},
        )
        # A chunked body with no Content-Length: refused once 4 KiB have arrived, though the
        # client has more to send (so the answer comes over a raw socket, mid-upload).
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /items1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(8):
            writer.write(b"400\r\n" + b" " * 1024 + b"\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    assert declared.status_code == 413
    assert "4096-byte limit" in declared.json()["detail"]
    assert status_line.startswith(b"HTTP/1.1 413")


async def test_health_readiness_metrics_and_openapi(kafka_bootstrap: str, topic_name: str) -> None:
    async with service(kafka_bootstrap, topic_name) as (_url, client):
        await client.post("/items1", json={"name": "m"})
        forgotten = await client.post("/items4", json={"name": "f"})
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        deadline = time.monotonic() + 20
        while True:  # delivered, and the consumers caught up within their read interval
            metrics = (await client.get("/metrics")).text
            caught_up = (
                "\nkafka_cache_lag 0.0\n" in metrics
                and "\nkafka_push_lag 0.0\n" in metrics
                and 'kafka_messages_delivered_total{producer="fire_and_forget"} 1.0' in metrics
            )
            if caught_up or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        schema = (await client.get("/openapi.json")).json()

    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert 'http_requests_total{method="POST",route="/items1",status="200"} 1.0' in metrics
    assert "kafka_produce_latency_seconds_count 1.0" in metrics
    assert forgotten.status_code == 202
    # Each producer counts its own: the awaited one, and the one for fire-and-forget.
    for producer in ("producer", "fire_and_forget"):
        assert f'kafka_messages_produced_total{{producer="{producer}"}} 1.0' in metrics
        assert f'kafka_messages_delivered_total{{producer="{producer}"}} 1.0' in metrics
        assert f'kafka_messages_failed_total{{producer="{producer}"}} 0.0' in metrics
        assert f'kafka_messages_in_flight{{producer="{producer}"}} 0.0' in metrics
    assert caught_up
    items1 = schema["paths"]["/items1"]["post"]
    assert set(items1["responses"]) >= {"200", "413", "422", "503"}
    delivered = schema["components"]["schemas"]["Delivered"]
    assert set(delivered["required"]) >= {"topic", "partition", "offset"}
    item = schema["components"]["schemas"]["Item"]
    assert item["properties"]["name"]["maxLength"] == 256


def test_the_api_is_routed_before_the_documentation() -> None:
    """A request tries the routes in order: the API's come first, each in the order declared,
    and FastAPI's documentation routes after them all."""
    paths = [getattr(route, "path", None) for route in create_app().routes]
    docs = ["/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"]
    assert paths[-len(docs) :] == docs
    assert paths[:5] == ["/items1", "/items2", "/items3", "/items4", "/items5"]


async def test_the_documentation_is_still_served(kafka_bootstrap: str, topic_name: str) -> None:
    async with service(kafka_bootstrap, topic_name) as (_url, client):
        pages = {path: await client.get(path) for path in ("/docs", "/redoc", "/openapi.json")}
        redirect = await client.get("/docs/oauth2-redirect")
        posted = await client.post("/docs")
    assert {path: page.status_code for path, page in pages.items()} == dict.fromkeys(pages, 200)
    assert "swagger-ui" in pages["/docs"].text
    assert 'spec-url="/openapi.json"' in pages["/redoc"].text
    assert pages["/openapi.json"].json()["info"]["title"] == "kafkaloop reference service"
    assert list(pages["/openapi.json"].json()["paths"])[:5] == [f"/items{n}" for n in range(1, 6)]
    assert redirect.status_code == 200
    assert posted.status_code == 405  # the page's route, the wrong method: not a 404


async def test_counts_come_from_the_cache(kafka_bootstrap: str, topic_name: str) -> None:
    async with service(kafka_bootstrap, topic_name) as (_url, client):
        for _ in range(3):
            await client.post("/items1", json={"name": "carol"})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            one = await client.get("/items/carol")
            if one.status_code == 200 and one.json()["count"] == 3:
                break
            await asyncio.sleep(0.1)
        everyone = await client.get("/items")
        unknown = await client.get("/items/nobody")

    assert one.json() == {"name": "carol", "count": 3}
    assert everyone.json()["counts"] == {"carol": 3}
    assert unknown.status_code == 404


async def test_the_cache_holds_a_bounded_number_of_names_and_says_when_it_is_full(
    kafka_bootstrap: str, topic_name: str
) -> None:
    async with service(kafka_bootstrap, topic_name, item_cache_max_names=2) as (_url, client):
        for name in ["ann", "bob", "cat", "ann", "cat"]:  # one partition: read in this order
            assert (await client.post("/items1", json={"name": name})).status_code == 200
        # All five read: three counted, the two of the name that came once it was full skipped.
        metrics = await _metrics_once(client, "\nkafka_cache_skipped_total 2.0\n")
        await asyncio.sleep(0.2)  # GET /items ranks anew at most every 0.1 s
        everyone = (await client.get("/items")).json()
        late = await client.get("/items/cat")

    assert "\nkafka_cache_skipped_total 2.0\n" in metrics
    assert everyone["counts"] == {"ann": 2, "bob": 1}
    assert late.status_code == 404
    assert "the cache is full at 2 names" in late.json()["detail"]


async def test_websocket_and_sse_clients_receive_items_posted_over_http(
    kafka_bootstrap: str, topic_name: str
) -> None:
    async with service(kafka_bootstrap, topic_name) as (url, client):
        ws_url = url.replace("http://", "ws://") + "/ws/items"
        async with (
            websockets.connect(ws_url) as ws,
            client.stream("GET", "/sse/items") as sse,
        ):
            lines = sse.aiter_lines()
            assert await anext(lines) == ": connected"
            await asyncio.sleep(1.5)  # the fan-out consumer is at the end of the topic
            for name in ("x1", "x2"):
                assert (await client.post("/items1", json={"name": name})).status_code == 200

            pushed = [json.loads(await asyncio.wait_for(ws.recv(), 20)) for _ in range(2)]
            events: list[dict[str, Any]] = []
            while len(events) < 2:
                line = await asyncio.wait_for(anext(lines), 20)
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: ") :]))

    assert sorted(p["name"] for p in pushed) == ["x1", "x2"]
    assert sorted(e["name"] for e in events) == ["x1", "x2"]
    assert all(isinstance(p["offset"], int) for p in pushed)


@pytest.mark.slow
async def test_unreachable_kafka_is_a_503_within_the_deadline_and_recovers(
    tmp_path: Path, topic_name: str
) -> None:
    kafka = LocalKafka(1, state_dir=tmp_path / "kafka")
    await asyncio.to_thread(kafka.start)
    try:
        async with service(
            kafka.bootstrap_servers, topic_name, request_deadline=1.5, request_concurrency=4
        ) as (_url, client):
            assert (await client.post("/items1", json={"name": "up"})).status_code == 200
            await asyncio.to_thread(kafka.stop_node, 0, hard=True)

            # More awaited requests than the queue lets in: all wait for the dead broker.
            stuck = [
                asyncio.create_task(client.post("/items1", json={"name": f"stuck{n}"}))
                for n in range(12)
            ]
            await asyncio.sleep(0.2)
            asked = time.monotonic()
            # /items5 queues like any endpoint (probes never do): it must not wait for Kafka.
            noop = await client.post("/items5", json={"name": "noop"})
            noop_took = time.monotonic() - asked
            started = time.monotonic()
            down = await client.post("/items1", json={"name": "down"})
            waited = time.monotonic() - started
            stuck_answers = await asyncio.gather(*stuck)
            ready = await _eventually(client, "/readyz", 503)

            await asyncio.to_thread(kafka.start_node, 0)
            ready_again = await _eventually(client, "/readyz", 200)
            # Readiness is the admin client's connection; the producer reconnects on its own
            # backoff (longer the longer the broker was down): 503s until then, then 200.
            back = await _eventually(client, "/items1", 200, json={"name": "back"})
    finally:
        await asyncio.to_thread(kafka.stop)

    print(
        f"\nKafka down: 503 after {waited:.2f}s (deadline 1.5 s); the no-op behind 12 stuck "
        f"requests in {noop_took * 1000:.0f} ms; readyz {ready.status_code}, "
        f"then {ready_again.status_code} and {back.status_code} once it is back"
    )
    assert noop.status_code == 202
    # The idle loop made the queue let it past those waiting for Kafka: not held until their
    # deadline (1.5 s) ended them.
    assert noop_took < 1.2
    assert [a.status_code for a in stuck_answers] == [503] * 12
    assert down.status_code == 503
    assert down.headers["Retry-After"] == "1"
    assert "did not acknowledge" in down.json()["detail"]
    assert waited < 3
    assert ready.json()["ready"] is False
    assert ready.json()["reason"]  # /readyz says why
    assert "()" not in ready.json()["reason"]
    assert ready_again.status_code == 200
    assert back.status_code == 200


async def _eventually(
    client: httpx.AsyncClient, path: str, status: int, json: object = None
) -> httpx.Response:
    """GET `path` (POST `json` when given) until it answers `status`, for 60 s at most."""
    deadline = time.monotonic() + 60
    while True:
        response = await (client.get(path) if json is None else client.post(path, json=json))
        if response.status_code == status or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.5)


@pytest.mark.slow
async def test_sigterm_under_load_loses_no_acknowledged_item(
    kafka_bootstrap: str, topic_name: str
) -> None:
    acknowledged: list[str] = []
    with serve_process(kafka_bootstrap, topic_name) as (proc, url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def user(n: int) -> None:
                for i in range(10_000):
                    name = f"u{n}-{i}"
                    endpoint = "/items1" if i % 2 else "/items4"  # awaited and fire-and-forget
                    try:
                        response = await client.post(endpoint, json={"name": name})
                    except httpx.TransportError:
                        return
                    if response.status_code // 100 == 2:
                        acknowledged.append(name)

            users = [asyncio.create_task(user(n)) for n in range(20)]
            await asyncio.sleep(3)
            proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*users)
            exit_code = await asyncio.to_thread(proc.wait, 60)

    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why.
    assert exit_code in (0, -signal.SIGTERM)
    assert len(acknowledged) > 100
    records = await read_topic(kafka_bootstrap, topic_name, len(acknowledged))
    stored = [r.key.decode() for r in records]
    forgotten = sum(1 for name in acknowledged if int(name.rsplit("-", 1)[1]) % 2 == 0)
    print(
        f"\nSIGTERM under load: {len(acknowledged)} answered 2xx ({forgotten} fire-and-forget),"
        f" {len(stored)} in Kafka, missing {len(set(acknowledged) - set(stored))}"
    )
    assert set(acknowledged) <= set(stored)
    assert len(stored) == len(set(stored))


@pytest.mark.slow
async def test_schemathesis_finds_no_server_error_and_no_response_off_the_schema(
    kafka_bootstrap: str, topic_name: str
) -> None:
    async with service(kafka_bootstrap, topic_name) as (url, _client):
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "40",
            "--seed",
            "1",
            # Endless streams (SSE) and the text metrics are no JSON operations to fuzz.
            "--exclude-path",
            "/sse/items",
            "--exclude-path",
            "/metrics",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(proc.communicate(), 240)

    report = output.decode(errors="replace")
    assert proc.returncode == 0, report[-3000:]
    assert "generated" in report


async def test_a_message_over_kafkas_size_limit_is_a_413_not_a_500(
    kafka_bootstrap: str, topic_name: str
) -> None:
    # Under the body limit (1 MiB), over librdkafka's message.max.bytes (1,000,000).
    name = "x" * 1_040_000
    async with service(kafka_bootstrap, topic_name, max_name_length=2_000_000) as (_url, client):
        awaited = await client.post("/items1", json={"name": name})
        forgotten = await client.post("/items4", json={"name": name})

    for response in (awaited, forgotten):
        assert response.status_code == 413
        assert response.json()["error"] == "DeliveryError"
        assert "too large" in response.json()["detail"].lower()


async def test_a_flood_of_headers_is_a_4xx_not_a_500(kafka_bootstrap: str, topic_name: str) -> None:
    headers = [(f"x-h{i}", "v" * 50) for i in range(2000)]
    async with service(kafka_bootstrap, topic_name) as (url, _client):
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        request = "POST /items5 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        request += "".join(f"{k}: {v}\r\n" for k, v in headers)
        request += 'Content-Length: 13\r\n\r\n{"name": "a"}'
        writer.write(request.encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    assert status_line.startswith(b"HTTP/1.1 431"), status_line


async def test_live_push_and_the_cache_can_be_switched_off(
    kafka_bootstrap: str, topic_name: str
) -> None:
    async with service(kafka_bootstrap, topic_name, live_push=False, item_cache=False) as (
        url,
        client,
    ):
        produced = await client.post("/items1", json={"name": "plain"})
        counts = await client.get("/items")
        one = await client.get("/items/plain")
        sse = await client.get("/sse/items")
        metrics = (await client.get("/metrics")).text
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            await websockets.connect(url.replace("http://", "ws://") + "/ws/items")

    assert produced.status_code == 200
    assert (counts.status_code, one.status_code, sse.status_code) == (404, 404, 404)
    assert refused.value.response.status_code == 403  # the handshake refused, as the README says
    assert "KAFKALOOP_ITEM_CACHE=false" in counts.json()["detail"]
    assert "KAFKALOOP_LIVE_PUSH=false" in sse.json()["detail"]
    assert "kafka_cache_lag" not in metrics
    assert "push_subscribers" not in metrics


async def test_requests_beyond_the_concurrency_queue_and_all_get_their_answer(
    kafka_bootstrap: str, topic_name: str
) -> None:
    settings = service_settings(
        kafka_bootstrap, topic_name, request_concurrency=2, live_push=False, item_cache=False
    )
    app = create_app(settings)

    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        answers = await asyncio.gather(
            *(client.post("/items1", json={"name": f"q{n}"}) for n in range(40))
        )
        health = await client.get("/healthz")

    assert [a.status_code for a in answers] == [200] * 40
    assert health.status_code == 200
    layer: Any = app.middleware_stack
    while not isinstance(layer, RequestQueue):
        layer = layer.app
    assert layer.concurrency == 2
    assert layer.queued_total > 0  # some of the 40 did wait their turn
    assert (layer.running, layer.waiting) == (0, 0)
    records = await read_topic(kafka_bootstrap, topic_name, 40)
    assert sorted(r.key for r in records) == sorted(f"q{n}".encode() for n in range(40))
