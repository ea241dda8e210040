"""A queue in front of an ASGI app: enough requests inside to keep the loop busy, no more.

uvicorn starts every request it reads at once. Under load, hundreds of requests then sit
suspended inside the app at the same time, each waiting for Kafka (or anything else) with its
frames and objects alive, and every one resumes from memory the others have pushed out of the
CPU's caches. On the reference service that cost an awaited endpoint more than Kafka did
(bench/README.md, the web load section).

``RequestQueue`` lets `concurrency` requests into the app at once and queues the rest, first
come first served, before any of the app's code runs for them: a queued request is a parked
future, not a suspended stack. A fixed number would cap throughput at that number over the
time a request waits (Kafka slower than usual, a dead broker): so while requests are queued
it watches the event loop's thread, and when the loop sat idle for part of an interval it lets
more in; once the loop is busy again the number drifts back down. A request stops counting
once its answer starts, so a long stream (SSE) does not hold a place. WebSocket and lifespan
traffic pass straight through. Nothing is refused until `max_queued` wait.

    app.add_middleware(RequestQueue, concurrency=32)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kafkaloop._asgi import reply

__all__ = ["RequestQueue"]

# The loop thread's CPU time against wall time says whether the loop had work (module-level,
# so tests can tell the queue how busy the loop was).
_cpu_time = time.thread_time
_wall_time = time.monotonic

# Below this share of an interval on the CPU, the loop waited for lack of work: let more in.
# An interval spans several round trips to Kafka, so the gaps between two waves of deliveries
# do not count as idle; a loop with all it can do still spends a few percent off the CPU
# (between reads, handing the GIL over), hence the margin below _BUSY.
_IDLE = 0.8
# Above it, the loop had all it could do: the number inside drifts back towards `concurrency`.
_BUSY = 0.9


class RequestQueue:
    """ASGI middleware: `concurrency` HTTP requests in the app at once (more while the event
    loop would otherwise sit idle), the rest queued in arrival order; 503 (with Retry-After)
    only when `max_queued` already wait.

    ``concurrency=0`` turns the queue off. One event loop at a time, like the app it wraps.
    """

    def __init__(
        self,
        app: ASGIApp,
        concurrency: int = 32,
        max_queued: int = 10_000,
        interval: float = 0.025,
        retry_after: int = 1,
    ) -> None:
        if concurrency < 0 or max_queued < 0 or interval <= 0:
            raise ValueError("concurrency and max_queued must be >= 0 and interval > 0")
        self.app = app
        self.concurrency = concurrency
        self.max_queued = max_queued
        self.interval = interval
        self.retry_after = retry_after
        self.limit = concurrency  # what is let in now: concurrency, or more while the loop idles
        self.running = 0  # requests in the app whose answer has not started
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._since = (0.0, 0.0)  # (wall, loop thread's CPU) at the last check

    def __repr__(self) -> str:
        return (
            f"RequestQueue(concurrency={self.concurrency}, limit={self.limit}, "
            f"running={self.running}, waiting={len(self._waiting)})"
        )

    @property
    def waiting(self) -> int:
        """Requests queued now (a cancelled one may count until its turn comes)."""
        return len(self._waiting)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.concurrency:
            await self.app(scope, receive, send)
            return
        if self.running < self.limit and not self._waiting:
            self.running += 1
        elif len(self._waiting) >= self.max_queued:
            await reply(
                send,
                503,
                f"The server is overloaded: {len(self._waiting)} requests are already queued",
                "Overloaded",
                ((b"retry-after", str(self.retry_after).encode()),),
            )
            return
        else:
            await self._wait_turn()
        counted = True

        async def send_and_leave(message: Message) -> None:
            nonlocal counted
            if counted and message["type"] == "http.response.start":
                counted = False
                self._leave()
            await send(message)

        try:
            await self.app(scope, receive, send_and_leave)
        finally:
            if counted:
                self._leave()

    async def _wait_turn(self) -> None:
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._waiting.append(turn)
        if self._timer is None or self._timer_loop is not loop:
            if self._timer is not None:
                self._timer.cancel()  # left on a loop that is gone (tests, restarts)
            self._timer_loop = loop
            self._since = (_wall_time(), _cpu_time())
            self._timer = loop.call_later(self.interval, self._check)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._leave()  # given a place just as it was cancelled: pass it on
            raise

    def _leave(self) -> None:
        self.running -= 1
        self._admit()

    def _admit(self) -> None:
        while self.running < self.limit and self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():  # a cancelled waiter's future is done: skip it
                turn.set_result(None)
                self.running += 1

    def _check(self) -> None:
        """Every `interval` while requests wait: more in if the loop idled, fewer if it did not."""
        wall, cpu = _wall_time(), _cpu_time()
        busy = (cpu - self._since[1]) / max(wall - self._since[0], 1e-9)
        self._since = (wall, cpu)
        if busy < _IDLE:
            self.limit += max(self.limit // 2, 1)
            self._admit()
        elif busy > _BUSY and self.limit > self.concurrency:
            self.limit = max(self.concurrency, self.limit - max(self.limit // 8, 1))
        self._timer = (
            asyncio.get_running_loop().call_later(self.interval, self._check)
            if self._waiting
            else None
        )
