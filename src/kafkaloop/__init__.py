"""kafkaloop: Apache Kafka as a first-class citizen of asyncio web applications."""

from kafkaloop._exceptions import (
    ClientClosedError,
    KafkaloopError,
    LocalKafkaError,
    NoRunningLoopError,
    ToolNotFoundError,
)

__version__ = "0.1.0"

__all__ = [
    "ClientClosedError",
    "KafkaloopError",
    "LocalKafkaError",
    "NoRunningLoopError",
    "ToolNotFoundError",
]
