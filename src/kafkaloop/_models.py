"""The small typed values kafkaloop hands back: record metadata and client metrics."""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, NamedTuple, cast

from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, Message


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


class ConsumerRecord(tuple[Message, Any, Any]):
    """One consumed message: ``topic``, ``partition``, ``offset``, ``key``, ``value``,
    ``headers`` and ``timestamp``.

    Key and value are bytes, or what the consumer's deserializers made of them. The other
    attributes are read from the underlying confluent-kafka ``Message`` when asked for, so a
    record costs one small tuple however many are consumed.
    """

    __slots__ = ()

    def __new__(
        cls,
        topic: str,
        partition: int,
        offset: int,
        key: Any = None,
        value: Any = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        timestamp: int | None = None,
    ) -> ConsumerRecord:
        """A record made by hand (for tests of code that handles records)."""
        message = Message(
            topic=topic,
            partition=partition,
            offset=offset,
            headers=headers,
            timestamp=(TIMESTAMP_NOT_AVAILABLE, 0)
            if timestamp is None
            else (TIMESTAMP_CREATE_TIME, timestamp),
        )
        return tuple.__new__(cls, (message, key, value))

    @property
    def topic(self) -> str:
        """The topic it was read from."""
        return self[0].topic() or ""

    @property
    def partition(self) -> int:
        """The partition it was read from."""
        return cast(int, self[0].partition())

    @property
    def offset(self) -> int:
        """Its offset in the partition."""
        return cast(int, self[0].offset())

    # itemgetter: C-level getters, no Python frame per access (value is the hot one).
    key = property(operator.itemgetter(1), doc="The key: bytes, None, or the deserializer's.")
    value = property(
        operator.itemgetter(2), doc="The value: bytes, None (a tombstone), or the deserializer's."
    )

    @property
    def headers(self) -> list[tuple[str, bytes | None]] | None:
        """Headers in order (names may repeat), or None."""
        return cast("list[tuple[str, bytes | None]] | None", self[0].headers())

    @property
    def timestamp(self) -> int | None:
        """Milliseconds since the epoch (create or log-append time), or None when unknown."""
        kind, timestamp = self[0].timestamp()
        return None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp

    def __repr__(self) -> str:
        return (
            f"ConsumerRecord(topic={self.topic!r}, partition={self.partition}, "
            f"offset={self.offset}, key={self.key!r}, value={self.value!r}, "
            f"headers={self.headers!r}, timestamp={self.timestamp})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConsumerRecord):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((self.topic, self.partition, self.offset))

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.topic,
            self.partition,
            self.offset,
            self.key,
            self.value,
            self.headers,
            self.timestamp,
        )


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
