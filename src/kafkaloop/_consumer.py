"""AIOConsumer: confluent-kafka's Consumer for asyncio, consuming in batches.

Records librdkafka has already fetched are taken on the loop with ``consume(n, 0)``, which
does not wait for the network, as many as the reader asks for: no thread hop, and librdkafka
is served (a rebalance, for one) at every read. Waiting for records to arrive happens on a
thread of the consumer's own; that batch in flight is shielded: a cancelled reader loses
nothing, and the next read (or ``close()``) picks it up. When the application gave rebalance
callbacks or client callbacks in its config, every ``consume()`` runs on that thread instead,
``batch_size`` records at a time (or as many as one read asks for, if more), the next batch
fetched while one is read: those callbacks run inside ``consume()`` and must never run, or
wait for the loop, on the loop itself. (A ``logger`` given in the config is called from
whichever thread consumes, the loop's included.)

kafkaloop stores offsets itself (librdkafka's ``enable.auto.offset.store`` is turned off): a
record's offset is stored once the application has been handed it (``getmany``) or has asked
for the record after it (``async for``). Committing, automatic or not, therefore never covers
records that were fetched but not yet handed over. Set ``enable.auto.offset.store`` to false
to store offsets yourself (``store_offsets``) after processing.

Rebalance callbacks (``on_assign``, ``on_revoke``, ``on_lost``) run on the loop, and may be
coroutines; librdkafka waits for them before it completes the rebalance. They may call the
consumer (commit, watermarks: those calls run on the waiting librdkafka thread), and
``on_assign`` may set ``offset`` on the partitions it is given to choose where each starts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import operator
import threading
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias, TypeVar, cast

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import ClusterMetadata

from kafkaloop._bridge import LoopBridge
from kafkaloop._config import config_flag, make_client
from kafkaloop._exceptions import (
    ClientClosedError,
    ConsumerCallError,
    ConsumerError,
    DeserializationError,
    KafkaloopError,
    kafka_error_of,
)
from kafkaloop._logging import RateLimitedLog, librdkafka_logger, logger
from kafkaloop._models import ConsumerRecord, Cursor, RecordStream, make_records, new_record

__all__ = ["AIOConsumer", "Deserializer", "RebalanceCallback"]

R = TypeVar("R")


Deserializer: TypeAlias = Callable[[bytes], Any]
"""Turns a key or value's bytes into an object (None, a missing key or a tombstone, stays None)."""
RebalanceCallback: TypeAlias = Callable[
    ["AIOConsumer", list[TopicPartition]], Awaitable[None] | None
]

FETCH_QUEUE_BACKOFF_MS = 10
"""kafkaloop's default ``fetch.queue.backoff.ms`` (librdkafka's is 1000): see AIOConsumer."""

BACKGROUND_FETCH: dict[str, Any] = {"fetch.min.bytes": 65536, "fetch.wait.max.ms": 50}
"""Fetch settings of the readers that run beside a web app (``push.Broadcaster``,
``table.TopicTable``), under the application's own config. librdkafka's defaults answer a
fetch as soon as one byte is there: under load that is a fetch per handful of records, and
each costs the app's process CPU. The broker now answers once 64 KiB are there or 50 ms have
passed: a few fetches a second per broker at web rates, at up to 50 ms more latency."""

_POLL_TIMEOUT = 0.5
"""Longest one consume() blocks its thread: bounds how long close() waits for it."""

_CHUNK = 256
"""Records ``async for`` makes at a time (fewer than the garbage collector's 700)."""

_CLIENT_CALLBACKS = ("error_cb", "stats_cb", "throttle_cb", "oauth_cb", "on_commit")
"""Config callbacks of the application's that librdkafka runs inside consume()."""

_error, _key, _value = Message.error, Message.key, Message.value
_topic, _partition, _offset = Message.topic, Message.partition, Message.offset
_message_of = operator.attrgetter("_message")


# Message errors the application must hear of; librdkafka recovers from the others itself.
_RAISED = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
    }
)


def _call_failed(operation: str, exc: KafkaException) -> ConsumerCallError:
    return ConsumerCallError(operation, kafka_error_of(exc))


@contextlib.contextmanager
def _calling(operation: str) -> Iterator[None]:
    """librdkafka's KafkaException from a consumer call, raised as a ConsumerCallError."""
    try:
        yield
    except KafkaloopError:
        raise
    except KafkaException as exc:
        raise _call_failed(operation, exc) from None


def _next_offsets(
    records: Iterable[ConsumerRecord], offsets: Sequence[TopicPartition]
) -> list[TopicPartition]:
    """What to store or commit: past the newest of `records` in each partition, plus `offsets`."""
    latest: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        latest[key] = max(record.offset, latest.get(key, -1))
    return [TopicPartition(t, p, o + 1) for (t, p), o in latest.items()] + list(offsets)


class _State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


def librdkafka_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """What an :class:`AIOConsumer` gives librdkafka for `config`, before its own callbacks."""
    conf = dict(config)
    config_flag(conf, "enable.auto.offset.store", default=True)  # (a bad value: refused)
    conf["enable.auto.offset.store"] = False  # offsets are stored as records are handed out
    # Once its prefetch queue passed queued.min.messages, librdkafka waits this long before
    # fetching again; 1 s by default, which an application that reads in bursts (as an
    # asyncio one does) sees as whole-second stalls mid-topic.
    conf.setdefault("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
    conf.setdefault("logger", librdkafka_logger)
    return conf


class AIOConsumer:
    """An asyncio Kafka consumer over librdkafka.

    ``config`` takes any librdkafka consumer property. ``topics`` are subscribed to at once;
    or call :meth:`subscribe` or :meth:`assign` later. Deserializers turn a key or value's
    bytes into objects; when one raises, :class:`DeserializationError` names the record, and
    ``on_deserialization_error="skip"`` logs and skips it instead.

    Records librdkafka has already fetched are taken on the loop, as many as the reader asks
    for; waiting for more happens on the consumer's thread. With rebalance callbacks, or
    client callbacks in ``config`` (``error_cb``, ``stats_cb``, ``throttle_cb``,
    ``oauth_cb``, ``on_commit``), every ``consume()`` runs on that thread instead (where
    those callbacks run), ``batch_size`` records at a time (more if one read asks for more),
    the next batch fetched while one is read.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        topics: Sequence[str] | None = None,
        *,
        key_deserializer: Deserializer | None = None,
        value_deserializer: Deserializer | None = None,
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
        on_deserialization_error: Literal["raise", "skip"] = "raise",
        batch_size: int = 500,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if on_deserialization_error not in ("raise", "skip"):
            raise ValueError(
                "on_deserialization_error must be 'raise' or 'skip', "
                f"not {on_deserialization_error!r}"
            )
        self._bridge = LoopBridge.for_running_loop("AIOConsumer")
        loop = self._bridge.loop
        self._loop = loop
        self._store_on_handout = config_flag(config, "enable.auto.offset.store", default=True)
        conf = librdkafka_config(config)
        conf.setdefault("error_cb", self._on_error)
        self._bootstrap = str(conf.get("bootstrap.servers", ""))
        self.group_id = str(conf.get("group.id", ""))
        # Incremental assignment: a cooperative assignor, or the KIP-848 group protocol.
        self._cooperative = (
            "cooperative" in str(conf.get("partition.assignment.strategy", ""))
            or str(conf.get("group.protocol", "")).lower() == "consumer"
        )
        self._consumer = make_client(Consumer, conf, config, "consumer")

        self._key_deserializer = key_deserializer
        self._value_deserializer = value_deserializer
        self._skip_bad = on_deserialization_error == "skip"
        self._rebalance_callbacks = {
            "on_assign": on_assign,
            "on_revoke": on_revoke,
            "on_lost": on_lost,
        }
        self._batch_size = batch_size
        # Without callbacks of the application's that run inside consume() (rebalance ones
        # may be coroutines the rebalance must wait for; an oauth_cb may block), what
        # librdkafka has already fetched is taken on the loop itself, just what the reader
        # asks for: consume(n, 0) does not wait for the network, a thread hop per batch costs
        # more than it, and librdkafka is served (a rebalance, for one) at every read rather
        # than once a whole batch has been read.
        self._take_queued_here = not any(self._rebalance_callbacks.values()) and not any(
            name in config for name in _CLIENT_CALLBACKS
        )
        # How many partitions are assigned, as of which change of the assignment.
        self._assignment_changes = 0
        self._assigned = (-1, 0)
        # confluent-kafka makes a call from one thread wait while another thread's call to the
        # same consumer is in progress (a poll() waiting for records, a metadata request, one
        # serving a rebalance callback that waits for the loop). lag(), on the loop, measures
        # only while no other thread is in a call (_busy, counted under the lock), else hands
        # over what the consume thread measured last, and asks it to measure again.
        self._lag_lock = threading.Lock()
        self._busy = 0
        self._lag_asked = False
        self._lag_seen: dict[TopicPartition, int] = {}
        self._state = _State.OPEN
        self._close_task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[tuple[list[Message], bool]] | None = None
        # Fetched messages not yet converted: those carried past a bad one (it comes first),
        # then the rest of the consumed batch from _raw_pos on. Records are made a chunk at a
        # time: messages (and records, without the C extension or with deserializers that
        # return other objects than bytes and str) are objects the garbage collector counts,
        # and thousands alive at once would set off collections (each one walking them) where
        # a chunk does not.
        self._carry: collections.deque[Message] = collections.deque()
        self._raw: list[Message] = []
        self._raw_pos = 0
        self._raw_one_partition = False
        # The current batch: records before _cursor.next are handed over, and those before _noted
        # are counted in _handed_out (partition -> last offset handed over, not yet stored).
        self._cursor = Cursor()
        self._stream = RecordStream(self._cursor, self._read_next)
        self._noted = 0
        self._handed_out: dict[tuple[str, int], int] = {}
        self._one_partition = False
        self._bad_log = RateLimitedLog(logger)
        self.skipped = 0
        """Records skipped because a deserializer raised (with ``on_deserialization_error``)."""
        if topics:
            self.subscribe(topics)

    @classmethod
    def fan_out(cls, config: Mapping[str, Any], topics: Sequence[str], **kwargs: Any) -> Self:
        """A consumer that sees every new message of `topics`, whatever other processes do.

        For live push (WebSocket, SSE): a consumer group of its own (so no other process
        shares its partitions), starting from the latest offset, committing nothing. Its
        assignment is incremental (``cooperative-sticky``, unless the configuration picks an
        assignor or the ``consumer`` group protocol): a partition the topics gain is added
        alone while the others read on, where an eager assignor would take every partition
        back and assign them again.
        """
        prefix = config.get("group.id", "kafkaloop")
        conf = {
            **config,
            "group.id": f"{prefix}-fanout-{uuid.uuid4().hex[:12]}",
            "auto.offset.reset": "latest",
            "enable.auto.commit": False,
        }
        if str(conf.get("group.protocol", "classic")).lower() != "consumer":
            conf.setdefault("partition.assignment.strategy", "cooperative-sticky")
        return cls(conf, topics, **kwargs)

    def __repr__(self) -> str:
        return (
            f"<AIOConsumer bootstrap.servers={self._bootstrap!r} group.id={self.group_id!r} "
            f"state={self._state.value}>"
        )

    # -- subscription and assignment -------------------------------------------------------

    def subscribe(self, topics: Sequence[str]) -> None:
        """Join the consumer group for `topics` (names, or ``^regex`` patterns)."""
        self._check_open()
        with _calling("subscribe()"):
            self._here(
                self._consumer.subscribe,
                list(topics),
                on_assign=self._rebalance("on_assign"),
                on_revoke=self._rebalance("on_revoke"),
                on_lost=self._rebalance("on_lost"),
            )

    def unsubscribe(self) -> None:
        """Leave the subscription (and the group's assignment)."""
        self._check_open()
        with _calling("unsubscribe()"):
            self._here(self._consumer.unsubscribe)
        self._assignment_changes += 1

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        """Read these partitions, without group management (offsets from each TopicPartition)."""
        self._check_open()
        with _calling("assign()"):
            self._here(self._consumer.assign, list(partitions))
        self._assignment_changes += 1

    def incremental_assign(self, partitions: Sequence[TopicPartition]) -> None:
        """Read these partitions too, without group management, as :meth:`assign` does (not
        on a subscribed consumer); offsets from each TopicPartition. Those already assigned
        keep their positions."""
        self._check_open()
        with _calling("incremental_assign()"):
            self._here(self._consumer.incremental_assign, list(partitions))
        self._assignment_changes += 1

    async def partitions(self, topic: str, timeout: float = 10.0) -> list[int]:
        """The partitions `topic` has now, asked of the broker (:class:`ConsumerCallError` if
        it cannot say, an unknown topic included)."""
        found = (await self._metadata(topic, timeout)).topics[topic]
        if found.error is not None:
            raise ConsumerCallError(f"partitions({topic!r})", found.error)
        return sorted(found.partitions)

    async def topics(self, timeout: float = 10.0) -> dict[str, list[int]]:
        """Every topic the cluster has now (internal ones included) and its partitions,
        asked of the broker (:class:`ConsumerCallError` if it cannot say). A topic the broker
        reports an error for (its leader not yet elected, say) comes with no partitions: it
        exists, its partitions are not known."""
        metadata = await self._metadata(None, timeout)
        return {
            name: [] if topic.error is not None else sorted(topic.partitions)
            for name, topic in metadata.topics.items()
        }

    async def _metadata(self, topic: str | None, timeout: float) -> ClusterMetadata:
        """The cluster's metadata for `topic` (None: every topic), asked of the broker."""
        self._check_open()
        with _calling("Asking for the cluster's metadata"):
            metadata: ClusterMetadata = await self._bridge.run_blocking_here(
                "calls", self._off_loop, self._consumer.list_topics, topic, timeout
            )
        return metadata

    def assignment(self) -> list[TopicPartition]:
        """The partitions currently assigned."""
        self._check_open()
        with _calling("assignment()"):
            return list(self._here(self._consumer.assignment))

    def position(self, partitions: Sequence[TopicPartition]) -> list[TopicPartition]:
        """The next offset to be fetched for each partition (-1001 while unknown)."""
        self._check_open()
        with _calling("position()"):
            return list(self._here(self._consumer.position, list(partitions)))

    def _rebalance(self, name: str) -> Callable[[Consumer, list[TopicPartition]], None]:
        def on_rebalance(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            # Inside consume(): on the consume thread, where librdkafka waits until the loop
            # has run the callback; or on the loop itself, taking what was queued (only when
            # the application set no rebalance callback).
            self._assignment_changes += 1
            callback = self._rebalance_callbacks[name]
            if name in ("on_revoke", "on_lost"):
                self._bridge.call_and_wait(self._forget, partitions)
            if callback is None:
                return
            try:
                self._bridge.call_and_wait(callback, self, partitions)
            except Exception:
                logger.exception("The consumer's %s callback raised; the rebalance goes on", name)
            if name == "on_assign":
                # Here, on the consume thread, with the list the callback saw: offsets it set
                # on those partitions (where to start) are the ones assigned.
                if self._cooperative:
                    _consumer.incremental_assign(partitions)
                else:
                    _consumer.assign(partitions)

        return on_rebalance

    def _forget(self, partitions: list[TopicPartition]) -> None:
        """Drop fetched records of partitions that are no longer ours (a new owner reads them)."""
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._drop(gone)
        self._store_handed_out(only=gone)

    def _spill_raw(self) -> None:
        """Move the unconverted rest of the consumed batch to the carried messages."""
        if self._raw_pos < len(self._raw):
            self._carry.extend(self._raw[self._raw_pos :])
        self._raw, self._raw_pos = [], 0

    def _drop(self, partitions: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Drop unread records of `partitions`; return the first dropped offset of each.

        The record ``async for`` last handed out stays the application's: kept, to be noted
        once it asks past it, unless its partition is dropped (then its offset is not stored
        by this: a revoked partition's next reader reads it again; a paused one resumes after
        it, and a later record's offset covers it).
        """
        holding = self._holding()
        self._note_upto(self._cursor.next - 1 if holding else self._cursor.next)
        first: dict[tuple[str, int], int] = {}
        kept: list[ConsumerRecord] = []
        if holding and (holding.topic, holding.partition) not in partitions:
            kept.append(holding)
        for record in self._cursor.batch[self._cursor.next :]:
            key = (record.topic, record.partition)
            if key in partitions:
                first.setdefault(key, record.offset)
            else:
                kept.append(record)
        self._spill_raw()
        carried: collections.deque[Message] = collections.deque()
        for msg in self._carry:
            key = (msg.topic() or "", msg.partition() or 0)
            if key in partitions:
                first.setdefault(key, msg.offset() or 0)
            else:
                carried.append(msg)
        past_holding = 1 if kept and kept[0] is holding else 0
        self._cursor.batch, self._cursor.next, self._noted = kept, past_holding, 0
        self._carry = carried
        self._one_partition = False
        return first

    def _holding(self) -> ConsumerRecord | None:
        """The record ``async for`` handed out last, which the application has not asked past
        (it may still be processing it); None after ``getmany``, which hands over at once."""
        if self._noted < self._cursor.next:
            return self._cursor.batch[self._cursor.next - 1]
        return None

    # -- reading ---------------------------------------------------------------------------

    async def getmany(self, max_records: int = 500, timeout: float = 1.0) -> list[ConsumerRecord]:
        """Up to `max_records` records, as soon as there are any, or none after `timeout` s
        (or once ``close()`` has begun meanwhile, as ``async for`` ends then)."""
        self._check_open()
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, not {max_records}")
        deadline = self._loop.time() + timeout
        while self._cursor.next >= len(self._cursor.batch):
            if self._state is not _State.OPEN:
                break
            await self._fill(
                max_records, max(0.0, min(deadline - self._loop.time(), _POLL_TIMEOUT))
            )
            if self._cursor.next < len(self._cursor.batch) or self._loop.time() >= deadline:
                break
        start, batch = self._cursor.next, self._cursor.batch
        if start == 0 and len(batch) <= max_records:
            records = batch  # the whole batch: hand the list itself over, no copy
        else:
            records = batch[start : start + max_records]
        self._cursor.next = start + len(records)
        if records:
            self._note_upto(self._cursor.next)
            self._store_handed_out()
        if records is batch:
            self._cursor.batch, self._cursor.next, self._noted = [], 0, 0
        return records

    def __aiter__(self) -> AsyncIterator[ConsumerRecord]:
        # A record already at hand comes without a Python frame or a coroutine (the stream is
        # C code when the _records extension is built); the stream calls _read_next for more.
        return self._stream

    def __anext__(self) -> Awaitable[ConsumerRecord]:
        """The next record; iteration ends when the consumer is closed."""
        return self._stream.__anext__()

    async def _read_next(self) -> ConsumerRecord:
        while self._cursor.next >= len(self._cursor.batch):
            if self._state is not _State.OPEN:
                raise StopAsyncIteration
            # Asking for more means every record handed out so far has been dealt with.
            self._note_upto(self._cursor.next)
            self._store_handed_out()
            await self._fill(min(_CHUNK, self._batch_size), _POLL_TIMEOUT)
        self._cursor.next += 1
        return self._cursor.batch[self._cursor.next - 1]

    async def _fill(self, count: int, timeout: float) -> None:
        """Replace the (fully handed over) batch with carried messages or a fresh one."""
        self._note_upto(self._cursor.next)
        self._cursor.batch, self._cursor.next, self._noted = [], 0, 0
        self._one_partition = False
        if self._carry:
            self._convert()
            return
        if self._raw_pos >= len(self._raw):
            messages, one_partition = await self._consume(count, timeout)
            if not messages:
                return
            self._raw, self._raw_pos, self._raw_one_partition = messages, 0, one_partition
        start = self._raw_pos
        chunk = self._raw[start : start + count] if start or count < len(self._raw) else self._raw
        self._raw_pos = start + len(chunk)
        if self._raw_pos >= len(self._raw):
            self._raw, self._raw_pos = [], 0
        records = self._convert_fast(chunk)
        if records is None:
            self._carry.extend(chunk)
            self._convert()
        else:
            self._cursor.batch = records
            self._one_partition = self._raw_one_partition

    async def _consume(self, count: int, timeout: float) -> tuple[list[Message], bool]:
        if self._state is not _State.OPEN:  # close() is on its way: start no consume()
            raise ClientClosedError(f"This AIOConsumer is {self._state.value}.")
        if not self._take_queued_here:
            # On the consume thread, a batch at a time, and the next one fetched meanwhile.
            count = max(count, self._batch_size)
        elif self._inflight is None:
            # A turn for the loop's other tasks first: with records queued, reading would
            # otherwise never suspend, and a backlog would hold the loop until drained.
            await asyncio.sleep(0)
            if self._state is not _State.OPEN:
                return [], False
            if self._inflight is None:  # (another reader may have started a wait meanwhile)
                try:
                    queued = self._consume_batch(count, 0.0)
                except KafkaException as exc:
                    raise _call_failed("Consuming", exc) from None
                if queued[0] or timeout <= 0:
                    return queued
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(
                # A lane of its own: consume() blocks for long (and, during a rebalance, until
                # the loop ran the callbacks, which may themselves need a blocking call).
                self._bridge.run_blocking_on(
                    "consume", self._off_loop, self._consume_batch, count, timeout
                )
            )
        result = await self._take_inflight(self._inflight)
        if (
            result[0]
            and not self._take_queued_here
            and self._state is _State.OPEN
            and self._inflight is None
        ):
            # Prefetch: the next batch is fetched while this one is handed over.
            self._inflight = asyncio.ensure_future(
                self._bridge.run_blocking_on(
                    "consume", self._off_loop, self._consume_batch, count, 0.0
                )
            )
        return result

    async def _take_inflight(
        self, inflight: asyncio.Future[tuple[list[Message], bool]]
    ) -> tuple[list[Message], bool]:
        """Wait for the batch in flight; the first one back takes it, the others get nothing.

        Shielded: if the caller is cancelled the batch still lands, for the next read.
        """
        try:
            result = await asyncio.shield(inflight)
        except KafkaException as exc:
            if self._inflight is not inflight:
                return [], False
            self._inflight = None
            raise _call_failed("Consuming", exc) from None
        except Exception as exc:
            if self._inflight is not inflight:
                return [], False
            # A callback of the config's raised inside consume(): confluent-kafka then drops
            # the records that call had taken, and librdkafka's position is past them. Reading
            # on would have later commits cover records nobody saw, so this consumer reads no
            # more (the failed batch stays in flight: every read says so again).
            raise ConsumerError(
                f"A callback in the consumer's config raised {type(exc).__name__} inside "
                "consume(), which dropped the records it had taken: this consumer reads no "
                "more. Close it and create a new one: it resumes from the committed offsets."
            ) from exc
        if self._inflight is not inflight:
            return [], False  # another reader (or pause/seek/close) took this batch
        self._inflight = None
        return result

    def _consume_batch(self, count: int, timeout: float) -> tuple[list[Message], bool]:
        """What is queued now, else (on the consumer's thread) the first message to arrive
        and what came with it (consume(n, t) alone would wait out t for n messages)."""
        consumer = self._consumer
        messages: list[Message] = consumer.consume(count, 0)
        if not messages and timeout > 0:
            first = consumer.poll(timeout)
            if first is not None:
                messages = [first, *consumer.consume(count - 1, 0)] if count > 1 else [first]
        # One partition assigned (manual assignment, or a group of one): every batch is from
        # it, and the last record alone says how far the batch was handed over. Asking costs
        # tens of microseconds, so the answer is kept until the assignment changes.
        changes, assigned = self._assigned
        if changes != self._assignment_changes:
            changes = self._assignment_changes
            assigned = len(consumer.assignment())
            self._assigned = (changes, assigned)
        if self._lag_asked:
            self._lag_asked = False
            with contextlib.suppress(ConsumerCallError):  # (the read's records come first)
                self._lag_seen = self._measure_lag()
        return messages, assigned == 1

    def _here(self, call: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """`call(*args, **kwargs)` from the loop, inside a rebalance callback on the thread
        that waits for it (:meth:`LoopBridge.call_here`): else it would wait for that
        thread's call to the consumer, which waits for the loop."""
        return self._bridge.call_here(functools.partial(call, *args, **kwargs))

    def _off_loop(self, call: Callable[..., R], *args: Any) -> R:
        """`call(*args)`, made on a thread of the bridge's: counted as a call in progress."""
        with self._lag_lock:
            self._busy += 1
        try:
            return call(*args)
        finally:
            with self._lag_lock:
                self._busy -= 1

    def _convert_fast(self, messages: list[Message]) -> list[ConsumerRecord] | None:
        """Records for a clean batch in one go; None if any message needs the slow path."""
        key_de, value_de = self._key_deserializer, self._value_deserializer
        if key_de is None and value_de is None:
            return make_records(messages)
        if any(map(_error, messages)):
            return None
        keys: Iterable[Any] = map(_key, messages)
        values: Iterable[Any] = map(_value, messages)
        try:
            if key_de is not None:
                keys = [None if k is None else key_de(k) for k in keys]
            if value_de is not None:
                values = [None if v is None else value_de(v) for v in values]
        except Exception:
            return None  # the slow path finds the bad record and names it
        return list(map(new_record, messages, keys, values))

    def _convert(self) -> None:
        """Turn carried messages into the batch, record by record, stopping at a bad one."""
        carry, batch = self._carry, self._cursor.batch
        append = batch.append
        key_de, value_de = self._key_deserializer, self._value_deserializer
        while carry:
            msg = carry[0]
            err = msg.error()
            if err is not None:
                carry.popleft()
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if not err.fatal() and err.code() not in _RAISED:
                    # e.g. a subscribed topic that does not exist yet: librdkafka goes on.
                    self._bad_log.warning("Kafka consumer: %s", err.str())
                    continue
                if batch:  # hand over what came before it first
                    carry.appendleft(msg)
                    return
                raise ConsumerError(
                    f"Consuming {msg.topic()}[{msg.partition()}] failed: {err.str()} "
                    f"({err.name()})",
                    error=err,
                )
            key, value = msg.key(), msg.value()
            if key_de is not None or value_de is not None:
                try:
                    if key_de is not None and key is not None:
                        key = key_de(key)
                    if value_de is not None and value is not None:
                        value = value_de(value)
                except Exception as exc:
                    if batch and not self._skip_bad:
                        return  # the good records first; this one raises on the next read
                    carry.popleft()
                    self._reject(msg, exc)
                    continue
            carry.popleft()
            append(new_record(msg, key, value))

    def _reject(self, msg: Message, exc: Exception) -> None:
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        error = DeserializationError(
            f"Could not deserialize the record at {topic}[{partition}] offset {offset}: "
            f"{type(exc).__name__}: {exc}. Skip it with on_deserialization_error='skip', or "
            "fix the producer or the deserializer.",
            topic=topic,
            partition=partition,
            offset=offset,
        )
        # Either way the bad record counts as handed over: reading goes on after it.
        self._handed_out[topic, partition] = offset
        if not self._skip_bad:
            raise error from exc
        self.skipped += 1
        self._bad_log.warning("Skipped a record: %s", error)

    def _note_upto(self, index: int) -> None:
        """Count records of the batch up to `index` as handed over."""
        if index <= self._noted:
            return
        if self._one_partition:
            last = self._cursor.batch[index - 1]._message
            self._handed_out[last.topic() or "", last.partition() or 0] = last.offset() or 0
        else:
            handed = list(map(_message_of, self._cursor.batch[self._noted : index]))
            last_offsets = zip(
                zip(map(_topic, handed), map(_partition, handed), strict=True),
                map(_offset, handed),
                strict=True,
            )
            self._handed_out.update(cast("Iterable[tuple[tuple[str, int], int]]", last_offsets))
        self._noted = index

    def _store_handed_out(self, only: set[tuple[str, int]] | None = None) -> None:
        if not self._handed_out:
            return
        chosen = (
            self._handed_out
            if only is None
            else {tp: off for tp, off in self._handed_out.items() if tp in only}
        )
        if self._store_on_handout and chosen:
            offsets = [TopicPartition(t, p, off + 1) for (t, p), off in chosen.items()]
            try:
                self._here(self._consumer.store_offsets, offsets=offsets)
            except KafkaException as exc:  # e.g. partitions just revoked: nothing to store
                logger.debug("store_offsets: %s", exc)
        for key in list(chosen):
            self._handed_out.pop(key, None)

    # -- offsets ---------------------------------------------------------------------------

    def store_offsets(
        self, records: Iterable[ConsumerRecord] = (), offsets: Sequence[TopicPartition] = ()
    ) -> None:
        """Mark records as processed: the next commit covers them (up to each one's offset)."""
        self._check_not_closed()
        partitions = _next_offsets(records, offsets)
        if partitions:
            try:
                self._here(self._consumer.store_offsets, offsets=partitions)
            except KafkaException as exc:
                raise _call_failed("store_offsets()", exc) from None

    async def commit(
        self, records: Iterable[ConsumerRecord] = (), offsets: Sequence[TopicPartition] = ()
    ) -> None:
        """Commit, and wait for the broker: the given records/offsets, else every record
        handed over so far (``async for``'s current one included: call it from the loop's
        body once that one is processed, not from another task while it is) and every stored
        offset.

        Allowed while closing, so an ``on_revoke`` callback can commit on the way out."""
        self._check_not_closed()
        partitions = _next_offsets(records, offsets)
        if not partitions:
            self._note_upto(self._cursor.next)
            self._store_handed_out()
        try:
            if partitions:
                await self._bridge.run_blocking_here(
                    "calls", self._off_loop, self._commit_offsets, partitions
                )
            else:
                await self._bridge.run_blocking_here("calls", self._off_loop, self._commit_stored)
        except KafkaException as exc:
            failed = _call_failed("Commit", exc)
            if failed.code == KafkaError._NO_OFFSET:
                return  # nothing new to commit
            raise failed from None

    def _commit_offsets(self, partitions: list[TopicPartition]) -> None:
        self._consumer.commit(offsets=partitions, asynchronous=False)

    def _commit_stored(self) -> None:
        self._consumer.commit(asynchronous=False)

    async def committed(
        self, partitions: Sequence[TopicPartition], timeout: float = 10.0
    ) -> list[TopicPartition]:
        """The group's committed offsets for `partitions`."""
        self._check_open()
        with _calling("committed()"):
            result: list[TopicPartition] = await self._bridge.run_blocking_here(
                "calls", self._off_loop, self._consumer.committed, list(partitions), timeout
            )
        return result

    async def offsets_for_times(
        self, partitions: Sequence[TopicPartition], timeout: float = 10.0
    ) -> list[TopicPartition]:
        """For each partition, whose ``offset`` holds a timestamp (milliseconds since the
        epoch), the earliest offset whose record is that recent or more; -1 where no record is
        (yet)."""
        self._check_open()
        with _calling("offsets_for_times()"):
            result: list[TopicPartition] = await self._bridge.run_blocking_here(
                "calls", self._off_loop, self._consumer.offsets_for_times, list(partitions), timeout
            )
        return result

    async def seek(self, partition: TopicPartition) -> None:
        """Read `partition` from its ``offset`` next (records fetched before are dropped);
        :class:`ConsumerCallError` if it is not assigned."""
        self._check_open()
        await self._settle_inflight()
        key = (partition.topic, partition.partition)
        self._drop({key})
        self._handed_out.pop(key, None)
        with _calling(f"seek() to {partition.topic}[{partition.partition}]"):
            await self._bridge.run_blocking_here(
                "calls", self._off_loop, self._consumer.seek, partition
            )

    async def pause(self, partitions: Sequence[TopicPartition]) -> None:
        """Stop reading `partitions` until :meth:`resume`; nothing fetched is lost.

        A paused partition stays paused if the group takes it away and later gives it back
        (librdkafka keeps the state): resume it once it is assigned again, if it should be
        read."""
        self._check_open()
        await self._settle_inflight()
        rewind = self._drop({(tp.topic, tp.partition) for tp in partitions})
        with _calling("pause()"):
            self._here(self._consumer.pause, list(partitions))
            # librdkafka drops what it had fetched for paused partitions; so do we, and rewind
            # to the first record not yet handed over, so resume() starts exactly there.
            for (topic, part), offset in rewind.items():
                await self._bridge.run_blocking_here(
                    "calls",
                    self._off_loop,
                    self._consumer.seek,
                    TopicPartition(topic, part, offset),
                )

    async def resume(self, partitions: Sequence[TopicPartition]) -> None:
        """Read paused partitions again."""
        self._check_open()
        with _calling("resume()"):
            self._here(self._consumer.resume, list(partitions))

    def lag(self) -> dict[TopicPartition, int]:
        """Messages behind the end of each assigned partition (from cached watermarks).

        Never waits for another thread's call to the consumer (a read waiting for records,
        say): meanwhile, what was measured last (the next read measures it again)."""
        self._check_open()
        with self._lag_lock:
            if self._busy:
                self._lag_asked = True
            else:
                self._lag_seen = self._measure_lag()
        return dict(self._lag_seen)

    def _measure_lag(self) -> dict[TopicPartition, int]:
        result: dict[TopicPartition, int] = {}
        with _calling("lag()"):
            assigned = self._consumer.assignment()
            if not assigned:
                return result
            for tp in self._consumer.position(assigned):
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0 and tp.offset >= 0:
                    result[TopicPartition(tp.topic, tp.partition)] = max(0, high - tp.offset)
        return result

    async def watermarks(self, partition: TopicPartition, timeout: float = 10.0) -> tuple[int, int]:
        """The low and high offsets of `partition`, asked of the broker."""
        self._check_open()
        with _calling(f"watermarks() of {partition.topic}[{partition.partition}]"):
            result: tuple[int, int] = await self._bridge.run_blocking_here(
                "calls", self._off_loop, self._consumer.get_watermark_offsets, partition, timeout
            )
        return result

    async def _settle_inflight(self) -> None:
        """Take the batch in flight into the carried messages, so it can be filtered.

        Not from inside a rebalance callback: that batch is the very consume() call waiting
        for the callback; librdkafka drops what it holds for moved partitions itself.
        """
        if self._inflight is not None and not self._bridge.in_callback:
            messages, _one_partition = await self._take_inflight(self._inflight)
            self._spill_raw()
            self._carry.extend(messages)

    # -- errors and closing ----------------------------------------------------------------

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            logger.error("Kafka consumer fatal error: %s", err.str())
        else:
            # Rate-limited: a cluster that is down reports every failed connection attempt.
            self._bad_log.warning("Kafka consumer: %s", err.str())

    def _check_not_closed(self) -> None:
        if self._state is _State.CLOSED:
            raise ClientClosedError("This AIOConsumer is closed: create a new one.")

    def _check_open(self) -> None:
        if self._state is not _State.OPEN:
            raise ClientClosedError(f"This AIOConsumer is {self._state.value}: create a new one.")

    @property
    def closed(self) -> bool:
        """Whether close() has begun."""
        return self._state is not _State.OPEN

    async def close(self) -> None:
        """Store what was handed over, commit if configured, leave the group. Idempotent."""
        if self._close_task is None:
            self._state = _State.CLOSING
            self._close_task = self._loop.create_task(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        # Not async for's current record: its processing may have been cut short (a task
        # cancelled at shutdown); it is read again, rather than lost.
        self._note_upto(self._cursor.next - 1 if self._holding() else self._cursor.next)
        try:
            await self._settle_inflight()
        except Exception as exc:  # closing goes on: the batch's error is no longer anyone's
            logger.debug("The last batch before close failed: %s", exc)
        self._store_handed_out()
        try:
            await self._bridge.run_blocking_here("calls", self._off_loop, self._consumer.close)
        finally:
            self._bridge.close()
            self._state = _State.CLOSED

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
