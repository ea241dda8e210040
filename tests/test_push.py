"""Live push: bounded per-client queues, drops counted, slow clients disconnected."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kafkaloop.push import Broadcaster, SlowClientError

# Nothing listens here: these tests exercise the fan-out, not Kafka.
CONFIG = {"bootstrap.servers": "127.0.0.1:1"}


@pytest.fixture
async def hub() -> AsyncIterator[Broadcaster]:
    hub = Broadcaster(CONFIG, ["items"], encode=lambda r: "", queue_size=3, slow_timeout=0.2)
    yield hub
    await hub.stop()


async def test_a_full_client_has_drops_counted_and_others_get_everything(hub: Broadcaster) -> None:
    slow, fast = hub.subscribe(), hub.subscribe()
    received: list[str] = []
    for i in range(10):
        for subscription in list(hub._subscribers):
            subscription.offer(str(i))
        received.append(await fast.get())

    assert received == [str(i) for i in range(10)]
    assert slow.dropped == 7
    assert hub.dropped == 7
    assert [await slow.get() for _ in range(3)] == ["0", "1", "2"]


async def test_a_client_full_for_too_long_is_disconnected(hub: Broadcaster) -> None:
    slow = hub.subscribe()
    for i in range(4):
        slow.offer(str(i))
    await asyncio.sleep(0.3)
    slow.offer("late")

    assert slow.closed_reason is not None
    assert "too slow" in slow.closed_reason
    assert hub.subscribers == 0
    assert [await slow.get() for _ in range(3)] == ["0", "1", "2"]
    with pytest.raises(SlowClientError, match="too slow"):
        await slow.get()


async def test_closing_a_subscription_wakes_its_reader(hub: Broadcaster) -> None:
    subscription = hub.subscribe()
    reader = asyncio.create_task(subscription.get())
    await asyncio.sleep(0.05)

    subscription.close("bye")

    with pytest.raises(SlowClientError, match="bye"):
        await reader
    assert hub.subscribers == 0
