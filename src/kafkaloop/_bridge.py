"""The one place where work crosses between librdkafka's threads and the event loop.

librdkafka reports everything (deliveries, errors, rebalances, logs) through callbacks that run
on whichever thread calls ``poll()``, ``flush()`` or ``consume()``: a producer's poll thread, a
consumer's thread (and, for a consumer's ``consume(n, 0)`` of records already fetched, the loop
itself: :meth:`LoopBridge.on_loop_thread`). Futures and most of asyncio are not thread-safe, so
callbacks off the loop hand their work to it through a :class:`LoopBridge`.

The handoff is batched. ``call_soon_threadsafe`` writes to the loop's self-pipe on every call,
which is a system call and a loop wake-up per message when done once per delivery. The bridge
keeps a queue of pending calls and at most one scheduled wake-up: the first call after a drain
schedules it, later calls only append, and one drain on the loop runs everything that arrived
since. Under load that is one wake-up per batch of deliveries instead of one per message. That
queue (``PendingCalls``) is C code when kafkaloop's ``_handoff`` extension is built
(``_handoff.c``; its pure-Python twin is ``_pyhandoff.py``): queuing a call and running it
take no Python frame of their own.

A producer's callbacks need no thread at all where librdkafka's queue can announce its work
on a pipe (:class:`LoopPoller`): the loop watches the pipe, serves the queue with a
``poll(0)`` that does not block, and drains the queue of calls right after. Elsewhere a
:class:`PollThread` serves them and hands them over as above.

Blocking librdkafka calls (``flush``, a ``consume`` that waits, transactions) go the other
way, through :meth:`LoopBridge.run_blocking` or :meth:`LoopBridge.run_blocking_on` (a lane, a
thread, of their own), so they never hold up the loop and never queue behind the
application's use of the default executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, Unpack

from kafkaloop._exceptions import NoRunningLoopError
from kafkaloop._extensions import pick
from kafkaloop._rdkafka import QueueWatch, watch_main_queue

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from kafkaloop._handoff import PendingCalls
else:
    PendingCalls = pick("_handoff", "_pyhandoff")[0].PendingCalls

logger = logging.getLogger("kafkaloop")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _Inbox:
    """Blocking calls for a thread that waits in call_and_wait; closed once it stops waiting."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.is_open = True

    def put(
        self, job: tuple[Callable[..., Any], tuple[Any, ...], concurrent.futures.Future[Any]]
    ) -> bool:
        """Queue `job`; False once closed (the caller must run it elsewhere)."""
        with self._lock:
            if self.is_open:
                self._queue.put(job)
            return self.is_open

    def close(self) -> None:
        with self._lock:
            self.is_open = False
            self._queue.put(None)

    def get(self) -> Any:
        return self._queue.get()

    def leftovers(self) -> list[Any]:
        jobs: list[Any] = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return jobs
            if job is not None:
                jobs.append(job)


# The inbox of the call_and_wait whose callback is running, in that callback's context only.
_callback_inbox: contextvars.ContextVar[_Inbox | None] = contextvars.ContextVar(
    "kafkaloop_callback_inbox", default=None
)


def _run_job(
    job: tuple[Callable[..., Any], tuple[Any, ...], concurrent.futures.Future[Any]],
) -> None:
    func, args, outcome = job
    try:
        outcome.set_result(func(*args))
    except BaseException as exc:  # handed to the awaiting coroutine
        outcome.set_exception(exc)


def _copy_outcome(target: concurrent.futures.Future[Any], task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        target.cancel()
    elif (exc := task.exception()) is not None:
        target.set_exception(exc)
    else:
        target.set_result(task.result())


def _callback_failed(bridge: str, exc: BaseException) -> None:
    logger.error("%s: a callback raised; the callbacks after it still run", bridge, exc_info=exc)


class PollThread:
    """A daemon thread calling a librdkafka client's ``poll(interval)`` until stopped.

    librdkafka runs callbacks (deliveries, errors, statistics, logs) only inside ``poll``; this
    thread is where they run, never the event loop's.
    """

    on_loop = False
    """Callbacks run on this thread (not on the loop)."""

    def __init__(
        self, poll: Callable[[float], object], *, name: str, interval: float = 0.1
    ) -> None:
        self._poll = poll
        self._interval = interval
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def _run(self) -> None:
        poll, interval = self._poll, self._interval
        while not self._stopping:
            poll(interval)

    async def stop(self, bridge: LoopBridge) -> None:
        """Stop polling and wait (off the loop) for the thread to finish its last poll."""
        self._stopping = True
        if self._thread.is_alive():
            await bridge.run_blocking(self._thread.join)


class LoopPoller:
    """Serves a producer's librdkafka callbacks on the event loop itself, where it can.

    librdkafka's main queue writes a byte to a pipe when it gets work
    (:class:`~kafkaloop._rdkafka.QueueWatch`). The loop watches the pipe like a socket and
    then runs ``poll(0)``, which does not block, holding back the bridge's wake-ups, and drains
    the bridge at once: a batch of delivery reports settles its futures in the same loop
    callback. A poll thread instead takes the GIL once per report while the loop is busy, which
    costs two thread switches per message on a loaded machine.

    Callbacks that librdkafka runs inside ``flush()`` (on the bridge's blocking thread) still
    reach the loop through the bridge, so they run on the loop either way.
    """

    on_loop = True
    """Callbacks run on the loop (not on a poll thread of their own)."""

    def __init__(self, bridge: LoopBridge, poll: Callable[[float], object], watch: QueueWatch):
        self._bridge = bridge
        self._poll = poll
        self._watch = watch
        self._again: asyncio.Handle | None = None
        self._stopped = False

    def start(self) -> None:
        """Start watching the queue, and serve what it got before it could say so."""
        self._bridge.loop.add_reader(self._watch.fileno(), self._serve)
        self._again = self._bridge.loop.call_soon(self._serve)

    def _serve(self) -> None:
        self._again = None
        if self._stopped:
            return
        self._watch.clear()  # first: a write that comes while serving wakes the loop again
        try:
            self._bridge.serve(self._poll, 0)
        except BaseException as exc:
            # A call that raised (KeyboardInterrupt too) may have stopped the serve before
            # poll() ran, or poll() early, after clear() took the byte: what is left is served
            # again. (Asked only then: a poll() that returns has served all it found, and what
            # came since wrote a byte. The question is a call into librdkafka that lets go of
            # the GIL, once per wake-up, some 600 a second under load.)
            if not self._stopped and self._again is None and self._watch.pending():
                self._again = self._bridge.loop.call_soon(self._serve)
            if not isinstance(exc, Exception):
                raise
            logger.exception("kafkaloop: serving librdkafka's callbacks on the loop raised")

    async def stop(self, bridge: LoopBridge) -> None:
        """Stop watching, serve what is queued, and release the pipe."""
        if self._stopped:
            return
        self._stopped = True
        if self._again is not None:
            self._again.cancel()
            self._again = None
        self._bridge.loop.remove_reader(self._watch.fileno())
        try:
            self._bridge.serve(self._poll, 0)
        finally:
            self._watch.close()


def poller(
    bridge: LoopBridge,
    poll: Callable[[float], object],
    client: Producer,
    *,
    name: str,
    interval: float = 0.1,
    on_loop: bool = True,
) -> LoopPoller | PollThread:
    """Who serves a producer's callbacks: the loop itself when asked (`on_loop`) and
    librdkafka's queue can say it has work (:class:`LoopPoller`), else a :class:`PollThread`
    named `name`."""
    watch = watch_main_queue(client) if on_loop else None
    if watch is None:
        return PollThread(poll, name=name, interval=interval)
    return LoopPoller(bridge, poll, watch)


class CallbackThread:
    """A thread running calls handed to it from any thread, in order, a batch per wake-up.

    The bridge's queue (:class:`PendingCalls`) with a thread in place of the loop: where a
    producer whose callbacks are served on the loop runs the delivery callbacks that asked for
    a thread of their own (``on_poll_thread=True``).
    """

    def __init__(self, name: str) -> None:
        self._wakeups: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._closed = False
        self._holder = 0  # the thread inside run_held(), or 0
        self._held: Callable[[], None] | None = None  # its wake-up, sent when run_held() returns
        self._pending = PendingCalls(self, functools.partial(_callback_failed, name))
        self.call_soon: Callable[..., None] = self._pending.call_soon
        """Run ``callback(*args)`` on this thread soon, from any thread."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # What PendingCalls asks of its loop:
    def call_soon_threadsafe(self, drain: Callable[[], None]) -> None:
        if self._closed:  # stopped: a late call runs where it is made rather than never
            drain()
            return
        if self._holder == threading.get_ident():  # inside run_held(): sent when it returns
            self._held = drain
            return
        self._wakeups.put(drain)

    def run_held(self, func: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """``func(*args)``; calls it hands over from this thread wake the thread once, after.

        For the loop serving delivery reports: ``poll(0)`` lets go of the GIL around every
        report, so a thread woken by the first report would take the GIL from the loop at
        the next, run one call, sleep, and be woken again: a round of thread switches per
        report. Held, one wake-up runs the whole batch.
        """
        self._holder = threading.get_ident()
        try:
            return func(*args)
        finally:
            self._holder = 0
            drain, self._held = self._held, None
            if drain is not None:
                self.call_soon_threadsafe(drain)

    def is_closed(self) -> bool:
        return self._closed

    def _run(self) -> None:
        while (drain := self._wakeups.get()) is not None:
            drain()

    async def caught_up(self, bridge: LoopBridge) -> None:
        """Wait until every call handed over so far has run."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.call_soon(done.set_result, None)
        await bridge.wrap_future(done)

    async def stop(self, bridge: LoopBridge) -> None:
        """Run what was handed over so far, then end the thread (waiting off the loop). A call
        handed over later runs on the thread that makes it."""
        self._closed = True
        self._wakeups.put(None)
        await bridge.run_blocking(self._thread.join)
        # A call that slipped in as it stopped (its wake-up queued after the last): run it.
        await bridge.run_blocking(self._pending.drain)


class LoopBridge:
    """Runs calls from any thread on one event loop, in order, batching the wake-ups."""

    @classmethod
    def for_running_loop(cls, client: str) -> LoopBridge:
        """A bridge to the running loop, or NoRunningLoopError naming `client`."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise NoRunningLoopError(
                f"{client} must be created inside a running event loop: in an async function "
                "(a FastAPI lifespan, a coroutine under asyncio.run()), not at import time."
            ) from None
        return cls(loop, name=f"kafkaloop-{client.removeprefix('AIO').lower()}")

    call_soon: Callable[..., None]
    """Run ``callback(*args)`` on the loop soon: ``bridge.call_soon(callback, *args)``.

    Safe from any thread and cheap there: one append, and a wake-up only when none is
    pending. Calls run in the order they were made, with one exception: inside
    :meth:`serve`, a call made on the loop's own thread runs at once, ahead of calls other
    threads queued meanwhile. An exception from a callback is logged and does not stop the
    calls after it. (The queue's own method: no Python frame between a librdkafka callback
    and the queue.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, name: str = "kafkaloop") -> None:
        self.loop = loop
        self._name = name
        # A drain runs only what was queued when it started: a burst arriving meanwhile waits
        # for the next drain, so other work on the loop gets its turn in between.
        # (The error reporter is not a bound method: no cycle keeps the bridge alive.)
        self._pending = PendingCalls(loop, functools.partial(_callback_failed, name))
        self.call_soon = self._pending.call_soon
        self._executors: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._closed = False

    def drain(self) -> None:
        """Run every queued call now. Only on the loop's thread (e.g. after a flush)."""
        self._pending.drain()

    def serve(self, func: Callable[..., object], *args: Any) -> None:
        """On the loop's thread: ``func(*args)`` (a librdkafka ``poll(0)``). Calls queued
        before run first; calls its callbacks make on this thread run at once, as they come;
        calls from other threads meanwhile run right after, with no loop wake-up."""
        self._pending.serve(func, *args)

    async def run_blocking(self, func: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """Run a blocking call on the bridge's own thread and await its result."""
        return await self.run_blocking_on("blocking", func, *args)

    async def run_blocking_on(
        self, lane: str, func: Callable[[Unpack[Ts]], T], *args: *Ts, threads: int = 1
    ) -> T:
        """Run a blocking call on the thread of `lane`, one call at a time per lane (or up to
        `threads` at once, as the lane's first call says).

        A call that may block for long (a consumer's ``consume``) gets a lane of its own, so
        it never holds up short ones (``commit``, watermarks) queued behind it, nor they it.
        A lane of several threads serves calls that may each block for long and may run side
        by side (an admin client's metadata requests): one whose awaiting task was cancelled
        goes on blocking a thread until it returns, not the lane.
        """
        executor = self._executors.get(lane)
        if executor is None:
            if self._closed:
                raise RuntimeError(f"{self._name}: the bridge is closed")
            executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix=f"{self._name}-{lane}"
            )
            self._executors[lane] = executor
        return await self.loop.run_in_executor(executor, func, *args)

    def wrap_future(self, future: concurrent.futures.Future[T]) -> asyncio.Future[T]:
        """An asyncio future settled, through this bridge, when `future` is (AdminClient)."""
        waiter: asyncio.Future[T] = self.loop.create_future()

        def settle(done: concurrent.futures.Future[T]) -> None:
            if waiter.done():
                return
            if done.cancelled():
                waiter.cancel()
            elif (exc := done.exception()) is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(done.result())

        future.add_done_callback(functools.partial(self.call_soon, settle))
        return waiter

    def call_and_wait(self, callback: Callable[..., Any], *args: Any) -> Any:
        """From another thread: run ``callback(*args)`` on the loop and block until it is done.

        A coroutine (or other awaitable) result is awaited on the loop first. Its exception is
        raised here. Used where librdkafka must not go on before the application has acted,
        e.g. rebalance callbacks. While this thread waits, blocking calls that the callback
        (and only it) sends through :meth:`run_blocking_here` run on it: librdkafka lets a
        client be called from inside its own callback, and from no other thread until that
        callback returns. Called on the loop's own thread (a consumer's ``consume(n, 0)`` there),
        it runs the callback at once, which must then not return an awaitable.
        """
        if self.on_loop_thread():
            result = callback(*args)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise RuntimeError(
                    f"{self._name}: cannot wait for a coroutine from the loop's own thread"
                )
            return result
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        inbox = _Inbox()

        def run() -> None:
            token = _callback_inbox.set(inbox)  # seen by the callback and the task it starts
            try:
                result = callback(*args)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result, loop=self.loop)
                    task.add_done_callback(functools.partial(_copy_outcome, done))
                    return
            except BaseException as exc:  # handed to the waiting thread, not swallowed
                done.set_exception(exc)
                return
            finally:
                _callback_inbox.reset(token)
            done.set_result(result)

        if self.loop.is_closed():
            raise RuntimeError(f"{self._name}: the event loop is closed")
        done.add_done_callback(lambda _done: inbox.close())
        self.call_soon(run)
        while (job := inbox.get()) is not None:
            _run_job(job)
        for job in inbox.leftovers():  # calls that slipped in just before the inbox closed
            _run_job(job)
        return done.result()

    def on_loop_thread(self) -> bool:
        """Whether the caller runs on the loop's own thread (there, never wait for the loop)."""
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    @property
    def in_callback(self) -> bool:
        """Whether the calling task runs inside a callback that a librdkafka thread awaits."""
        inbox = _callback_inbox.get()
        return inbox is not None and inbox.is_open

    def call_here(self, func: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """``func(*args)``, from the loop. Inside a callback that a librdkafka thread waits for
        (:meth:`call_and_wait`), it runs on that very thread, the loop blocking until it
        returns (that thread only waits meanwhile): a client's call made on the loop would
        itself wait for that thread's call, which waits for the loop. Elsewhere, here."""
        inbox = _callback_inbox.get()
        if inbox is not None:
            outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
            if inbox.put((func, args, outcome)):
                return outcome.result()
        return func(*args)

    async def run_blocking_here(self, lane: str, func: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """Like :meth:`run_blocking_on`, but from inside a callback that a librdkafka thread
        waits for (:meth:`call_and_wait`), on that very thread: a rebalance callback may then
        commit, for instance."""
        inbox = _callback_inbox.get()
        outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        if inbox is None or not inbox.put((func, args, outcome)):
            return await self.run_blocking_on(lane, func, *args)
        return await self.wrap_future(outcome)

    def close(self) -> None:
        """Release the blocking-call threads. Queued calls still run at the next drain."""
        self._closed = True
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()
