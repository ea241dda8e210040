"""`kafkaloop smoke` against the suite's broker, with the user's client configuration."""

from __future__ import annotations

import pytest

from kafkaloop import cli


def test_smoke_produces_and_reads_every_message_back(
    kafka_bootstrap: str,
    topic_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("KAFKALOOP_CLIENT_CONFIG", '{"client.id": "kafkaloop-smoke-test"}')

    assert cli.main(["smoke", "--topic", topic_name, "--count", "20"]) == 0

    out = capsys.readouterr().out
    assert f"produced 20 messages to {topic_name!r} on {kafka_bootstrap}" in out
    assert "consumed all 20 back" in out


def test_smoke_takes_the_users_client_configuration(
    kafka_bootstrap: str,
    topic_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Security settings for a real cluster come this way: one librdkafka refuses shows it.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv(
        "KAFKALOOP_CLIENT_CONFIG", '{"security.protocol": "nonsense", "sasl.password": "hunter2"}'
    )

    assert cli.main(["smoke", "--topic", topic_name, "--count", "1"]) == 2

    err = capsys.readouterr().err
    assert "KAFKALOOP_CLIENT_CONFIG" in err
    assert "security.protocol" in err
    assert "hunter2" not in err
