"""The small typed values kafkaloop hands back: records, record metadata and client metrics."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple

from kafkaloop._extensions import pick

__all__ = [
    "NATIVE_RECORDS",
    "BrokerInfo",
    "ClusterInfo",
    "ConsumerRecord",
    "Cursor",
    "PartitionInfo",
    "ProducerMetrics",
    "RecordMetadata",
    "RecordStream",
    "TopicInfo",
    "make_records",
    "new_record",
]

if TYPE_CHECKING:
    from kafkaloop._records import (
        ConsumerRecord,
        Cursor,
        RecordStream,
        make_records,
        new_record,
    )

_records, NATIVE_RECORDS = pick("_records", "_pyrecords")
"""Whether consumer records come from the C extension (``_records.c``) or its pure-Python
twin (``_pyrecords.py``); see _extensions.py. The extension's records of bytes cost the
garbage collector nothing."""

if not TYPE_CHECKING:
    ConsumerRecord = _records.ConsumerRecord
    Cursor = _records.Cursor
    RecordStream = _records.RecordStream
    make_records = _records.make_records
    new_record = _records.new_record


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
    """Acknowledged by Kafka. For a producer that reports failures only, what librdkafka no
    longer holds and did not report as failed: it may lag, and never goes back."""
    failed: int
    """Reported as not delivered (each one also logged, rate-limited)."""
    waiting_for_room: int
    """Accepted while librdkafka's queue was full; handed over as soon as there is room."""

    @property
    def in_flight(self) -> int:
        """Accepted and not yet delivered or failed."""
        return self.produced - self.delivered - self.failed


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition of a topic, as the cluster's metadata describes it."""

    id: int
    leader: int
    """Broker id of the leader; -1 while there is none."""
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic: its partitions and their replicas."""

    name: str
    partitions: tuple[PartitionInfo, ...]

    @property
    def replication_factor(self) -> int:
        """The number of replicas of its partitions (the smallest, should they differ)."""
        return min((len(p.replicas) for p in self.partitions), default=0)


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerInfo:
    """One broker of the cluster."""

    id: int
    host: str
    port: int


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterInfo:
    """The cluster: its id, controller and brokers."""

    cluster_id: str | None
    controller_id: int
    brokers: tuple[BrokerInfo, ...]
