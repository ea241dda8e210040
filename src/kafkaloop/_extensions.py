"""kafkaloop's optional C extensions and their pure-Python twins.

Each C extension (``_records.c``, ``_handoff.c``) has a twin in pure Python (``_pyrecords.py``,
``_pyhandoff.py``) with the same names and behaviour. The extension is used when it was built
(a C compiler at install time), unless ``KAFKALOOP_NO_EXTENSIONS`` is set to anything but 0.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

DISABLED = os.environ.get("KAFKALOOP_NO_EXTENSIONS", "") not in ("", "0")
"""Whether KAFKALOOP_NO_EXTENSIONS asks for the pure-Python twins."""


def pick(native: str, twin: str) -> tuple[ModuleType, bool]:
    """The module `native` (a C extension) if it can be used, else `twin`; and which it is."""
    if not DISABLED:
        try:
            return importlib.import_module(f"kafkaloop.{native}"), True
        except ImportError:  # built without a C compiler
            pass
    return importlib.import_module(f"kafkaloop.{twin}"), False
