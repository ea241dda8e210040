"""The small typed values kafkaloop hands back: record metadata and client metrics."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple


class RecordMetadata(NamedTuple):
    """Where Kafka stored a delivered message."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    """Milliseconds since the epoch (create or log-append time), or None when unknown."""


@dataclasses.dataclass(frozen=True, slots=True)
class ProducerMetrics:
    """A snapshot of a producer's message counts."""

    produced: int
    """Messages accepted by ``produce``/``produce_nowait``/``produce_many`` since creation."""
    delivered: int
    """Acknowledged by Kafka."""
    failed: int
    """Reported as not delivered (each one also logged, rate-limited)."""
    waiting_for_room: int
    """Accepted while librdkafka's queue was full; handed over as soon as there is room."""

    @property
    def in_flight(self) -> int:
        """Accepted and not yet delivered or failed."""
        return self.produced - self.delivered - self.failed
