"""The optional C extension; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kafkaloop._records",
            ["src/kafkaloop/_records.c"],
            # No compiler: the package still installs, with records in pure Python.
            optional=True,
        )
    ]
)
