"""Types of the C extension ``kafkaloop._handoff`` (see _handoff.c; _pyhandoff.py is its
pure-Python twin)."""

import asyncio
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message

class PendingCalls:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_error: Callable[[BaseException], object]
    ) -> None: ...
    def __len__(self) -> int: ...
    def call_soon(self, *call: Any) -> None: ...
    def drain(self) -> None: ...

class Settle:
    delivered: int
    room_wanted: bool
    def __init__(
        self,
        metadata_type: type[tuple[Any, ...]],
        on_failure: Callable[[asyncio.Future[Any], KafkaError, Message], object],
        on_room: Callable[[], object],
    ) -> None: ...
    def __call__(
        self, future: asyncio.Future[Any], err: KafkaError | None, msg: Message
    ) -> None: ...
