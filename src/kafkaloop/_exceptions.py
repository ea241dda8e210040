"""Every error kafkaloop raises.

The tree::

    KafkaloopError
    ├── ConfigurationError            librdkafka refused a configuration property (also ValueError)
    ├── LocalKafkaError               the local broker launcher could not do its job
    │   └── ToolNotFoundError         Java or Maven is missing
    ├── ClientClosedError             the client was used after close()
    │   └── ProducerClosedError
    ├── NoRunningLoopError            a client was created outside a running event loop
    ├── ProduceError                  a message could not be handed to or delivered by Kafka
    │   ├── DeliveryError             Kafka reported a failed delivery (also a KafkaException)
    │   ├── QueueFullError            librdkafka's local queue stayed full
    │   └── TransactionError          a transaction call failed (also a KafkaException)
    ├── AdminError                    an admin operation failed; names the topic it concerns
    │   ├── TopicAlreadyExistsError
    │   ├── UnknownTopicError
    │   ├── InvalidReplicationFactorError
    │   ├── InvalidPartitionsError
    │   └── TopicMismatchError        ensure_topics found a topic shaped otherwise
    ├── AdminErrorGroup               several topics failed: an ExceptionGroup of AdminErrors
    ├── ConsumerError                 consuming failed
    │   ├── ConsumerCallError         librdkafka failed a consumer call (also a KafkaException)
    │   └── DeserializationError      a key or value deserializer raised; names the record
    ├── KafkaUnavailable              (kafkaloop.fastapi) no acknowledgement within the deadline
    └── SlowClientError               (kafkaloop.push) a live-push subscription was ended

Each message says what happened and what to do next.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException


def kafka_error_of(exc: BaseException) -> KafkaError:
    """librdkafka's KafkaError a KafkaException carries (``args[0]``), or one that says it."""
    found = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return found if isinstance(found, KafkaError) else KafkaError(KafkaError._FAIL, str(exc))


class KafkaloopError(Exception):
    """Base class of every error kafkaloop raises."""


class ConfigurationError(KafkaloopError, ValueError):
    """librdkafka refused the client configuration (unknown property or invalid value)."""


class LocalKafkaError(KafkaloopError):
    """The local Kafka launcher failed: resolving, formatting, starting or stopping a broker."""


class ToolNotFoundError(LocalKafkaError):
    """A program the local launcher needs (Java or Maven) is not installed."""


class ClientClosedError(KafkaloopError):
    """A client was used after it was closed."""


class NoRunningLoopError(KafkaloopError, RuntimeError):
    """A client that needs the running event loop was created outside one."""


class ProducerClosedError(ClientClosedError):
    """A message was produced after the producer was closed."""


class ProduceError(KafkaloopError):
    """A message could not be handed to Kafka or was not delivered."""


class Persistence(enum.Enum):
    """Whether a failed message may nonetheless have been written to the topic."""

    NOT_PERSISTED = "not persisted"
    """The broker never got it (or refused it): retrying cannot duplicate it."""
    POSSIBLY_PERSISTED = "possibly persisted"
    """It was sent but not acknowledged: a retry may duplicate it unless idempotence is on."""


# librdkafka errors after which the broker may have appended the message anyway.
_POSSIBLY_PERSISTED = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._PURGE_INFLIGHT,
        KafkaError._TRANSPORT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    }
)


_CREDENTIALS = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})

_UNREACHABLE = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }
)

# Withdrawn by the producer itself (close(), abort_transaction(), purge()), not refused.
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


class _Facts:
    """What librdkafka's ``error`` says, on the errors that carry one."""

    error: KafkaError

    @property
    def code(self) -> int:
        """librdkafka's error code (``KafkaError.<NAME>``)."""
        return int(self.error.code())

    @property
    def retriable(self) -> bool:
        """Whether the same call (a produce: the same message) may succeed if made again."""
        return bool(self.error.retriable())

    @property
    def fatal(self) -> bool:
        """Whether the client itself is unusable (e.g. an idempotence violation)."""
        return bool(self.error.fatal())


class DeliveryError(_Facts, ProduceError, KafkaException):
    """Kafka reported that a message was not delivered.

    Also a ``confluent_kafka.KafkaException``: ``args[0]`` is the librdkafka ``KafkaError``,
    so code written for a plain confluent-kafka producer keeps working.
    """

    def __init__(
        self, error: KafkaError, topic: str | None = None, partition: int | None = None
    ) -> None:
        super().__init__(error)
        self.error = error
        self.topic = topic
        self.partition = partition

    @property
    def persistence(self) -> Persistence:
        """Whether the message may have been written despite the error."""
        if self.error.code() in _POSSIBLY_PERSISTED:
            return Persistence.POSSIBLY_PERSISTED
        return Persistence.NOT_PERSISTED

    def __str__(self) -> str:
        where = self.topic or "?"
        if self.partition is not None and self.partition >= 0:
            where += f"[{self.partition}]"
        if self.error.code() in _CREDENTIALS:
            advice = "check the credentials (sasl.username, sasl.password, sasl.mechanism)"
        elif self.fatal:
            advice = "the producer cannot continue; close it and create a new one"
        elif self.error.code() in _PURGED:
            advice = (
                "the producer withdrew it (closed, or its transaction aborted) before Kafka "
                "acknowledged it; produce it again if it is still wanted"
            )
            if self.persistence is Persistence.POSSIBLY_PERSISTED:
                advice += " (it may be stored already: without idempotence, a duplicate)"
        elif self.error.code() in _UNREACHABLE:
            advice = "Kafka did not acknowledge it in time; check the brokers are reachable"
        elif self.retriable:
            advice = "the error is transient; producing again may succeed"
            if self.persistence is Persistence.POSSIBLY_PERSISTED:
                advice += " (enable idempotence so a retry cannot duplicate it)"
        else:
            advice = "producing it again will fail the same way; fix the cause first"
        return (
            f"Delivery to {where} failed: {self.error.str()} ({self.error.name()}); "
            f"{self.persistence.value}; {advice}."
        )

    def __reduce__(self) -> tuple[type[DeliveryError], tuple[object, ...]]:
        return type(self), (self.error, self.topic, self.partition)


class QueueFullError(ProduceError, BufferError):
    """librdkafka's local queue stayed full (the broker is slow, down, or being outpaced)."""


class TransactionError(_Facts, ProduceError, KafkaException):
    """A transaction call failed (init, begin, send offsets, commit, abort).

    Also a ``confluent_kafka.KafkaException`` whose ``args[0]`` is librdkafka's ``KafkaError``,
    as confluent-kafka raises it. ``requires_abort``: abort the transaction, then begin
    another; ``retriable``: the same call may succeed if made again; ``fatal``: the producer
    cannot go on (close it, create a new one).
    """

    def __init__(self, operation: str, error: KafkaError) -> None:
        super().__init__(error)
        self.operation = operation
        self.error = error

    @property
    def requires_abort(self) -> bool:
        """Whether the transaction must be aborted (then another begun)."""
        return bool(self.error.txn_requires_abort())

    def __str__(self) -> str:
        if self.error.code() == KafkaError._NOT_CONFIGURED:
            advice = "set transactional.id in the producer's configuration"
        elif self.fatal:
            advice = "the producer cannot continue; close it and create a new one"
        elif self.requires_abort:
            advice = "abort the transaction, then begin another"
        elif self.retriable:
            advice = "the error is transient; the same call may succeed if made again"
        else:
            advice = "see librdkafka's message"
        return f"{self.operation} failed: {self.error.str()} ({self.error.name()}); {advice}."

    def __reduce__(self) -> tuple[type[TransactionError], tuple[object, ...]]:
        return type(self), (self.operation, self.error)


class AdminError(KafkaloopError):
    """An admin operation failed. ``topic`` names what it concerned, ``error`` is librdkafka's."""

    advice = "see the broker's message above"

    def __init__(
        self, message: str, *, topic: str | None = None, error: KafkaError | None = None
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.error = error

    @classmethod
    def from_kafka(cls, error: KafkaError, operation: str, topic: str | None) -> AdminError:
        """The most specific AdminError for librdkafka's `error` about `topic`."""
        kind = _ADMIN_ERRORS.get(error.code(), AdminError)
        subject = f"topic {topic!r}" if topic else "the cluster"
        return kind(
            f"{operation} failed for {subject}: {error.str()} ({error.name()}); {kind.advice}.",
            topic=topic,
            error=error,
        )


class TopicAlreadyExistsError(AdminError):
    """The topic to create exists already."""

    advice = "use it as it is, delete it first, or use ensure_topics() to accept existing topics"


class UnknownTopicError(AdminError):
    """The topic does not exist."""

    advice = "check the name, or create the topic first"


class InvalidReplicationFactorError(AdminError):
    """The replication factor is below 1 or above the number of brokers."""

    advice = "use a replication factor between 1 and the number of live brokers"


class InvalidPartitionsError(AdminError):
    """The partition count is invalid (below 1, or not above the current count when growing)."""

    advice = "partitions can only be added, and a topic needs at least one"


class TopicMismatchError(AdminError):
    """ensure_topics found an existing topic with other partitions or replication."""

    advice = "grow its partitions with create_partitions(), or change the expected spec"


class AdminErrorGroup(ExceptionGroup[AdminError], KafkaloopError):
    """Several topics of one admin call failed; ``exceptions`` holds one AdminError each.

    Handle one kind with ``except* TopicAlreadyExistsError``. ``succeeded`` names the
    topics for which the call did succeed.
    """

    succeeded: list[str]

    def __new__(
        cls, message: str, exceptions: Sequence[AdminError], succeeded: Sequence[str] = ()
    ) -> AdminErrorGroup:
        group = super().__new__(cls, message, exceptions)
        group.succeeded = list(succeeded)
        return group

    def __init__(
        self, message: str, exceptions: Sequence[AdminError], succeeded: Sequence[str] = ()
    ) -> None:
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[AdminError]) -> AdminErrorGroup:  # type: ignore[override]
        return AdminErrorGroup(self.message, excs, self.succeeded)


_ADMIN_ERRORS: dict[int, type[AdminError]] = {
    KafkaError.TOPIC_ALREADY_EXISTS: TopicAlreadyExistsError,
    KafkaError.UNKNOWN_TOPIC_OR_PART: UnknownTopicError,
    KafkaError.UNKNOWN_TOPIC_ID: UnknownTopicError,
    KafkaError.INVALID_REPLICATION_FACTOR: InvalidReplicationFactorError,
    KafkaError.INVALID_PARTITIONS: InvalidPartitionsError,
}


class ConsumerError(KafkaloopError):
    """Consuming failed: librdkafka reported an error, or a record could not be decoded."""

    def __init__(self, message: str, *, error: KafkaError | None = None) -> None:
        super().__init__(message)
        self.error = error


# What to do after a consumer call librdkafka failed, by its error code.
_CONSUMER_ADVICE = {
    KafkaError._UNKNOWN_PARTITION: "the partition is not assigned to this consumer",
    KafkaError._STATE: "the consumer's assignment does not allow it now (incremental_assign() "
    "with an eager assignment strategy, say)",
    KafkaError.UNKNOWN_TOPIC_OR_PART: "no such topic or partition",
    KafkaError._UNKNOWN_TOPIC: "no such topic",
}


class ConsumerCallError(_Facts, ConsumerError, KafkaException):
    """librdkafka failed a consumer call (``seek()``, ``partitions()``, ``commit()``, ...) or
    reported an error while consuming; ``operation`` says which, ``error`` is its KafkaError.

    Also a ``confluent_kafka.KafkaException`` whose ``args[0]`` is that ``KafkaError``, as
    confluent-kafka's own consumer raises it.
    """

    error: KafkaError

    def __init__(self, operation: str, error: KafkaError) -> None:
        super().__init__(operation, error=error)
        self.args = (error,)
        self.operation = operation

    def __str__(self) -> str:
        error = self.error
        advice = _CONSUMER_ADVICE.get(error.code())
        said = f"{self.operation} failed: {error.str()} ({error.name()})"
        return f"{said}; {advice}." if advice else said

    def __reduce__(self) -> tuple[type[ConsumerCallError], tuple[object, ...]]:
        return type(self), (self.operation, self.error)


class DeserializationError(ConsumerError):
    """A key or value deserializer raised; ``topic``, ``partition``, ``offset`` say which record."""

    def __init__(self, message: str, *, topic: str, partition: int, offset: int) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.offset = offset
