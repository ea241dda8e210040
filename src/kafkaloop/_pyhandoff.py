"""The thread-to-loop handoff's hot path in pure Python: what kafkaloop uses when its C
extension ``_handoff.c`` is not built, or when ``KAFKALOOP_NO_EXTENSIONS`` is set. The same
names and behaviour, documented there; only slower. Only _bridge.py and _producer.py use it."""

from __future__ import annotations

import asyncio
import collections
import warnings
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, Message

__all__ = ["PendingCalls", "Settle"]

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

    def __len__(self) -> int:
        return len(self._queue)

    def call_soon(self, *call: Any) -> None:
        """Queue ``callback(*args)``, given ``call = (callback, *args)``, from any thread."""
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
                try:
                    self._on_error(exc)
                except Exception as failure:  # (as the C code's "unraisable" report)
                    warnings.warn(f"on_error raised {failure!r}", RuntimeWarning, stacklevel=1)

    def serve(self, func: Callable[..., object], *args: Any) -> None:
        """On the loop: ``func(*args)`` with no wake-up scheduled for the calls it queues,
        then a drain at once."""
        self._scheduled = True
        try:
            func(*args)
        finally:
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
                ts_type, ts = msg.timestamp()
                future.set_result(
                    _new_tuple(
                        self._metadata_type,
                        (
                            msg.topic(),
                            msg.partition(),
                            msg.offset(),
                            None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts,
                        ),
                    )
                )
        if self.room_wanted:
            self._on_room()
