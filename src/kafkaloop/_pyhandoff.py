"""The thread-to-loop handoff's hot path in pure Python: what kafkaloop uses when its C
extension ``_handoff.c`` is not built, or when ``KAFKALOOP_NO_EXTENSIONS`` is set. The same
names and behaviour, documented there; only slower. Only _bridge.py and _producer.py use it."""

from __future__ import annotations

import asyncio
import collections
import functools
import threading
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, Message

from kafkaloop._logging import logger

__all__ = ["BatchSettle", "PendingCalls", "Settle"]

_new_tuple = tuple.__new__


class Loop(Protocol):
    """What PendingCalls asks of the loop it hands calls to (an asyncio loop, or a thread)."""

    def call_soon_threadsafe(self, callback: Callable[[], None], /) -> object: ...
    def is_closed(self) -> bool: ...


class PendingCalls:
    """Calls queued for the event loop, run in batches: one wake-up per batch."""

    def __init__(self, loop: Loop, on_error: Callable[[BaseException], object]) -> None:
        self._loop = loop
        self._on_error = on_error
        # deque.append and popleft are atomic, so callers on other threads need no lock.
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._scheduled = False
        self._serving: int | None = None  # the thread inside serve()
        self._interrupted: BaseException | None = None  # held back inside serve()

    def __len__(self) -> int:
        return len(self._queue)

    def call_soon(self, *call: Any) -> None:
        """Queue ``callback(*args)``, given ``call = (callback, *args)``, from any thread."""
        if self._serving == threading.get_ident():  # inside serve(), on the loop: run it now
            self._run(call)
            return
        self._queue.append(call)
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self.drain)
            except BaseException as exc:
                self._scheduled = False
                if isinstance(exc, RuntimeError) and self._loop.is_closed():
                    # Nothing will ever run on a closed loop: drop what waits for it.
                    self._queue.clear()
                    return
                raise

    def drain(self) -> None:
        """On the loop: run every call queued so far."""
        # Clear the flag first: a call queued while draining schedules the next drain.
        self._scheduled = False
        queue = self._queue
        popleft = queue.popleft
        for _ in range(len(queue)):
            call = popleft()
            try:
                if len(call) == 4:  # a delivery report: (settle, future, err, msg)
                    callback, a, b, c = call
                    callback(a, b, c)
                else:
                    call[0](*call[1:])
            except (KeyboardInterrupt, SystemExit):
                # Stop, as asyncio does for these; the calls not yet run wait for a drain.
                if queue and not self._scheduled:
                    self._scheduled = True
                    self._loop.call_soon_threadsafe(self.drain)
                raise
            except BaseException as exc:  # a CancelledError too: reported, the rest run
                self._report(exc)

    def _run(self, call: tuple[Any, ...]) -> None:
        try:
            call[0](*call[1:])
        except (KeyboardInterrupt, SystemExit) as exc:
            # Not into librdkafka's callback: serve() raises it once func returns; the calls
            # from here on queue.
            self._interrupted = self._interrupted or exc
            self._serving = None
        except BaseException as exc:  # a CancelledError too: reported
            self._report(exc)

    def _report(self, exc: BaseException) -> None:
        try:
            self._on_error(exc)
        except BaseException as failure:  # logged (the C code: unraisable); the drain goes on
            logger.error("on_error %r raised", self._on_error, exc_info=failure)

    def serve(self, func: Callable[..., object], *args: Any) -> None:
        """On the loop: ``func(*args)``. What was queued runs first; calls made on this thread
        meanwhile run at once; calls from other threads wait, without a wake-up, for a drain
        right after."""
        if self._serving is not None:
            raise RuntimeError("serve() is already running")
        self.drain()
        self._scheduled = True
        self._serving = threading.get_ident()
        try:
            func(*args)
        finally:
            self._serving = None
            interrupted, self._interrupted = self._interrupted, None
            if interrupted is not None:  # stop; what queued waits for a drain, scheduled now
                self._scheduled = False
                if self._queue:
                    self._scheduled = True
                    self._loop.call_soon_threadsafe(self.drain)
                raise interrupted
            self.drain()


class Settle:
    """Settles awaited produces from their delivery reports: ``settle(future, err, msg)``."""

    def __init__(
        self,
        metadata_type: type[tuple[Any, ...]],
        on_failure: Callable[[asyncio.Future[Any], KafkaError, Message], object],
        on_room: Callable[[], object],
    ) -> None:
        self._metadata_type = metadata_type
        self._on_failure = on_failure
        self._on_room = on_room
        self.delivered = 0
        """Deliveries counted on the loop: those it settled, and what its owner adds."""
        self.room_wanted = False
        """When true, on_room() is called after each settled delivery."""

    def __call__(self, future: asyncio.Future[Any], err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._on_failure(future, err, msg)
        else:
            self.delivered += 1
            if not future.done():
                future.set_result(self.metadata(msg))
        if self.room_wanted:
            self._on_room()

    def metadata(self, msg: Message) -> tuple[Any, ...]:
        """metadata_type(topic, partition, offset, timestamp or None) of a delivered message
        (a partition or offset librdkafka does not know, as with acks=0, is -1)."""
        ts_type, ts = msg.timestamp()
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        return _new_tuple(
            self._metadata_type,
            (
                "" if topic is None else topic,  # not known (acks=0): "" or -1
                -1 if partition is None else partition,
                -1 if offset is None else offset,
                None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts,
            ),
        )


class BatchSettle:
    """The outcomes of one produce_many: its loop over the items, and each report's outcome."""

    def __init__(
        self,
        size: int,
        call_soon: Callable[..., None],
        make_error: Callable[[KafkaError, Message | None], object],
        on_done: Callable[[list[Any]], object],
        settle: Settle,
    ) -> None:
        if size < 0:
            raise ValueError("BatchSettle: size must be >= 0")
        self._results: list[Any] = [None] * size
        self._call_soon = call_soon
        self._make_error = make_error
        self._on_done = on_done
        self._settle = settle
        self.remaining = size
        """Outcomes not yet known."""
        self.next = 0
        """The index of the next item produce() hands over (the failed one after an error)."""

    def produce(
        self,
        produce: Callable[..., None],
        topic: str,
        items: list[Any],
        start: int,
        headers: object,
    ) -> None:
        """Hand items[start:] to confluent-kafka's `produce`; stop at the first exception."""
        if start < 0:
            raise ValueError("produce: start must be >= 0")
        extra = {} if headers is None else {"headers": headers}
        call_soon, partial = self._call_soon, functools.partial
        for index in range(start, len(items)):
            self.next = index
            item = items[index]
            if isinstance(item, tuple):
                if len(item) != 2:
                    raise ValueError(f"item {index}: a tuple must be a (key, value) pair")
                key, value = item
            else:
                key, value = None, item
            produce(topic, value, key, -1, partial(call_soon, self, index), **extra)
        self.next = len(items)

    def __call__(self, index: int, err: KafkaError | None, msg: Message | None) -> None:
        if not 0 <= index < len(self._results):
            raise IndexError("batch: no such message")
        if self._results[index] is not None:
            return  # settled already: an outcome counts once
        if err is None:
            assert msg is not None
            self._results[index] = self._settle.metadata(msg)
        else:
            self._results[index] = self._make_error(err, msg)
        self.remaining -= 1
        if self.remaining == 0:
            self._on_done(self._results)
        if self._settle.room_wanted:
            self._settle._on_room()
