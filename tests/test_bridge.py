"""LoopBridge: the one thread-to-loop handoff."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from kafkaloop._bridge import CallbackThread, LoopBridge, LoopPoller
from tests.wakeups import count_wakeups


async def test_calls_from_many_threads_all_run_on_the_loop_in_per_thread_order() -> None:
    bridge = LoopBridge(asyncio.get_running_loop())
    seen: dict[int, list[int]] = {}
    loop_thread = threading.get_ident()
    threads_seen: set[int] = set()
    done = asyncio.Event()

    def record(worker: int, i: int) -> None:
        threads_seen.add(threading.get_ident())
        seen.setdefault(worker, []).append(i)
        if sum(map(len, seen.values())) == 4 * 5000:
            done.set()

    def work(worker: int) -> None:
        for i in range(5000):
            bridge.call_soon(record, worker, i)

    workers = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        await asyncio.to_thread(worker.join)
    await asyncio.wait_for(done.wait(), 10)

    assert threads_seen == {loop_thread}
    assert all(seen[w] == list(range(5000)) for w in range(4))


async def test_a_burst_of_calls_costs_one_loop_wakeup(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    bridge = LoopBridge(loop)
    wakeups = 0
    original = loop.call_soon_threadsafe

    def counting(*args: object) -> asyncio.Handle:
        nonlocal wakeups
        wakeups += 1
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    ran: list[int] = []

    def burst() -> None:
        for i in range(1000):
            bridge.call_soon(ran.append, i)

    # join() blocks the loop on purpose: the whole burst lands before the first drain.
    thread = threading.Thread(target=burst)
    thread.start()
    thread.join()
    await asyncio.sleep(0)

    assert ran == list(range(1000))
    assert wakeups == 1


async def test_a_raising_call_is_logged_and_the_rest_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = LoopBridge(asyncio.get_running_loop(), name="test-bridge")
    ran: list[str] = []

    def fail() -> None:
        raise ValueError("bad")

    bridge.call_soon(fail)
    bridge.call_soon(ran.append, "after")
    await asyncio.sleep(0)

    assert ran == ["after"]
    assert "test-bridge: a callback raised" in caplog.text


async def test_run_blocking_runs_off_the_loop_thread() -> None:
    bridge = LoopBridge(asyncio.get_running_loop())
    try:
        ident = await bridge.run_blocking(threading.get_ident)
    finally:
        bridge.close()

    assert ident != threading.get_ident()


async def test_call_and_wait_on_the_loop_thread_runs_at_once_and_refuses_coroutines() -> None:
    bridge = LoopBridge(asyncio.get_running_loop())

    async def later() -> None:
        return None

    assert bridge.on_loop_thread()
    assert bridge.call_and_wait(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(RuntimeError, match="loop's own thread"):
        bridge.call_and_wait(later)
    assert not await asyncio.to_thread(bridge.on_loop_thread)


async def test_a_callback_thread_runs_calls_in_order_off_the_loop() -> None:
    bridge = LoopBridge(asyncio.get_running_loop())
    callbacks = CallbackThread("test-callbacks")
    ran: list[tuple[int, str]] = []

    def record(i: int) -> None:
        if i == 50:
            raise RuntimeError("one call fails")
        ran.append((i, threading.current_thread().name))

    for i in range(100):
        callbacks.call_soon(record, i)
    await callbacks.caught_up(bridge)

    assert [i for i, _ in ran] == [i for i in range(100) if i != 50]
    assert {name for _, name in ran} == {"test-callbacks"}
    callbacks.call_soon(record, 100)
    await callbacks.stop(bridge)  # runs what was handed over first
    assert ran[-1][0] == 100
    assert not any(t.name == "test-callbacks" for t in threading.enumerate())
    callbacks.call_soon(record, 101)  # stopped: it runs where it is made, not never
    assert ran[-1] == (101, threading.current_thread().name)
    await asyncio.wait_for(callbacks.caught_up(bridge), 5)
    bridge.close()


async def test_calls_made_inside_run_held_wake_the_callback_thread_once_after_it() -> None:
    bridge = LoopBridge(asyncio.get_running_loop())
    callbacks = CallbackThread("test-callbacks")
    ran: list[int] = []
    wakeups = count_wakeups(callbacks)

    seen_inside: list[int] = []

    def serve(n: int) -> str:
        """As a poll(0) serving n reports does: hand calls over, letting go of the GIL."""
        # Another thread's call is not held back (the holder's own are, and the calls queued
        # behind them).
        from_elsewhere = threading.Thread(target=callbacks.call_soon, args=(ran.append, -1))
        from_elsewhere.start()
        from_elsewhere.join()
        deadline = time.monotonic() + 5
        while -1 not in ran and time.monotonic() < deadline:
            time.sleep(0.001)
        for i in range(n):
            callbacks.call_soon(ran.append, i)
            time.sleep(0.002)  # ample time for a woken thread to take the GIL and run them
        seen_inside.extend(ran)
        return f"served {n}"

    assert callbacks.run_held(serve, 20) == "served 20"
    assert seen_inside == [-1]  # the 20 waited for the end of run_held
    assert wakeups.puts == 2  # the other thread's call, then the 20 together
    await callbacks.caught_up(bridge)
    assert ran == [-1, *range(20)]

    with pytest.raises(ZeroDivisionError):  # a serve that raises still sends the wake-up
        callbacks.run_held(lambda: [callbacks.call_soon(ran.append, 20), 1 / 0])
    await asyncio.wait_for(callbacks.caught_up(bridge), 5)
    assert ran[-1] == 20
    await callbacks.stop(bridge)
    bridge.close()


class _FakeWatch:
    """A queue watch whose queue always says it has more."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self.closed = False

    def fileno(self) -> int:
        return self._read

    def clear(self) -> None:
        assert not self.closed, "read after close"

    def pending(self) -> int:
        return 0 if self.closed else 1

    def close(self) -> None:
        self.closed = True
        os.close(self._read)
        os.close(self._write)


async def test_a_loop_poller_serves_at_start_and_nothing_after_stop() -> None:
    bridge = LoopBridge(asyncio.get_running_loop())
    watch = _FakeWatch()
    polls: list[float] = []

    def poll(timeout: float) -> None:
        polls.append(timeout)
        if len(polls) in (1, 3):  # (logged)
            raise RuntimeError("a callback raised: poll() stopped early, the rest wrote no byte")

    poller = LoopPoller(bridge, poll, watch)  # type: ignore[arg-type]

    poller.start()
    await asyncio.sleep(0)
    assert polls == [0]  # what came before the watch could say so
    await asyncio.sleep(0)
    assert polls == [0, 0]  # what the raising callback left: served again
    await asyncio.sleep(0)
    assert polls == [0, 0]  # a poll() that returned served all: the next waits for a byte
    poller._serve()  # as a byte from librdkafka would: this poll() raises too
    assert polls == [0, 0, 0]
    assert poller._again is not None  # it raised again: another serve is on its way
    await poller.stop(bridge)  # serves what is queued, once
    assert watch.closed
    served = len(polls)
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(polls) == served  # the serve that was scheduled does not run
    await poller.stop(bridge)  # idempotent
    bridge.close()


def test_a_keyboard_interrupt_in_a_callback_reaches_the_loop_and_the_rest_is_served_later() -> None:
    loop = asyncio.new_event_loop()
    bridge = LoopBridge(loop)
    watch = _FakeWatch()

    def poll(_timeout: float) -> None:
        raise KeyboardInterrupt

    poller = LoopPoller(bridge, poll, watch)  # type: ignore[arg-type]
    try:
        with pytest.raises(KeyboardInterrupt):
            poller._serve()
        assert poller._again is not None
    finally:
        poller._stopped = True
        watch.close()
        bridge.close()
        loop.close()
