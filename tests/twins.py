"""One test, run against a C extension and against its pure-Python twin (see _extensions.py)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest

from kafkaloop import _extensions


def twins(native: str, twin: str) -> tuple[Any, list[Any]]:
    """The extension `native` (None if it is not built), and parameters for both: "c", "python"."""
    try:
        extension: ModuleType | None = importlib.import_module(f"kafkaloop.{native}")
    except ImportError:  # test_the_c_extension_is_in_use says why
        extension = None
    return extension, [
        pytest.param(
            extension,
            id="c",
            marks=pytest.mark.skipif(extension is None, reason="not built"),
        ),
        pytest.param(importlib.import_module(f"kafkaloop.{twin}"), id="python"),
    ]


def skip_if_disabled() -> None:
    """Skip a test of the extension being in use when KAFKALOOP_NO_EXTENSIONS turned it off."""
    if _extensions.DISABLED:
        pytest.skip("KAFKALOOP_NO_EXTENSIONS is set")


def skip_unless_the_loop_serves_reports() -> None:
    """Skip a test of the loop serving delivery reports where a producer cannot have that
    (librdkafka's queue cannot be watched: KAFKALOOP_NO_EXTENSIONS, another platform)."""
    from confluent_kafka import Producer

    from kafkaloop import _rdkafka

    watch = _rdkafka.watch_main_queue(Producer({}))
    if watch is None:
        pytest.skip("librdkafka's queue cannot be watched here (KAFKALOOP_NO_EXTENSIONS?)")
    watch.close()
