"""Deadline: one sweep bounds every watched produce future."""

from __future__ import annotations

import asyncio

import pytest

from kafkaloop.fastapi import Deadline, KafkaUnavailable


async def test_a_future_still_pending_after_the_deadline_fails_with_kafka_unavailable() -> None:
    deadline = Deadline(0.1, resolution=0.02)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()
    started = loop.time()

    with pytest.raises(KafkaUnavailable, match=r"did not acknowledge within 0\.1s"):
        await deadline.watch(future)

    assert 0.1 <= loop.time() - started < 0.5
    deadline.forget(future)
    assert "watched=0" in repr(deadline)


async def test_a_future_done_in_time_keeps_its_result_and_is_forgotten() -> None:
    deadline = Deadline(0.1, resolution=0.02)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()
    loop.call_later(0.01, future.set_result, 7)

    assert await deadline.watch(future) == 7
    deadline.forget(future)
    await asyncio.sleep(0.2)  # sweeps run past the deadline: nothing left to fail
    assert future.result() == 7
    assert "watched=0" in repr(deadline)


async def test_only_the_futures_that_are_due_fail() -> None:
    deadline = Deadline(1.0, resolution=0.01)  # 0.6 s apart: a stalled loop still tells them
    loop = asyncio.get_running_loop()
    early: asyncio.Future[None] = loop.create_future()
    deadline.watch(early)
    await asyncio.sleep(0.6)
    late: asyncio.Future[None] = loop.create_future()
    deadline.watch(late)

    with pytest.raises(KafkaUnavailable):
        await early
    assert not late.done()
    with pytest.raises(KafkaUnavailable):
        await late


async def test_the_sweep_starts_again_after_everything_was_forgotten() -> None:
    deadline = Deadline(0.05, resolution=0.01)
    loop = asyncio.get_running_loop()
    first: asyncio.Future[None] = loop.create_future()
    deadline.watch(first)
    deadline.forget(first)
    await asyncio.sleep(0.1)  # the sweep found nothing left and stopped
    assert not first.done()

    second: asyncio.Future[None] = loop.create_future()
    with pytest.raises(KafkaUnavailable):
        await deadline.watch(second)


async def test_a_future_watched_again_does_not_hold_back_the_others() -> None:
    deadline = Deadline(1.6, resolution=0.01)
    loop = asyncio.get_running_loop()
    again: asyncio.Future[None] = loop.create_future()
    other: asyncio.Future[None] = loop.create_future()
    deadline.watch(again)
    deadline.watch(other)
    await asyncio.sleep(0.8)
    deadline.watch(again)  # its clock starts over, behind `other`'s
    started = loop.time()

    with pytest.raises(KafkaUnavailable):
        await other
    assert loop.time() - started < 1.4  # due 0.8 s after the re-watch; `again`, 1.6
    assert not again.done()
    with pytest.raises(KafkaUnavailable):
        await again


def test_one_loop_after_another_is_fine() -> None:
    deadline = Deadline(0.05, resolution=0.01)

    async def one_request() -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with pytest.raises(KafkaUnavailable):
            await deadline.watch(future)
        deadline.forget(future)

    asyncio.run(one_request())
    asyncio.run(one_request())


async def test_futures_of_two_running_loops_are_refused() -> None:
    deadline = Deadline(5.0)
    mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    deadline.watch(mine)

    async def from_another_loop() -> None:
        theirs: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        deadline.watch(theirs)

    with pytest.raises(RuntimeError, match="another event loop"):
        await asyncio.to_thread(asyncio.run, from_another_loop())
    deadline.forget(mine)


async def test_a_cancelled_future_is_left_alone() -> None:
    deadline = Deadline(0.02, resolution=0.01)
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    deadline.watch(future)
    future.cancel()
    await asyncio.sleep(0.06)
    assert future.cancelled()


def test_the_deadline_and_resolution_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Deadline(0)
    with pytest.raises(ValueError, match="positive"):
        Deadline(1, resolution=-1)
