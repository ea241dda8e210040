"""The reference web service: the design note's app, done properly (``kafkaloop serve``)."""

from kafkaloop.service.app import create_app

__all__ = ["create_app"]
