"""Types of the C extension ``kafkaloop._handoff`` (see _handoff.c; _pyhandoff.py is its
pure-Python twin)."""

import asyncio
from collections.abc import Callable, Sized
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message

class Loop(Protocol):
    """What PendingCalls asks of the loop it hands calls to (an asyncio loop, or a thread)."""

    def call_soon_threadsafe(self, callback: Callable[[], None], /) -> object: ...
    def is_closed(self) -> bool: ...

class PendingCalls:
    def __init__(self, loop: Loop, on_error: Callable[[BaseException], object]) -> None: ...
    def __len__(self) -> int: ...
    def call_soon(self, *call: Any) -> None: ...
    def drain(self) -> None: ...
    def serve(self, func: Callable[..., object], *args: Any) -> None: ...

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
    def metadata(self, msg: Message) -> tuple[Any, ...]: ...

class AwaitedProduce:
    produced: int
    open: bool
    def __init__(
        self,
        produce: Callable[..., None],
        create_future: Callable[[], asyncio.Future[Any]],
        call_soon: Callable[..., None],
        settle: Settle,
        waiting: Sized,
        fallback: Callable[..., asyncio.Future[Any]],
        on_error: Callable[..., asyncio.Future[Any]],
    ) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> asyncio.Future[Any]: ...

class BatchSettle:
    next: int
    remaining: int
    def __init__(
        self,
        size: int,
        call_soon: Callable[..., None],
        make_error: Callable[[KafkaError, Message | None], object],
        on_done: Callable[[list[Any]], object],
        settle: Settle,
    ) -> None: ...
    def produce(
        self,
        produce: Callable[..., None],
        topic: str,
        items: list[Any],
        start: int,
        headers: object,
    ) -> None: ...
    def __call__(self, index: int, err: KafkaError | None, msg: Message | None) -> None: ...
