"""Settings from environment variables (pydantic-settings), for the reference service and yours.

KAFKA_BOOTSTRAP_SERVERS=broker1:9092,broker2:9092
KAFKALOOP_PRODUCER_CONFIG='{"acks": "all", "compression.type": "lz4"}'
KAFKALOOP_REQUEST_DEADLINE=5
"""

from __future__ import annotations

import os
from typing import Any, Self

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kafkaloop import _consumer, _producer
from kafkaloop._config import check_config, config_flag, redact

__all__ = [
    "BOOTSTRAP_VARIABLES",
    "FIRE_AND_FORGET_LINGER_MS",
    "KafkaSettings",
    "ServiceSettings",
    "bootstrap_from_env",
]

BOOTSTRAP_VARIABLES = ("KAFKA_BOOTSTRAP_SERVERS", "KAFKALOOP_BOOTSTRAP_SERVERS")
"""Where the environment names the cluster, the first one set (and not empty) winning."""

FIRE_AND_FORGET_LINGER_MS = 20
"""The fire-and-forget producer's ``linger.ms``: fuller batches, fewer per second, and nobody
waits for them (bench/README.md, how long the producer lingers)."""


class KafkaSettings(BaseSettings):
    """Where the cluster is and how to talk to it: the part every kafkaloop app needs."""

    # An empty variable counts as unset (as a shell's "${X:-default}" would have it).
    model_config = SettingsConfigDict(
        env_prefix="KAFKALOOP_", extra="ignore", populate_by_name=True, env_ignore_empty=True
    )

    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices(*BOOTSTRAP_VARIABLES),
        description="The cluster: host:port[,host:port...]",
    )
    client_config: dict[str, Any] = Field(
        default_factory=dict,
        description="librdkafka properties for every client (JSON), e.g. security settings",
    )
    producer_config: dict[str, Any] = Field(
        default_factory=dict, description="librdkafka properties for the producer only (JSON)"
    )
    producer_poll_thread: bool = Field(
        False,
        description="Serve the producer's delivery reports on a thread of their own, not on "
        "the event loop (AIOProducer's poll_thread)",
    )
    fire_and_forget_producer: bool = Field(
        False,
        description="Send fire-and-forget messages through a producer of their own that reports "
        "failed deliveries only (KafkaClients.fire_and_forget): a delivered message then costs "
        "the event loop no Python call. false: through the producer (the reference service: "
        "true)",
    )
    fire_and_forget_config: dict[str, Any] = Field(
        default_factory=dict,
        description="librdkafka properties for the fire-and-forget producer (JSON), over the "
        f'producer\'s and {{"linger.ms": {FIRE_AND_FORGET_LINGER_MS}}}',
    )
    consumer_config: dict[str, Any] = Field(
        default_factory=dict, description="librdkafka properties for consumers only (JSON)"
    )

    def producer(self) -> dict[str, Any]:
        """The producer's librdkafka configuration."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            **self.client_config,
            **self.producer_config,
        }

    def fire_and_forget(self) -> dict[str, Any]:
        """The fire-and-forget producer's librdkafka configuration: the producer's, lingering
        longer (nobody waits for these messages), then ``fire_and_forget_config``; only failed
        deliveries are reported. It takes no ``transactional.id`` of the producer's (two
        producers with one id fence each other) and names itself apart in ``client.id``."""
        producer = self.producer()
        producer.pop("transactional.id", None)
        return {
            **producer,
            "client.id": f"{producer.get('client.id', 'rdkafka')}-fire-and-forget",
            "linger.ms": FIRE_AND_FORGET_LINGER_MS,
            **self.fire_and_forget_config,
            "delivery.report.only.error": True,
        }

    def consumer(self, **extra: Any) -> dict[str, Any]:
        """A consumer's librdkafka configuration."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            **self.client_config,
            **self.consumer_config,
            **extra,
        }

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        for server in value.split(","):
            address = server.strip().rpartition("://")[2]  # (a listener's scheme may lead)
            host, colon, port = address.rpartition(":")
            if address.endswith("]") or not colon:  # "[::1]", "kafka": librdkafka's port
                host, port = address, "9092"
            bracketed = host.startswith("[") and host.endswith("]")
            if not host or (":" in host and not bracketed) or not port.isdigit():
                port = "0"
            if not 0 < int(port) < 65536:
                raise ValueError(
                    f"{server.strip()!r} is not host:port (a port is a number, 1-65535); "
                    "several are separated by commas"
                )
        return value

    def admin(self) -> dict[str, Any]:
        """The admin client's librdkafka configuration."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.client_config}

    def check(self, *, consumers: bool = True) -> None:
        """Have librdkafka check each client configuration these settings make, as kafkaloop's
        clients would give it (the consumers' only when `consumers`), or raise
        :class:`ConfigurationError` naming the client and the variables its configuration
        comes from: what librdkafka refuses, said before anything starts."""
        common = "KAFKALOOP_CLIENT_CONFIG"
        producers = f"{common}, KAFKALOOP_PRODUCER_CONFIG"
        config = self.producer()
        check_config(Producer, _producer.librdkafka_config(config), config, "producer", producers)
        if self.fire_and_forget_producer:
            config = self.fire_and_forget()
            check_config(
                Producer,
                _producer.librdkafka_config(config),
                config,
                "fire-and-forget producer",
                f"{producers}, KAFKALOOP_FIRE_AND_FORGET_CONFIG",
            )
        check_config(AdminClient, self.admin(), self.admin(), "admin client", common)
        if consumers:
            config = self.consumer(**{"group.id": "kafkaloop-config-check"})
            check_config(
                Consumer,
                _consumer.librdkafka_config(config),
                config,
                "consumer",
                f"{common}, KAFKALOOP_CONSUMER_CONFIG",
            )

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact(value) if isinstance(value, dict) else value


class ServiceSettings(KafkaSettings):
    """The reference service's settings (``kafkaloop serve``)."""

    fire_and_forget_producer: bool = Field(
        True,
        description="/items4 goes through a producer of its own that reports failed deliveries "
        "only (KafkaClients.fire_and_forget). false: through the producer",
    )
    items_topic: str = Field("items", description="Where POSTed items go, keyed by name")
    topic_partitions: int = Field(3, ge=1, description="Partitions of topics the service creates")
    topic_replication: int = Field(
        -1, description="Replication of topics the service creates (-1: the broker's default)"
    )
    request_deadline: float = Field(
        5.0, gt=0, description="Seconds an awaited produce may take before the answer is 503"
    )
    max_body_bytes: int = Field(1024 * 1024, gt=0, description="Larger bodies get 413")
    max_name_length: int = Field(256, ge=1, description="Longest item name accepted")
    client_queue_size: int = Field(
        256, ge=1, description="Items buffered per WebSocket/SSE client before drops begin"
    )
    slow_client_timeout: float = Field(
        10.0, gt=0, description="Seconds a client may stay full before it is disconnected"
    )
    live_push: bool = Field(
        True, description="Push consumed items to WebSocket/SSE clients (a consumer per process)"
    )
    item_cache: bool = Field(
        True, description="Keep the item counts cache (a consumer per process reading the topic)"
    )
    item_cache_max_names: int = Field(
        100_000,
        ge=1,
        description="Names the item cache holds at most; items of other names are then left "
        "out (counted in kafka_cache_skipped_total), so anyone posting new names cannot grow it",
    )
    gc_tuning: bool = Field(
        True,
        description="Freeze start-up objects out of the garbage collector's walks and collect "
        "young objects less often while serving (kafkaloop.fastapi.serving_gc)",
    )
    write_batching: bool = Field(
        True,
        description="Write each connection's HTTP output once per event-loop turn, head and "
        "body together (kafkaloop.write_batching; needs httptools)",
    )
    opentelemetry: bool | None = Field(
        None,
        description="FastAPI's OpenTelemetry instrumentation of each request. Unset: on if an "
        "OpenTelemetry provider is set up when the app is made (or "
        "FASTAPI_OTEL_AUTO_CONFIGURE=true), else off, so requests skip FastAPI's check of the "
        "providers (kafkaloop.fastapi.telemetry_options); one set up later is not seen, and "
        "start-up logs a warning",
    )
    request_concurrency: int = Field(
        32,
        ge=0,
        description="HTTP requests let into the app at once (more while the event loop would "
        "idle); the rest queue in arrival order (kafkaloop.fastapi.RequestQueue). 0: no queue",
    )
    max_queued_requests: int = Field(
        10_000, ge=0, description="Queued HTTP requests beyond which new ones get 503"
    )
    shutdown_timeout: float = Field(
        30.0, gt=0, description="Seconds to stop: half to finish requests, half to flush"
    )

    @model_validator(mode="after")
    def _every_delivery_reported(self) -> Self:
        # /items1 awaits each delivery: its producer must report successes too.
        if config_flag(self.producer(), "delivery.report.only.error", False):
            raise ValueError(
                "the service's producer must report every delivery (its awaited endpoint waits "
                "for them): take delivery.report.only.error out of KAFKALOOP_PRODUCER_CONFIG / "
                "KAFKALOOP_CLIENT_CONFIG (the fire-and-forget producer has it already)"
            )
        return self

    @model_validator(mode="after")
    def _requests_finish_before_the_stop(self) -> Self:
        # Half the stop is for requests in flight: an awaited one may take the whole deadline.
        if self.request_deadline >= self.shutdown_timeout / 2:
            raise ValueError(
                f"KAFKALOOP_REQUEST_DEADLINE ({self.request_deadline:g}s) must be under half of "
                f"KAFKALOOP_SHUTDOWN_TIMEOUT ({self.shutdown_timeout:g}s), the time requests in "
                "flight get to finish when the service stops (else they are cut off with a 500)"
            )
        return self

    @field_validator("items_topic")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        if not value or len(value) > 249 or not all(c.isalnum() or c in "._-" for c in value):
            raise ValueError(
                "a Kafka topic name is 1-249 characters of ASCII letters, digits, '.', '_', '-'"
            )
        return value


def bootstrap_from_env() -> str | None:
    """The cluster the environment names (``BOOTSTRAP_VARIABLES``), or None: then the
    command at hand starts a local broker (``make run``, ``kafkaloop smoke``, the tests)."""
    for variable in BOOTSTRAP_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    return None
