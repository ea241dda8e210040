"""The optional C extensions; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # optional: without a C compiler the package still installs, and uses each one's
        # pure-Python twin (src/kafkaloop/_extensions.py).
        Extension(
            f"kafkaloop.{name}",
            [f"src/kafkaloop/{name}.c"],
            depends=["src/kafkaloop/_message.h"],  # shared by both
            optional=True,
        )
        for name in ("_records", "_handoff")
    ]
)
