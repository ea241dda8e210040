"""The awaited and no-op endpoints over FastStream's Kafka broker (aiokafka) in a FastAPI app.

    .venv/bin/python -m bench.apps.faststream_app --port 8002

``/items1`` publishes the item's name and waits for Kafka's acknowledgement (FastStream's
``publish`` confirms unless told ``no_confirm=True``); ``/items5`` does nothing. The app's
lifespan starts and stops the broker connection. The topic is ``items`` unless
``BENCH_ITEMS_TOPIC`` says otherwise.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from aiokafka.errors import KafkaError
from fastapi import FastAPI, HTTPException
from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from bench.apps import serve

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
TOPIC = os.environ.get("BENCH_ITEMS_TOPIC", "items")

# acks="all" as librdkafka's default (aiokafka's is 1), so every app waits for the same
# acknowledgement; everything else is FastStream's and aiokafka's default.
broker = KafkaBroker(BOOTSTRAP, acks="all")


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    # Not faststream.kafka.fastapi.KafkaRouter: that integration is deprecated (moved to a
    # package of its own); a lifespan around the broker is all it would add here.
    await broker.start()
    try:
        yield
    finally:
        await broker.stop()


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str


@app.post("/items1")
async def create_item1(item: Item) -> dict[str, Any]:
    try:
        result = await broker.publish(item.name, TOPIC)
    except KafkaError as ex:
        raise HTTPException(status_code=500, detail=str(ex)) from ex
    return {"timestamp": result.timestamp}


@app.post("/items5")
async def create_item5(item: Item) -> dict[str, Any]:
    return {"timestamp": time.time()}


if __name__ == "__main__":
    serve(app, __doc__)
