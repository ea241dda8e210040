"""Counting a CallbackThread's wake-ups (see CallbackThread.run_held)."""

from __future__ import annotations

import queue
from typing import Any

from kafkaloop._bridge import CallbackThread


class CountingQueue:
    """Stands in for a callback thread's wake-up queue, counting the wake-ups sent."""

    def __init__(self, wrapped: queue.SimpleQueue[Any]) -> None:
        self.wrapped = wrapped
        self.puts = 0

    def put(self, item: Any) -> None:
        self.puts += 1
        self.wrapped.put(item)

    def get(self) -> Any:
        return self.wrapped.get()


def count_wakeups(thread: CallbackThread) -> CountingQueue:
    """From now on, count the wake-ups `thread` is sent (the thread may be waiting already:
    the queue it waits on stays the same)."""
    counting = CountingQueue(thread._wakeups)
    thread._wakeups = counting  # type: ignore[assignment]
    return counting
