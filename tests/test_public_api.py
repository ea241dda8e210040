"""The public surface is exactly what __all__ says, and every error is in one tree."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import kafkaloop
from kafkaloop import KafkaloopError


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(kafkaloop) if not name.startswith("_")}
    modules = {name for name in public if inspect.ismodule(getattr(kafkaloop, name))}

    assert sorted(kafkaloop.__all__) == kafkaloop.__all__
    assert set(kafkaloop.__all__) == public - modules


def test_every_exported_exception_is_a_kafkaloop_error() -> None:
    exceptions = [
        obj
        for obj in vars(kafkaloop).values()
        if inspect.isclass(obj) and issubclass(obj, BaseException)
    ]

    assert exceptions
    assert all(issubclass(exc, KafkaloopError) for exc in exceptions)


def test_every_exception_a_public_module_exports_is_a_kafkaloop_error() -> None:
    exceptions = {}
    for info in pkgutil.iter_modules(kafkaloop.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"kafkaloop.{info.name}")
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                exceptions[f"kafkaloop.{info.name}.{name}"] = obj

    assert "kafkaloop.push.SlowClientError" in exceptions  # the walk reaches the submodules
    assert [name for name, exc in exceptions.items() if not issubclass(exc, KafkaloopError)] == []


def test_every_public_name_has_a_docstring() -> None:
    for name in kafkaloop.__all__:
        obj = getattr(kafkaloop, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, name
