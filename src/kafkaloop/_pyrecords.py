"""The consumer's per-record hot path in pure Python: what kafkaloop uses when its C
extension (``_records.c``, the same names and behaviour) is not built, or when
``KAFKALOOP_NO_EXTENSIONS`` is set. Here a record is a small tuple (message, key, value)."""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable, Iterable
from itertools import repeat
from typing import Any, cast

from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, Message

__all__ = ["ConsumerRecord", "Cursor", "RecordStream", "make_records", "new_record"]


class ConsumerRecord(tuple[Message, Any, Any]):
    """One consumed message: ``topic``, ``partition``, ``offset``, ``key``, ``value``,
    ``headers`` and ``timestamp``.

    Key and value are bytes, or what the consumer's deserializers made of them. The other
    attributes are read from the underlying confluent-kafka ``Message`` when asked for.
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

    _message = property(operator.itemgetter(0), doc="The confluent-kafka Message.")
    # itemgetter: C-level getters, no Python frame per access (value is the hot one).
    key = property(operator.itemgetter(1), doc="The key: bytes, None, or the deserializer's.")
    value = property(
        operator.itemgetter(2), doc="The value: bytes, None (a tombstone), or the deserializer's."
    )

    @property
    def headers(self) -> list[tuple[str, bytes | None]] | None:
        """Headers in order (names may repeat), or None. A copy: changing it changes no record."""
        headers = cast("list[tuple[str, bytes | None]] | None", self[0].headers())
        return None if headers is None else list(headers)

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

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, ConsumerRecord):
            return NotImplemented
        return self._fields() != other._fields()

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


_new_tuple = tuple.__new__
_key, _value = operator.methodcaller("key"), operator.methodcaller("value")


def make_records(messages: list[Message]) -> list[ConsumerRecord] | None:
    """Records for a list of clean messages, or None if one of them carries an error."""
    messages = list(messages)  # (a Message subclass's methods could change the caller's list)
    if any(msg.error() for msg in messages):
        return None
    parts: Iterable[tuple[Message, Any, Any]] = zip(
        messages, map(_key, messages), map(_value, messages), strict=True
    )
    return list(map(_new_tuple, repeat(ConsumerRecord), parts))


def new_record(message: Message, key: Any, value: Any) -> ConsumerRecord:
    """One record."""
    return _new_tuple(ConsumerRecord, (message, key, value))


class Cursor:
    """The batch being handed over and the index of the next record."""

    __slots__ = ("batch", "next")

    def __init__(self) -> None:
        self.batch: list[ConsumerRecord] = []
        self.next = 0


class RecordStream:
    """The consumer's records, for ``async for``: awaiting ``__anext__()`` gives the next
    record of the cursor's batch if there is one (without suspending), else awaits
    ``refill()``."""

    __slots__ = ("_cursor", "_refill")

    def __init__(self, cursor: Cursor, refill: Callable[[], Awaitable[ConsumerRecord]]) -> None:
        self._cursor = cursor
        self._refill = refill

    def __aiter__(self) -> RecordStream:
        return self

    def __anext__(self) -> Awaitable[ConsumerRecord]:
        return self._next()

    async def _next(self) -> ConsumerRecord:
        # Taken when awaited, not before: an awaitable dropped unawaited loses nothing.
        cursor = self._cursor
        index = cursor.next
        if index < len(cursor.batch):
            cursor.next = index + 1
            return cursor.batch[index]
        return await self._refill()
