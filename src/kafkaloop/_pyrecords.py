"""The consumer's per-record hot path in pure Python: what kafkaloop uses when its C
extension ``_records.c`` is not built, or when ``KAFKALOOP_NO_EXTENSIONS`` is set. The same
names and behaviour, documented there; only slower."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, Message

__all__ = [
    "ConsumerRecord",
    "Cursor",
    "DeserializedRecord",
    "RecordStream",
    "make_records",
    "new_record",
]

_FROM_MESSAGE: Any = object()
"""A key or value not stored in the record: read from its message when asked for."""


class ConsumerRecord:
    """One consumed message: ``topic``, ``partition``, ``offset``, ``key``, ``value``,
    ``headers`` and ``timestamp``.

    Key and value are bytes, or what the consumer's deserializers made of them. The other
    attributes are read from the underlying confluent-kafka ``Message`` when asked for.
    """

    __slots__ = ("_key", "_message", "_value")
    _message: Message
    _key: Any
    _value: Any

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
        if not isinstance(topic, str):
            raise TypeError(f"ConsumerRecord() topic must be str, not {type(topic).__name__}")
        message = Message(
            topic=topic,
            partition=partition,
            offset=offset,
            headers=headers,
            timestamp=(TIMESTAMP_NOT_AVAILABLE, 0)
            if timestamp is None
            else (TIMESTAMP_CREATE_TIME, timestamp),
        )
        return new_record(message, key, value)

    @property
    def topic(self) -> str:
        """The topic it was read from."""
        return self._message.topic() or ""

    @property
    def partition(self) -> int:
        """The partition it was read from."""
        return cast(int, self._message.partition())

    @property
    def offset(self) -> int:
        """Its offset in the partition."""
        return cast(int, self._message.offset())

    @property
    def key(self) -> Any:
        """The key: bytes, None, or the deserializer's."""
        key = self._key
        return self._message.key() if key is _FROM_MESSAGE else key

    @property
    def value(self) -> Any:
        """The value: bytes, None (a tombstone), or the deserializer's."""
        value = self._value
        return self._message.value() if value is _FROM_MESSAGE else value

    @property
    def headers(self) -> list[tuple[str, bytes | None]] | None:
        """Headers in order (names may repeat), or None. A copy: changing it changes no record."""
        headers = cast("list[tuple[str, bytes | None]] | None", self._message.headers())
        return None if headers is None else list(headers)

    @property
    def timestamp(self) -> int | None:
        """Milliseconds since the epoch (create or log-append time), or None when unknown."""
        kind, timestamp = self._message.timestamp()
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


class DeserializedRecord(ConsumerRecord):
    """A ConsumerRecord whose key or value a deserializer made."""

    __slots__ = ()


_new_object = object.__new__


def _atomic(obj: object) -> bool:
    return obj is None or type(obj) in (bytes, str)


def make_records(messages: list[Message]) -> list[ConsumerRecord] | None:
    """Records for a list of messages consume() returned, or None if one carries an error."""
    if not isinstance(messages, list):
        raise TypeError("make_records(messages: list)")
    messages = list(messages)  # (a Message subclass's methods could change the caller's list)
    if any(msg.error() for msg in messages):
        return None
    return [_record(ConsumerRecord, msg, _FROM_MESSAGE, _FROM_MESSAGE) for msg in messages]


def new_record(message: Message, key: Any, value: Any) -> ConsumerRecord:
    """One record, of whichever of the two types it needs."""
    kind = ConsumerRecord if _atomic(key) and _atomic(value) else DeserializedRecord
    return _record(kind, message, key, value)


def _record(kind: type[ConsumerRecord], message: Message, key: Any, value: Any) -> ConsumerRecord:
    record: ConsumerRecord = _new_object(kind)
    record._message, record._key, record._value = message, key, value
    return record


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
