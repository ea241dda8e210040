"""`kafkaloop smoke` against the suite's broker, with the user's client configuration."""

from __future__ import annotations

from typing import Any

import pytest

from kafkaloop import KafkaloopError, _smoke, cli


def test_smoke_produces_and_reads_every_message_back(
    kafka_bootstrap: str,
    topic_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)

    assert cli.main(["smoke", "--topic", topic_name, "--count", "20"]) == 0

    out = capsys.readouterr().out
    assert f"produced 20 messages to {topic_name!r} on {kafka_bootstrap}" in out
    assert "consumed all 20 back" in out


def test_smoke_connects_with_the_client_configuration_of_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker.example:9093")
    monkeypatch.setenv(
        "KAFKALOOP_CLIENT_CONFIG", '{"security.protocol": "plaintext", "client.id": "mine"}'
    )
    monkeypatch.setenv("KAFKALOOP_PRODUCER_CONFIG", '{"acks": "1"}')
    monkeypatch.setenv("KAFKALOOP_CONSUMER_CONFIG", '{"fetch.wait.max.ms": 10}')
    given: list[tuple[Any, ...]] = []

    def run_smoke(*args: Any) -> int:
        given.append(args)
        return 0

    monkeypatch.setattr(_smoke, "run_smoke", run_smoke)

    assert cli.main(["smoke", "--topic", "t", "--count", "3"]) == 0

    [(producer, consumer, topic, count)] = given
    assert (topic, count) == ("t", 3)
    assert producer["bootstrap.servers"] == consumer["bootstrap.servers"] == "broker.example:9093"
    assert producer["security.protocol"] == consumer["security.protocol"] == "plaintext"
    assert producer["client.id"] == consumer["client.id"] == "mine"
    assert producer["acks"] == "1"
    assert consumer["fetch.wait.max.ms"] == 10


def test_a_configuration_librdkafka_refuses_is_named_without_its_secrets(
    kafka_bootstrap: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv(
        "KAFKALOOP_CLIENT_CONFIG", '{"security.protocol": "hunter2", "sasl.password": "hunter2"}'
    )

    assert cli.main(["smoke", "--count", "1"]) == 2

    err = capsys.readouterr().err
    assert "KAFKALOOP_CLIENT_CONFIG" in err
    assert 'Invalid value "***" for configuration property "security.protocol"' in err
    assert "hunter2" not in err


def test_smoke_takes_what_kafkaloops_producer_takes(
    kafka_bootstrap: str, topic_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A producer configuration of the service's (transactions, failures-only reports as
    # a string, acks=1: no idempotence) serves the smoke's plain producer too.
    producer = {
        "bootstrap.servers": kafka_bootstrap,
        "acks": "1",
        "delivery.report.only.error": "true",
        "transactional.id": "service-1",
    }

    assert _smoke.run_smoke(producer, {"bootstrap.servers": kafka_bootstrap}, topic_name, 5) == 0
    assert "consumed all 5 back" in capsys.readouterr().out


def test_a_cluster_that_never_answers_fails_every_message_and_says_why(
    capfd: pytest.CaptureFixture[str],
) -> None:
    unreachable = {"bootstrap.servers": "127.0.0.1:1"}

    with pytest.raises(KafkaloopError) as caught:
        _smoke.run_smoke(unreachable, unreachable, "kafkaloop-smoke", 5, timeout=1)

    assert str(caught.value) == (
        "5 of 5 messages to 'kafkaloop-smoke' on 127.0.0.1:1 were not delivered "
        "(no acknowledgement within 1s: is the cluster reachable?)"
    )
    assert "TERMINATE" not in capfd.readouterr().err  # no message left to warn about
