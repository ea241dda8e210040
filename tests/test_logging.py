"""librdkafka's own log lines, as kafkaloop passes them on."""

from __future__ import annotations

import logging
import time

import pytest

from kafkaloop._logging import LibrdkafkaRateLimit, librdkafka_logger


def _line(level: int, facility: str, client: str, text: str) -> logging.LogRecord:
    # As confluent-kafka logs a librdkafka line.
    return logging.LogRecord(
        "kafkaloop.librdkafka", level, __file__, 0, "%s [%s] %s", (facility, client, text), None
    )


def test_repeated_failures_of_a_client_are_shown_once_per_interval_with_a_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    limit = LibrdkafkaRateLimit(interval=5.0)
    fail = [_line(logging.ERROR, "FAIL", "rdkafka#producer-1", f"refused {i}") for i in range(4)]
    other_client = _line(logging.ERROR, "FAIL", "rdkafka#consumer-2", "refused")
    other_kind = _line(logging.WARNING, "REQTMOUT", "rdkafka#producer-1", "timed out")
    debug = _line(logging.DEBUG, "FAIL", "rdkafka#producer-1", "debug")

    shown = [limit.filter(r) for r in (fail[0], fail[1], fail[2], other_client, other_kind)]
    assert shown == [True, False, False, True, True]
    assert limit.filter(debug)  # librdkafka's debug output is never cut
    now[0] += 5.0
    assert limit.filter(fail[3])
    assert fail[3].getMessage() == (
        "FAIL [rdkafka#producer-1] refused 3 (and 2 more like it in the last 5s, not shown)"
    )
    assert fail[0].getMessage() == "FAIL [rdkafka#producer-1] refused 0"


def test_the_kinds_remembered_are_bounded() -> None:
    limit = LibrdkafkaRateLimit(max_kinds=10)
    for i in range(25):
        assert limit.filter(_line(logging.ERROR, "FAIL", f"rdkafka#producer-{i}", "refused"))
    assert len(limit._kinds) <= 10


def test_kafkaloops_librdkafka_logger_is_rate_limited() -> None:
    assert any(isinstance(f, LibrdkafkaRateLimit) for f in librdkafka_logger.filters)
