"""The design note's FastAPI app, re-implemented faithfully over bench.baseline's producer.

    .venv/bin/python -m bench.apps.baseline_app --port 8001

Five endpoints as in the note's companion code: ``/items1`` awaits the delivery, ``/items2``
has its outcome dispatched to a callback on the event loop, ``/items3`` to a callback on the
poll thread, ``/items4`` is fire-and-forget and ``/items5`` does nothing. One producer, created
at startup (when the loop exists) and closed at shutdown, with librdkafka's defaults. The
topic is ``items`` unless ``BENCH_ITEMS_TOPIC`` says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from confluent_kafka import KafkaException
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from bench.apps import serve
from bench.baseline import BaselineProducer

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
TOPIC = os.environ.get("BENCH_ITEMS_TOPIC", "items")
log = logging.getLogger("bench.baseline_app")

Callback = Callable[[Any, Any], None]


class NoteProducer(BaselineProducer):
    """The note's producer with its two out-of-band ways to learn a delivery's outcome."""

    def produce2(
        self, topic: str, value: str | bytes, on_delivery: Callback
    ) -> asyncio.Future[Any]:
        """Complete a future and call `on_delivery` on the loop: the caller need not await."""
        result = self._loop.create_future()

        def ack(err: Any, msg: Any) -> None:
            if err:
                self._loop.call_soon_threadsafe(result.set_exception, KafkaException(err))
            else:
                self._loop.call_soon_threadsafe(result.set_result, msg)
            self._loop.call_soon_threadsafe(on_delivery, err, msg)

        self._producer.produce(topic, value, on_delivery=ack)
        return result

    def produce_on_poll_thread(
        self, topic: str, value: str | bytes, on_delivery: Callback | None = None
    ) -> None:
        """Hand the message over; `on_delivery` (if any) runs on the poll thread."""
        if on_delivery is None:
            self._producer.produce(topic, value)
        else:
            self._producer.produce(topic, value, on_delivery=on_delivery)


class Item(BaseModel):
    name: str


producer: NoteProducer | None = None


def _producer() -> NoteProducer:
    assert producer is not None, "the app's startup creates the producer"
    return producer


def ack(err: Any, msg: Any) -> None:
    # As the note advises: do work only for failures.
    if err:
        log.warning("Item not delivered: %s", err)


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    # The note's startup and shutdown events, written as the lifespan FastAPI now asks for
    # (on_event is deprecated); the same two steps at the same moments.
    global producer
    producer = NoteProducer({"bootstrap.servers": BOOTSTRAP})
    try:
        yield
    finally:
        producer.close()


app = FastAPI(lifespan=lifespan)


@app.post("/items1")
async def create_item1(item: Item) -> dict[str, Any]:
    try:
        result = await _producer().produce(TOPIC, item.name)  # type: ignore[arg-type]
        return {"timestamp": result.timestamp()}
    except KafkaException as ex:
        raise HTTPException(status_code=500, detail=ex.args[0].str()) from ex


@app.post("/items2")
async def create_item2(item: Item) -> dict[str, Any]:
    try:
        _producer().produce2(TOPIC, item.name, on_delivery=ack)
        return {"timestamp": time.time()}
    except KafkaException as ex:
        raise HTTPException(status_code=500, detail=ex.args[0].str()) from ex


@app.post("/items3")
async def create_item3(item: Item) -> dict[str, Any]:
    try:
        _producer().produce_on_poll_thread(TOPIC, item.name, on_delivery=ack)
        return {"timestamp": time.time()}
    except KafkaException as ex:
        raise HTTPException(status_code=500, detail=ex.args[0].str()) from ex


@app.post("/items4")
async def create_item4(item: Item) -> dict[str, Any]:
    try:
        _producer().produce_on_poll_thread(TOPIC, item.name)
        return {"timestamp": time.time()}
    except KafkaException as ex:
        raise HTTPException(status_code=500, detail=ex.args[0].str()) from ex


@app.post("/items5")
async def create_item5(item: Item) -> dict[str, Any]:
    return {"timestamp": time.time()}


if __name__ == "__main__":
    serve(app, __doc__)
