"""TopicTable's start: waiting out a cluster that has just started."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from kafkaloop.table import watermarks_when_ready


class _Consumer:
    """Answers watermarks() with the errors it is given, then with (0, 5)."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.asked = 0

    async def watermarks(self, partition: TopicPartition) -> tuple[int, int]:
        self.asked += 1
        if self.errors:
            code = self.errors.pop(0)
            raise KafkaException(KafkaError(code, "Failed to get watermark offsets"))
        return 0, 5


async def test_watermarks_are_asked_again_while_the_leader_is_being_elected() -> None:
    consumer = _Consumer(KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)

    assert await watermarks_when_ready(consumer, TopicPartition("t", 0)) == (0, 5)
    assert consumer.asked == 3


async def test_an_error_that_does_not_pass_is_raised_at_once() -> None:
    consumer = _Consumer(KafkaError.TOPIC_AUTHORIZATION_FAILED)

    with pytest.raises(KafkaException) as caught:
        await watermarks_when_ready(consumer, TopicPartition("t", 0))
    assert caught.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert consumer.asked == 1


async def test_waiting_out_errors_ends_at_the_deadline() -> None:
    consumer = _Consumer(*[KafkaError.NOT_LEADER_FOR_PARTITION] * 100)

    with pytest.raises(KafkaException):
        await watermarks_when_ready(consumer, TopicPartition("t", 0), within=0.5)
    assert 2 <= consumer.asked < 10
