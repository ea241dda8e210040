"""A queue in front of an ASGI app: enough requests inside to keep the loop busy, no more.

uvicorn starts every request it reads at once. Under load, hundreds of requests then sit
suspended inside the app at the same time, each waiting for Kafka (or anything else) with its
frames and objects alive, and every one resumes from memory the others have pushed out of the
CPU's caches. On the reference service one await cost a request some 13% of the no-op's
throughput at 400 users that way, before any Kafka work (bench/README.md, the web load
section).

``RequestQueue`` lets `concurrency` requests into the app at once and queues the rest, first
come first served, before any of the app's code runs for them: a queued request is a parked
future, not a suspended stack. A fixed number would cap throughput at that number over the
time a request waits (Kafka slower than usual, a dead broker): so while requests are queued
it watches the event loop's thread, and when the loop sat idle for part of an interval it lets
more in; once the loop is busy again the number drifts back down. A request stops counting
once its answer starts, so a long stream (SSE) does not hold a place. A request whose client
left while it was queued never enters. WebSocket and lifespan traffic, and the `exempt` paths
(health checks), pass straight through. Nothing is refused until `max_queued` wait.

"Idle" is time the loop's thread was off the CPU, whatever kept it off: with a CPU quota below
one core, other busy processes on its core, or threads holding the GIL, the queue reads idle
and lets more in, towards no queue at all, never towards fewer requests served.

    app.add_middleware(RequestQueue, concurrency=32)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kafkaloop._asgi import replay, reply

__all__ = ["RequestQueue"]

# The loop thread's CPU time against wall time says whether the loop had work (module-level,
# so tests can tell the queue how busy the loop was).
_cpu_time = time.thread_time
_wall_time = time.monotonic

# Below this share of an interval on the CPU, the loop waited for lack of work: let more in.
# An interval spans several round trips to a nearby broker, so the gaps between two waves of
# deliveries do not count as idle; a loop with all it can do still spends a few percent off
# the CPU (between reads, handing the GIL over), hence the margin below _BUSY.
_IDLE = 0.8
# Above it, the loop had all it could do: the number inside drifts back towards `concurrency`.
_BUSY = 0.9


class RequestQueue:
    """ASGI middleware: `concurrency` HTTP requests in the app at once (more while the event
    loop would otherwise sit idle), the rest queued in arrival order; 503 (with Retry-After)
    only when `max_queued` already wait (``max_queued=0``: none waits, and none is let in past
    `concurrency` either).

    Paths in `exempt` never queue. ``concurrency=0`` turns the queue off. One event loop at a
    time, like the app it wraps.
    """

    def __init__(
        self,
        app: ASGIApp,
        concurrency: int = 32,
        max_queued: int = 10_000,
        interval: float = 0.025,
        retry_after: int = 1,
        exempt: Collection[str] = (),
    ) -> None:
        if concurrency < 0 or max_queued < 0 or interval <= 0:
            raise ValueError("concurrency and max_queued must be >= 0 and interval > 0")
        self.app = app
        self.concurrency = concurrency
        self.max_queued = max_queued
        self.interval = interval
        self.retry_after = retry_after
        self.exempt = frozenset(exempt)
        self.limit = concurrency  # what is let in now: concurrency, or more while the loop idles
        self.running = 0  # requests in the app whose answer has not started
        self.queued_total = 0  # requests that ever waited their turn
        self._waiting: deque[asyncio.Future[None]] = deque()  # cancelled ones until their turn
        self._queued = 0  # live waiters in _waiting
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._since = (0.0, 0.0)  # (wall, loop thread's CPU) at the last check

    def __repr__(self) -> str:
        return (
            f"RequestQueue(concurrency={self.concurrency}, limit={self.limit}, "
            f"running={self.running}, waiting={self._queued})"
        )

    @property
    def waiting(self) -> int:
        """Requests queued now."""
        return self._queued

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.concurrency or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        waited = False
        if self.running < self.limit and not self._queued:
            self.running += 1
        elif self._queued >= self.max_queued:
            await reply(
                send,
                503,
                f"The server is overloaded: {self._queued} requests are already queued",
                "Overloaded",
                ((b"retry-after", str(self.retry_after).encode()),),
            )
            return
        else:
            await self._wait_turn()
            waited = True
        counted = True

        async def send_and_leave(message: Message) -> None:
            nonlocal counted
            if counted and message["type"] == "http.response.start":
                counted = False
                self._leave()
            await send(message)

        try:
            if waited:
                # Its client may have left while it waited (servers do not cancel the request
                # then): the first message says so, or is replayed to the app.
                first = await receive()
                if first["type"] == "http.disconnect":
                    return
                receive = replay(first, receive)
            await self.app(scope, receive, send_and_leave)
        finally:
            if counted:
                self._leave()

    async def _wait_turn(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._move_to(loop)
        turn: asyncio.Future[None] = loop.create_future()
        self._waiting.append(turn)
        self._queued += 1
        self.queued_total += 1
        self._start_checks(loop)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.cancelled():
                self._queued -= 1  # left the queue; its future is skipped when reached
            else:
                self._leave()  # given a place just as it was cancelled: pass it on
            raise

    def _move_to(self, loop: asyncio.AbstractEventLoop) -> None:
        old = self._loop
        if old is not None and not old.is_closed() and self._queued:
            raise RuntimeError("a RequestQueue serves one running event loop at a time")
        # The old loop is gone (tests, a restarted server): what it left counts no more.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if old is not None and old.is_closed():
            self.running = 0
        self._waiting.clear()
        self._queued = 0
        self._loop = loop

    def _start_checks(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None:
            self._since = (_wall_time(), _cpu_time())
            self._timer = loop.call_later(self.interval, self._check)

    def _leave(self) -> None:
        self.running -= 1
        self._admit()

    def _admit(self) -> None:
        while self.running < self.limit and self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():  # a cancelled waiter's future is done: skip it
                turn.set_result(None)
                self._queued -= 1
                self.running += 1

    def _check(self) -> None:
        """Every `interval` while requests wait or the limit is raised: more in if the loop
        idled with requests queued; back towards `concurrency` if it was busy or none waited."""
        wall, cpu = _wall_time(), _cpu_time()
        busy = (cpu - self._since[1]) / max(wall - self._since[0], 1e-9)
        self._since = (wall, cpu)
        if self._queued and busy < _IDLE:
            self.limit += max(self.limit // 2, 1)
            self._admit()
        elif self.limit > self.concurrency and (busy > _BUSY or not self._queued):
            self.limit = max(self.concurrency, self.limit - max(self.limit // 8, 1))
        self._timer = (
            asyncio.get_running_loop().call_later(self.interval, self._check)
            if self._queued or self.limit > self.concurrency
            else None
        )
