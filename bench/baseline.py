"""The design note's asyncio producer, re-implemented faithfully as the benchmarks' baseline.

One poll thread calling ``poll(0.1)``; per message a closure that completes an asyncio future
through ``call_soon_threadsafe``, i.e. one loop wake-up per delivery. Resolves with the
confluent-kafka ``Message``.
"""

from __future__ import annotations

import asyncio
from threading import Thread
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaException


class BaselineProducer:
    """The note's AIOProducer: produce() returns a future completed from the poll thread."""

    def __init__(self, configs: dict[str, Any], loop: asyncio.AbstractEventLoop | None = None):
        self._loop = loop or asyncio.get_running_loop()
        self._producer = confluent_kafka.Producer(configs)
        self._cancelled = False
        self._poll_thread = Thread(target=self._poll_loop)
        self._poll_thread.start()

    def _poll_loop(self) -> None:
        while not self._cancelled:
            self._producer.poll(0.1)

    def close(self) -> None:
        self._cancelled = True
        self._poll_thread.join()

    def produce(self, topic: str, value: bytes) -> asyncio.Future[Any]:
        result = self._loop.create_future()

        def ack(err: Any, msg: Any) -> None:
            if err:
                self._loop.call_soon_threadsafe(result.set_exception, KafkaException(err))
            else:
                self._loop.call_soon_threadsafe(result.set_result, msg)

        self._producer.produce(topic, value, on_delivery=ack)
        return result
