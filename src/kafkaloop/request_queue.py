"""A queue in front of an ASGI app: a few requests run at once, the others wait their turn.

uvicorn starts every request it reads at once. Under load, hundreds of requests then sit
suspended inside the app at the same time, each waiting for Kafka (or anything else) with its
frames and objects alive, and every one resumes from memory the others have pushed out of the
CPU's caches. On the reference service that cost an awaited endpoint more than Kafka did
(bench/README.md, the web load section).

``RequestQueue`` lets `max_running` requests into the app at once and queues the rest, first
come first served, before any of the app's code runs for them: a queued request is a parked
future, not a suspended stack. It refuses nothing while the queue has room, and it never lets
the app sit idle on a full house: when no request has finished for `stall` seconds (the
running ones all wait on something slow, e.g. an unreachable broker), it lets the next batch
in anyway. A request stops counting once its answer starts, so a long stream (SSE) does not
hold a place. WebSocket and lifespan traffic pass straight through.

    app.add_middleware(RequestQueue, max_running=32)
"""

from __future__ import annotations

import asyncio
from collections import deque

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kafkaloop._asgi import reply

__all__ = ["RequestQueue"]


class RequestQueue:
    """ASGI middleware: at most `max_running` HTTP requests in the app at once, the rest queued
    in arrival order; 503 (with Retry-After) only when `max_waiting` already wait.

    Queued requests are let in past the limit when none has finished for `stall` seconds.
    ``max_running=0`` turns the queue off. One event loop at a time, like the app it wraps.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_running: int = 32,
        max_waiting: int = 10_000,
        stall: float = 0.01,
        retry_after: int = 1,
    ) -> None:
        if max_running < 0 or max_waiting < 0 or stall <= 0:
            raise ValueError("max_running and max_waiting must be >= 0 and stall > 0")
        self.app = app
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.stall = stall
        self.retry_after = retry_after
        self.running = 0  # requests in the app whose answer has not started
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._finished = 0  # ever; the stall check compares it across one interval
        self._stall_timer: asyncio.TimerHandle | None = None
        self._stall_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return (
            f"RequestQueue(max_running={self.max_running}, running={self.running}, "
            f"waiting={len(self._waiting)})"
        )

    @property
    def waiting(self) -> int:
        """Requests queued now (a cancelled one may count until its turn comes)."""
        return len(self._waiting)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.max_running:
            await self.app(scope, receive, send)
            return
        if self.running < self.max_running and not self._waiting:
            self.running += 1
        elif len(self._waiting) >= self.max_waiting:
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
        if self._stall_timer is None or self._stall_loop is not loop:
            if self._stall_timer is not None:
                self._stall_timer.cancel()  # left on a loop that is gone (tests, restarts)
            self._stall_loop = loop
            self._stall_timer = loop.call_later(self.stall, self._check_stall, self._finished)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._leave()  # given a place just as it was cancelled: pass it on
            raise

    def _leave(self) -> None:
        self.running -= 1
        self._finished += 1
        self._admit(self.max_running - self.running)

    def _admit(self, places: int) -> None:
        while places > 0 and self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():  # a cancelled waiter's future is done: skip it
                turn.set_result(None)
                self.running += 1
                places -= 1

    def _check_stall(self, finished_before: int) -> None:
        if self._finished == finished_before:
            self._admit(max(self.max_running, 1))  # nothing moved: let a batch in anyway
        self._stall_timer = None
        if self._waiting:
            self._stall_timer = asyncio.get_running_loop().call_later(
                self.stall, self._check_stall, self._finished
            )
