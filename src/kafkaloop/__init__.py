"""kafkaloop: Apache Kafka as a first-class citizen of asyncio web applications."""

from kafkaloop._exceptions import (
    ClientClosedError,
    ConfigurationError,
    DeliveryError,
    KafkaloopError,
    LocalKafkaError,
    NoRunningLoopError,
    Persistence,
    ProduceError,
    ProducerClosedError,
    QueueFullError,
    ToolNotFoundError,
)
from kafkaloop._models import ProducerMetrics, RecordMetadata
from kafkaloop._producer import AIOProducer, DeliveryCallback, Headers

__version__ = "0.1.0"

__all__ = [
    "AIOProducer",
    "ClientClosedError",
    "ConfigurationError",
    "DeliveryCallback",
    "DeliveryError",
    "Headers",
    "KafkaloopError",
    "LocalKafkaError",
    "NoRunningLoopError",
    "Persistence",
    "ProduceError",
    "ProducerClosedError",
    "ProducerMetrics",
    "QueueFullError",
    "RecordMetadata",
    "ToolNotFoundError",
]
