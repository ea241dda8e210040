"""kafkaloop's optional C extensions and their pure-Python twins.

Each C extension (``_records.c``, ``_handoff.c``) has a twin in pure Python (``_pyrecords.py``,
``_pyhandoff.py``) with the same names and behaviour, only slower. An extension is used when it
was built (a C compiler at install time) and loads, unless ``KAFKALOOP_NO_EXTENSIONS`` is true
(1, true, yes or on). That setting also keeps kafkaloop from calling librdkafka itself
(``_rdkafka.py``): producers then use a poll thread.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

DISABLED = os.environ.get("KAFKALOOP_NO_EXTENSIONS", "").strip().lower() in (
    "1",
    "true",
    "yes",
    "on",
)
"""Whether KAFKALOOP_NO_EXTENSIONS asks for the pure-Python twins."""


def pick(native: str, twin: str) -> tuple[ModuleType, bool]:
    """The module `native` (a C extension) if it can be used, else `twin`; and which it is."""
    if not DISABLED:
        try:
            return importlib.import_module(f"kafkaloop.{native}"), True
        except ImportError:  # built without a C compiler
            pass
        except Exception as exc:  # built, but it does not load here (another confluent-kafka?)
            logging.getLogger("kafkaloop").warning(
                "kafkaloop.%s did not load (%s: %s); using its pure-Python twin",
                native,
                type(exc).__name__,
                exc,
            )
    return importlib.import_module(f"kafkaloop.{twin}"), False
