"""librdkafka configuration as kafkaloop takes it: validated early, secrets never shown."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from kafkaloop._exceptions import ConfigurationError
from kafkaloop._logging import librdkafka_logger

_SECRET = re.compile(
    r"password|secret|token|credentials|oauthbearer\.config|\.pem$|key$", re.IGNORECASE
)
REDACTED = "***"


def is_secret(key: str) -> bool:
    """Whether a configuration property holds a credential (never logged or shown)."""
    return bool(_SECRET.search(key)) and key not in ("ssl.key.location", "partition.key")


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `config` with every credential replaced by ``***``."""
    return {key: REDACTED if is_secret(key) else value for key, value in config.items()}


def configuration_error(
    exc: KafkaException | ValueError | TypeError, config: Mapping[str, Any], client: str
) -> ConfigurationError:
    """A :class:`ConfigurationError` for librdkafka's refusal, with any secret scrubbed."""
    message = str(exc.args[0].str() if isinstance(exc, KafkaException) else exc)
    for key, value in config.items():
        if is_secret(key) and isinstance(value, str) and value:
            message = message.replace(value, REDACTED)
    return ConfigurationError(
        f"librdkafka refused the {client} configuration: {message}. "
        "Check the property names and values against librdkafka's CONFIGURATION.md."
    )


def check_config(
    config: Mapping[str, Any], client: Literal["producer", "consumer", "admin"], what: str = ""
) -> None:
    """Have librdkafka check `config` for a `client`, or raise :class:`ConfigurationError`
    naming it `what` (by default its kind): a property librdkafka does not know, a bad value,
    properties that conflict. It makes the client and destroys it at once, before any
    connection is up, so a command can refuse a configuration before it starts anything."""
    conf: dict[str, Any] = {"logger": librdkafka_logger, **config}
    try:
        if client == "producer":
            Producer(conf)
        elif client == "consumer":
            conf.setdefault("group.id", "kafkaloop-config-check")
            Consumer(conf).close()
        else:
            AdminClient(conf)
    except (KafkaException, ValueError, TypeError) as exc:
        raise configuration_error(exc, config, what or client) from None


_TRUE = frozenset({"true", "t", "1"})
_FALSE = frozenset({"false", "f", "0"})


def config_flag(config: Mapping[str, Any], key: str, default: bool) -> bool:
    """A boolean property kafkaloop reads itself, given as librdkafka takes one: a bool or
    ``"true"``/``"false"`` (as a JSON config from the environment gives it), never the
    truthiness of a string."""
    value = config.get(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(f"{key} must be true or false, not {value!r}")
