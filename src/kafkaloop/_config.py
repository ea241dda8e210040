"""librdkafka configuration as kafkaloop takes it: validated early, secrets never shown."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from confluent_kafka import KafkaException

from kafkaloop._exceptions import ConfigurationError
from kafkaloop._logging import librdkafka_logger

_SECRET = re.compile(
    r"password|secret|token|credentials|oauthbearer\.config|\.pem$|key$", re.IGNORECASE
)
REDACTED = "***"

C = TypeVar("C")


def is_secret(key: str) -> bool:
    """Whether a configuration property holds a credential (never logged or shown)."""
    return bool(_SECRET.search(key)) and key not in ("ssl.key.location", "partition.key")


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `config` with every credential replaced by ``***``."""
    return {key: REDACTED if is_secret(key) else value for key, value in config.items()}


def configuration_error(
    exc: KafkaException | ValueError | TypeError,
    config: Mapping[str, Any],
    client: str,
    source: str = "",
) -> ConfigurationError:
    """A :class:`ConfigurationError` for librdkafka's refusal of a `client`'s configuration
    (made from `source`, when named), with any secret scrubbed."""
    message = str(exc.args[0].str() if isinstance(exc, KafkaException) else exc).strip()
    for key, value in config.items():
        if is_secret(key) and isinstance(value, str) and value:
            message = message.replace(value, REDACTED)
    return ConfigurationError(
        f"librdkafka refused the {client} configuration"
        f"{f' (from {source})' if source else ''}: {message.rstrip('.')}. "
        "Check the property names and values against librdkafka's CONFIGURATION.md."
    )


def make_client(
    make: Callable[[dict[str, Any]], C],
    conf: dict[str, Any],
    config: Mapping[str, Any],
    client: str,
    source: str = "",
) -> C:
    """`make(conf)`, a confluent-kafka client of what kafkaloop gives librdkafka for the
    user's `config`; what librdkafka refuses raises :class:`ConfigurationError` naming
    `client` (and `source`), with the secrets of `config` scrubbed."""
    try:
        return make(conf)
    except (KafkaException, ValueError, TypeError) as exc:
        raise configuration_error(exc, config, client, source) from None


def check_config(
    make: Callable[[dict[str, Any]], object],
    conf: Mapping[str, Any],
    config: Mapping[str, Any],
    client: str,
    source: str = "",
) -> None:
    """Have librdkafka check `conf`, what a kafkaloop client gives it for `config`: `make` (a
    confluent-kafka client class) makes a client of it without its bootstrap servers (it
    connects nowhere), closed and dropped at once. What librdkafka refuses (a property it does
    not know, a bad value, properties that conflict) raises :class:`ConfigurationError` naming
    `client` and `source`. Its warnings are left to the client made afterwards: only errors
    are logged."""
    checked = {"logger": librdkafka_logger, **conf, "log_level": 3}
    checked.pop("bootstrap.servers", None)
    checked.pop("metadata.broker.list", None)  # (its other name)
    made = make_client(make, checked, config, client, source)
    close = getattr(made, "close", None)
    if callable(close):
        close()


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
