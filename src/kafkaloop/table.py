"""An in-process table kept fresh from a topic: reads every partition from the beginning,
partitions added to the topic later included (looked for every 30 s by default).

    counts = TopicTable(config, "items", fold=count)      # key -> number of records
    latest = TopicTable(config, "profiles")               # key -> latest value (compacted topic)
    await counts.start(); await counts.ready.wait()
    counts.get(b"alice")

Reads happen without touching Kafka. The table is as fresh as its consumer: behind the topic by
the consumer's lag (up to about 100 ms: fetches wait for 64 KiB or 50 ms, and reads gather for
up to 50 ms more; under load, over 4,000 records a second, reads gather for up to 200 ms, so
up to about 250 ms). After a restart it is rebuilt from the topic, and ``ready`` is set once
it has caught up with where the topic ended at start-up.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from kafkaloop._admin import AIOAdminClient
from kafkaloop._consumer import BACKGROUND_FETCH, AIOConsumer
from kafkaloop._logging import logger
from kafkaloop._models import ConsumerRecord

__all__ = ["TopicTable", "count", "latest"]

_READ = 1000
"""Most records folded per read: the fold runs on the loop, so one read never holds it long."""
_GATHER, _GATHER_BUSY, _BUSY_RATE = 0.05, 0.2, 4000
"""Seconds records gather between reads: normally, and over _BUSY_RATE records a second."""
_PARTITIONS_EVERY = 30.0
"""Seconds between looks for partitions added to the topic."""
_READY_WITHIN = 30.0
"""Seconds start() waits out errors that pass (a partition whose leader is not elected yet)."""


_PASSING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)


class _Watermarks(Protocol):
    async def watermarks(self, partition: TopicPartition) -> tuple[int, int]: ...


async def watermarks_when_ready(
    consumer: _Watermarks, partition: TopicPartition, within: float = _READY_WITHIN
) -> tuple[int, int]:
    """`partition`'s watermarks, asking again while the error says it will pass (a broker
    that has just started answers NOT_LEADER_FOR_PARTITION until it has elected a leader)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    delay = 0.1
    while True:
        try:
            return await consumer.watermarks(partition)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            # confluent-kafka marks few errors retriable(); these pass once the cluster settles.
            if not (isinstance(err, KafkaError) and (err.retriable() or err.code() in _PASSING)):
                raise
            if loop.time() + delay > deadline:
                raise
            logger.info(
                "Watermarks of %s [%d]: %s; asking again",
                partition.topic,
                partition.partition,
                err.str(),
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


V = TypeVar("V")


def latest(_previous: Any, record: ConsumerRecord) -> Any:
    """Fold: the newest value wins (None, a tombstone, deletes the key)."""
    return record.value


def count(previous: int | None, _record: ConsumerRecord) -> int:
    """Fold: how many records each key has had."""
    return (previous or 0) + 1


class TopicTable(Generic[V]):
    """A dict from record key to ``fold(previous, record)``, kept fresh by its own consumer.

    ``max_keys`` bounds its memory where anyone can add keys: once it holds that many, records
    of a key it does not hold are skipped (counted in ``skipped``), and the keys it holds stay
    exact. A key deleted (folded to None) makes room again.

    Every ``partitions_every`` seconds it asks the broker for the topic's partitions, and reads
    those added since from the beginning: their records are in the table within about that
    long after the partitions were made.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        topic: str,
        *,
        fold: Callable[[Any, ConsumerRecord], V | None] = latest,
        max_keys: int | None = None,
        partitions_every: float = _PARTITIONS_EVERY,
    ) -> None:
        if max_keys is not None and max_keys < 1:
            raise ValueError("max_keys must be at least 1 (or None: no bound)")
        if partitions_every <= 0:
            raise ValueError("partitions_every must be positive")
        self._config = {
            **BACKGROUND_FETCH,
            **config,
            "group.id": config.get("group.id", "kafkaloop-table"),
            "enable.auto.commit": False,
        }
        self.topic = topic
        self.max_keys = max_keys
        self._fold = fold
        self._data: dict[bytes | None, V] = {}
        self._consumer: AIOConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._targets: dict[int, int] = {}
        self._partitions: set[int] = set()
        self._partitions_every = partitions_every
        self.ready = asyncio.Event()
        """Set once the table holds everything the topic held when it started."""
        self.applied = 0
        """Records folded in so far."""
        self.skipped = 0
        """Records of keys left out because the table held ``max_keys`` keys."""

    def get(self, key: bytes | None, default: V | None = None) -> V | None:
        """The value for `key`, without touching Kafka."""
        return self._data.get(key, default)

    def items(self) -> Iterator[tuple[bytes | None, V]]:
        """Every key and value (a snapshot)."""
        return iter(list(self._data.items()))

    def __len__(self) -> int:
        return len(self._data)

    @property
    def full(self) -> bool:
        """Whether the table holds ``max_keys`` keys (records of new keys are skipped)."""
        return self.max_keys is not None and len(self._data) >= self.max_keys

    def lag(self) -> int:
        """Records the table is behind its topic (0 when fresh)."""
        if self._consumer is None or self._consumer.closed:
            return 0
        return sum(self._consumer.lag().values())

    async def start(self) -> None:
        """Assign every partition the topic has now, from the beginning, and start folding
        records in (and reading the partitions added later, as they are found)."""
        admin_config = {
            k: v
            for k, v in self._config.items()
            if k not in ("group.id", "enable.auto.commit", "auto.offset.reset", *BACKGROUND_FETCH)
        }
        async with AIOAdminClient(admin_config) as admin:
            info = (await admin.describe_topics([self.topic]))[self.topic]
        consumer = AIOConsumer(self._config)
        partitions = [TopicPartition(self.topic, p.id, OFFSET_BEGINNING) for p in info.partitions]
        consumer.assign(partitions)
        self._partitions = {p.partition for p in partitions}
        self._consumer = consumer
        try:
            for partition in partitions:
                low, high = await watermarks_when_ready(consumer, partition)
                if high > low:  # nothing to wait for in an empty (or emptied) partition
                    self._targets[partition.partition] = high
        except BaseException:
            await consumer.close()
            raise
        if not self._targets:
            self.ready.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kafkaloop-table")

    async def _run(self) -> None:
        assert self._consumer is not None
        fold, data, targets = self._fold, self._data, self._targets
        room = self.max_keys if self.max_keys is not None else sys.maxsize
        loop = asyncio.get_running_loop()
        last_read = loop.time()
        look_for_partitions = last_read + self._partitions_every
        while True:
            if last_read >= look_for_partitions:
                look_for_partitions = last_read + self._partitions_every
                await self._read_new_partitions()
            try:
                records = await self._consumer.getmany(max_records=_READ, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("TopicTable(%s) failed a read; reading goes on", self.topic)
                await asyncio.sleep(1.0)
                continue
            now = loop.time()
            rate = len(records) / max(now - last_read, _GATHER)
            last_read = now
            skipped = 0
            for record in records:
                key = record.key
                previous = data.get(key)  # never None for a key held: None deletes
                if previous is None and len(data) >= room:
                    skipped += 1  # a new key and no room: not even folded
                    continue
                value = fold(previous, record)
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
            self.applied += len(records) - skipped
            self.skipped += skipped
            if targets:
                # Positions, not record offsets: a transaction marker may end a partition.
                for position in self._consumer.position(
                    [TopicPartition(self.topic, p) for p in targets]
                ):
                    if position.offset >= targets[position.partition]:
                        del targets[position.partition]
                if not targets:
                    self.ready.set()
            if len(records) < _READ:
                # Let records gather: one read per 50 ms, not one per message. Under load
                # (over _BUSY_RATE records a second) one per 200 ms: fewer, larger reads cost
                # the loop less per record (0.90 µs, against 1.55 reading every 50 ms, at 8,000
                # records a second: bench.readers), for up to 150 ms more behind the topic.
                await asyncio.sleep(_GATHER_BUSY if rate > _BUSY_RATE else _GATHER)

    async def _read_new_partitions(self) -> None:
        """Read the partitions added to the topic since it was last looked at, from the
        beginning (a failed look is logged, and the next one tries again)."""
        assert self._consumer is not None
        try:
            found = await self._consumer.partitions(self.topic)
            new = [p for p in found if p not in self._partitions]
            if new:
                self._consumer.incremental_assign(
                    [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in new]
                )
                self._partitions.update(new)
                logger.info("TopicTable(%s) reads its new partitions %s", self.topic, new)
        except KafkaException as exc:
            logger.warning("TopicTable(%s) could not look for new partitions: %s", self.topic, exc)
        except Exception:  # the table reads on, whatever went wrong here
            logger.exception("TopicTable(%s) failed to look for new partitions", self.topic)

    async def stop(self) -> None:
        """Stop folding and close the consumer."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.close()
