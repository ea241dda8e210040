"""Every error kafkaloop raises.

The tree::

    KafkaloopError
    ├── LocalKafkaError               the local broker launcher could not do its job
    │   └── ToolNotFoundError         Java or Maven is missing
    ├── ClientClosedError             the client was used after close()
    │   └── ProducerClosedError
    ├── NoRunningLoopError            a client was created outside a running event loop
    ├── ProduceError                  a message could not be handed to or delivered by Kafka
    │   ├── DeliveryError             Kafka reported a failed delivery (also a KafkaException)
    │   └── QueueFullError            librdkafka's local queue stayed full

Each message says what happened and what to do next.
"""

from __future__ import annotations


class KafkaloopError(Exception):
    """Base class of every error kafkaloop raises."""


class LocalKafkaError(KafkaloopError):
    """The local Kafka launcher failed: resolving, formatting, starting or stopping a broker."""


class ToolNotFoundError(LocalKafkaError):
    """A program the local launcher needs (Java or Maven) is not installed."""


class ClientClosedError(KafkaloopError):
    """A client was used after it was closed."""


class NoRunningLoopError(KafkaloopError, RuntimeError):
    """A client that needs the running event loop was created outside one."""
