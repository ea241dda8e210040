"""RequestQueue: a few requests in the app at once, the rest queued in order, none lost."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from kafkaloop import request_queue
from kafkaloop.fastapi import RequestQueue


def _scope(kind: str = "http") -> dict[str, Any]:
    return {"type": kind, "path": "/", "headers": []}


async def _receive() -> Message:
    return {"type": "http.request", "body": b"item", "more_body": False}


async def _gone() -> Message:
    return {"type": "http.disconnect"}


class Recorder:
    """An ASGI app whose requests wait on a gate of the test's, noting who is inside."""

    def __init__(self) -> None:
        self.inside: list[int] = []
        self.entered: list[int] = []
        self.gates: dict[int, asyncio.Future[None]] = {}
        self.most_inside = 0
        self.bodies: list[bytes] = []

    def gate(self, n: int) -> asyncio.Future[None]:
        return self.gates.setdefault(n, asyncio.get_running_loop().create_future())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        n = scope["n"]
        self.bodies.append((await receive()).get("body", b""))
        self.entered.append(n)
        self.inside.append(n)
        self.most_inside = max(self.most_inside, len(self.inside))
        try:
            await self.gate(n)
        finally:
            self.inside.remove(n)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(n).encode()})


async def _request(app: Any, n: int, path: str = "/", receive: Receive = _receive) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app({**_scope(), "path": path, "n": n}, receive, send)
    return sent


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_at_most_concurrency_are_inside_and_the_rest_enter_in_arrival_order() -> None:
    app = Recorder()
    queue = RequestQueue(app, concurrency=2, interval=10)
    tasks = [asyncio.create_task(_request(queue, n)) for n in range(6)]
    await _settle()
    assert app.inside == [0, 1]
    assert (queue.running, queue.waiting) == (2, 4)

    for n in (1, 0, 2, 3, 4, 5):
        app.gate(n).set_result(None)
        await _settle()

    async with asyncio.timeout(5):
        answers = await asyncio.gather(*tasks)
    assert app.entered == [0, 1, 2, 3, 4, 5]
    assert app.bodies == [b"item"] * 6  # a queued request's body reaches the app all the same
    assert app.most_inside == 2
    assert [a[1]["body"] for a in answers] == [str(n).encode() for n in range(6)]
    assert (queue.running, queue.waiting) == (0, 0)
    assert repr(queue) == "RequestQueue(concurrency=2, limit=2, running=0, waiting=0)"


async def test_a_started_answer_frees_its_place_so_streams_do_not_hold_one() -> None:
    streaming = asyncio.Event()
    finish = asyncio.Event()

    async def stream(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["n"] == 0:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            streaming.set()
            await finish.wait()  # an SSE stream, open for as long as its client stays
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"quick"})

    queue = RequestQueue(stream, concurrency=1, interval=10)
    long_lived = asyncio.create_task(_request(queue, 0))
    await streaming.wait()
    assert queue.running == 0

    quick = await asyncio.wait_for(_request(queue, 1), 1)
    assert quick[1]["body"] == b"quick"
    finish.set()
    await long_lived


async def test_a_request_that_raises_frees_its_place() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("the app failed")

    queue = RequestQueue(failing, concurrency=1, interval=10)
    results = await asyncio.gather(*(_request(queue, n) for n in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert (queue.running, queue.waiting) == (0, 0)


class FakeCPU:
    """The loop thread's CPU clock as the test says: busy (keeps up with the clock) or idle."""

    def __init__(self) -> None:
        self.busy = True
        self.offset = 0.0
        self.frozen = 0.0

    def __call__(self) -> float:
        return request_queue._wall_time() - self.offset if self.busy else self.frozen

    def go_idle(self) -> None:
        self.frozen, self.busy = self(), False

    def go_busy(self) -> None:
        self.offset, self.busy = request_queue._wall_time() - self.frozen, True


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch) -> FakeCPU:
    fake = FakeCPU()
    monkeypatch.setattr(request_queue, "_cpu_time", fake)
    return fake


async def _quick(scope: Scope, receive: Receive, send: Send) -> None:
    await asyncio.sleep(0.001)  # suspends, as a request awaiting Kafka does
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_when_the_loop_sits_idle_with_requests_queued_more_are_let_in(
    cpu: FakeCPU,
) -> None:
    cpu.go_idle()
    app = Recorder()
    queue = RequestQueue(app, concurrency=2, interval=0.01)
    tasks = [asyncio.create_task(_request(queue, n)) for n in range(8)]
    await _settle()
    assert app.inside == [0, 1]

    async with asyncio.timeout(5):  # several intervals, each growing the limit by half
        while len(app.entered) < 8:  # noqa: ASYNC110 (polls the app's state)
            await asyncio.sleep(0.01)
    assert app.entered == list(range(8))  # all in, still in arrival order
    assert queue.waiting == 0

    for gate in (app.gate(n) for n in range(8)):
        gate.set_result(None)
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)
    assert (queue.running, queue.waiting) == (0, 0)


async def test_the_real_loop_idling_on_stuck_requests_lets_the_queue_through() -> None:
    app = Recorder()  # no fake clock: every request inside waits, the loop really is idle
    queue = RequestQueue(app, concurrency=2, interval=0.01)
    tasks = [asyncio.create_task(_request(queue, n)) for n in range(8)]
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(app.inside) == 8:
            break
    assert app.entered == list(range(8))

    for gate in (app.gate(n) for n in range(8)):
        gate.set_result(None)
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)


async def test_while_the_loop_is_busy_the_queue_keeps_to_its_concurrency(cpu: FakeCPU) -> None:
    queue = RequestQueue(_quick, concurrency=2, interval=0.005)
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, queue.running)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    async with asyncio.timeout(5):
        await asyncio.gather(*(_request(queue, n) for n in range(60)))
    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watcher
    assert most == 2
    assert queue.limit == 2
    assert queue.queued_total > 0


async def test_a_limit_raised_while_the_loop_idled_comes_back_once_it_is_busy(
    cpu: FakeCPU,
) -> None:
    app = Recorder()
    queue = RequestQueue(app, concurrency=2, interval=0.005)
    cpu.go_idle()  # a broker outage: everything inside waits, the loop idles
    tasks = [asyncio.create_task(_request(queue, n)) for n in range(40)]
    async with asyncio.timeout(5):
        while len(app.inside) < 40:  # noqa: ASYNC110 (polls the app's state)
            await asyncio.sleep(0.001)
    assert queue.limit >= 40
    cpu.go_busy()
    for gate in (app.gate(n) for n in range(40)):
        gate.set_result(None)
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)

    # Fewer users than the raised limit now: nobody queues, and the limit still comes back.
    for _ in range(3):
        async with asyncio.timeout(5):
            await asyncio.gather(*(_request(queue, n) for n in range(2)))
    async with asyncio.timeout(5):  # one interval's check at a time
        while queue.limit != 2:  # noqa: ASYNC110 (polls the queue's state)
            await asyncio.sleep(0.01)
    assert (queue.running, queue.waiting) == (0, 0)


async def test_a_request_whose_client_left_while_queued_never_enters() -> None:
    app = Recorder()
    queue = RequestQueue(app, concurrency=1, interval=10)
    first = asyncio.create_task(_request(queue, 0))
    gone = asyncio.create_task(_request(queue, 1, receive=_gone))
    third = asyncio.create_task(_request(queue, 2))
    await _settle()

    app.gate(0).set_result(None)
    app.gate(2).set_result(None)
    async with asyncio.timeout(5):
        _, left, _ = await asyncio.gather(first, gone, third)
    assert left == []  # nothing sent to a client that is not there
    assert app.entered == [0, 2]
    assert (queue.running, queue.waiting) == (0, 0)


async def test_a_waiter_cancelled_in_the_queue_never_enters_and_loses_no_place() -> None:
    app = Recorder()
    queue = RequestQueue(app, concurrency=1, interval=10)
    first = asyncio.create_task(_request(queue, 0))
    gone = asyncio.create_task(_request(queue, 1))  # its client disconnects while queued
    third = asyncio.create_task(_request(queue, 2))
    await _settle()
    gone.cancel()
    await _settle()
    assert queue.waiting == 1  # the one that left is no longer counted

    app.gate(0).set_result(None)
    app.gate(2).set_result(None)
    await asyncio.gather(first, third)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert app.entered == [0, 2]
    assert (queue.running, queue.waiting) == (0, 0)


async def test_a_waiter_cancelled_as_its_turn_came_passes_the_place_on() -> None:
    app = Recorder()
    queue = RequestQueue(app, concurrency=1, interval=10)
    unlucky: asyncio.Task[list[Message]] | None = None

    async def send_then_cancel(message: Message) -> None:
        # The place passes on when this answer starts; cancel its new holder before it runs.
        if message["type"] == "http.response.start" and unlucky is not None:
            unlucky.cancel()

    first = asyncio.create_task(queue({**_scope(), "n": 0}, _receive, send_then_cancel))
    unlucky = asyncio.create_task(_request(queue, 1))
    third = asyncio.create_task(_request(queue, 2))
    await _settle()

    app.gate(0).set_result(None)
    app.gate(2).set_result(None)
    await asyncio.gather(first, third)
    with pytest.raises(asyncio.CancelledError):
        await unlucky
    assert app.entered == [0, 2]
    assert (queue.running, queue.waiting) == (0, 0)


async def test_a_full_queue_is_a_503_with_retry_after_not_a_hang() -> None:
    app = Recorder()
    queue = RequestQueue(app, concurrency=1, max_queued=2, interval=10, retry_after=3)
    tasks = [asyncio.create_task(_request(queue, n)) for n in range(3)]
    await _settle()

    refused = await asyncio.wait_for(_request(queue, 3), 1)
    start, body = refused
    assert start["status"] == 503
    assert (b"retry-after", b"3") in start["headers"]
    assert json.loads(body["body"])["error"] == "Overloaded"

    for n in range(3):
        app.gate(n).set_result(None)
    await asyncio.gather(*tasks)
    assert 3 not in app.entered


@pytest.mark.parametrize(
    ("kind", "path", "concurrency"),
    [("websocket", "/", 1), ("http", "/healthz", 1), ("http", "/", 0)],
    ids=["websocket", "exempt-path", "queue-off"],
)
async def test_websockets_exempt_paths_and_a_zero_concurrency_pass_straight_through(
    kind: str, path: str, concurrency: int
) -> None:
    app = Recorder()
    queue = RequestQueue(app, concurrency=concurrency, interval=10, exempt=("/healthz",))

    async def call(n: int) -> None:
        await queue({"type": kind, "path": path, "headers": [], "n": n}, _receive, _noop_send)

    tasks = [asyncio.create_task(call(n)) for n in range(3)]
    await _settle()
    assert app.inside == [0, 1, 2]  # all three inside at once
    assert (queue.running, queue.waiting) == (0, 0)

    for gate in (app.gate(n) for n in range(3)):
        gate.set_result(None)
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)


async def _noop_send(message: Message) -> None:
    return None


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        RequestQueue(_noop_send, concurrency=-1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval"):
        RequestQueue(_noop_send, interval=0)  # type: ignore[arg-type]
