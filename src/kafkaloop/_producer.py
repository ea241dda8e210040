"""AIOProducer: confluent-kafka's Producer, awaitable.

``produce()`` hands the message to librdkafka at once and returns a future that the delivery
report resolves. The loop itself serves delivery reports when librdkafka's queue can announce
them on a pipe (:class:`~kafkaloop._bridge.LoopPoller`); elsewhere they arrive on a poll thread
and reach the loop through the :class:`~kafkaloop._bridge.LoopBridge`, batched. Out-of-band
callbacks run on the loop or, when asked, on a thread of the producer's (the poll thread, or a
callback thread when the loop serves the reports); fire-and-forget messages are still counted
and their failures logged.

When librdkafka's queue is full, ``produce()`` does not raise: the message waits, in order, in a
bounded list on the loop and is handed over as soon as deliveries make room; the caller's
future fails with :class:`QueueFullError` if no room comes within ``queue_full_timeout``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeAlias, cast

from confluent_kafka import (
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from kafkaloop._bridge import CallbackThread, LoopBridge, poller
from kafkaloop._config import config_flag, make_client
from kafkaloop._exceptions import (
    ConfigurationError,
    DeliveryError,
    ProducerClosedError,
    QueueFullError,
    TransactionError,
    kafka_error_of,
)
from kafkaloop._extensions import pick
from kafkaloop._logging import RateLimitedLog, librdkafka_logger, logger
from kafkaloop._models import ProducerMetrics, RecordMetadata

if TYPE_CHECKING:
    from kafkaloop._handoff import AwaitedProduce, BatchSettle, Settle
else:
    _handoff = pick("_handoff", "_pyhandoff")[0]
    Settle = _handoff.Settle
    BatchSettle = _handoff.BatchSettle
    # C only: AIOProducer.produce (the Python method) is its twin.
    AwaitedProduce = getattr(_handoff, "AwaitedProduce", None)

__all__ = ["AIOProducer", "DeliveryCallback", "Headers"]

Headers: TypeAlias = dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]]
DeliveryCallback: TypeAlias = Callable[
    [DeliveryError | None, RecordMetadata], Awaitable[None] | None
]

DEFAULT_LINGER_MS = 1
"""kafkaloop's default ``linger.ms`` (librdkafka's is 5): see AIOProducer."""

_POLL_INTERVAL = 0.1
"""Longest a poll() blocks: bounds how long stopping the poll thread takes."""


_FLUSH_SLICE = 0.1
"""Seconds one blocking flush() call of librdkafka's lasts at most (see flush)."""


class _State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


def _delivery_error(topic: str, err: KafkaError, msg: Message | None) -> DeliveryError:
    """The error for a message of `topic`; `msg` is None for one never handed to librdkafka."""
    if msg is None:
        return DeliveryError(err, topic, None)
    return DeliveryError(err, msg.topic(), msg.partition())


def _extra(
    on_delivery: Callable[[KafkaError | None, Message], None] | None,
    headers: Headers | None,
    timestamp: int | None,
) -> dict[str, Any]:
    """The keyword arguments of Producer.produce beyond topic, value, key and partition."""
    extra: dict[str, Any] = {"on_delivery": on_delivery} if on_delivery is not None else {}
    if headers:
        extra["headers"] = headers
    if timestamp is not None:
        extra["timestamp"] = timestamp
    return extra


class _Waiting:
    """A message accepted while librdkafka's queue was full."""

    __slots__ = ("deadline", "extra", "future", "message")

    def __init__(
        self,
        message: tuple[Any, ...],
        extra: dict[str, Any],
        future: asyncio.Future[Any],
        deadline: float,
    ) -> None:
        self.message = message
        self.extra = extra
        self.future = future
        self.deadline = deadline


def librdkafka_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """What an :class:`AIOProducer` gives librdkafka for `config`, before its own callbacks:
    kafkaloop's defaults, and the flags kafkaloop reads as librdkafka takes them."""
    conf = dict(config)
    # Awaited produces wait out linger.ms in every request they serve. librdkafka's 5 ms
    # default suits batch pipelines; 1 ms keeps batches (0 would send one request per
    # message under load) while a request handler waits a fifth as long.
    conf.setdefault("linger.ms", DEFAULT_LINGER_MS)
    if "delivery.report.only.error" in conf:  # confluent-kafka takes only a bool
        conf["delivery.report.only.error"] = config_flag(conf, "delivery.report.only.error", False)
    conf.setdefault("logger", librdkafka_logger)
    return conf


class AIOProducer:
    """An asyncio Kafka producer over librdkafka.

    Create it inside a running event loop (a FastAPI lifespan, ``asyncio.run``) and use it
    from that loop's thread only. ``config`` takes any librdkafka producer property;
    ``error_cb``, ``stats_cb`` and ``throttle_cb`` are called on the loop.

    ``queue_full_timeout`` bounds how long an awaited ``produce()`` waits for room in a full
    queue; ``max_waiting`` bounds how many messages may wait at once (memory).

    With ``delivery.report.only.error`` set, only failed deliveries are reported: the producer
    is then for fire-and-forget messages (``produce_nowait``). A delivered message costs no
    Python object and no Python call (confluent-kafka drops its report in C, on whichever
    thread serves the reports), and ``produce()``/``produce_many()`` raise
    :class:`ConfigurationError`, as no success could ever resolve them.

    The loop serves delivery reports itself where it can (see :mod:`kafkaloop._bridge`): the
    least CPU per message, and no thread. ``poll_thread=True`` serves them on a thread of their
    own instead, as the design note does: more CPU per message (the thread and the loop trade
    the GIL once per report), but that thread's share of the work runs beside the loop, which
    can raise one busy producer's throughput on a multi-core machine.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        queue_full_timeout: float = 30.0,
        max_waiting: int = 10_000,
        poll_thread: bool = False,
    ) -> None:
        self._bridge = LoopBridge.for_running_loop("AIOProducer")
        loop = self._bridge.loop
        self._loop = loop
        self._queue_full_timeout = queue_full_timeout
        self._max_waiting = max_waiting
        self._user_callbacks: dict[str, Callable[..., Any]] = {}
        conf = librdkafka_config(config)
        for name in ("error_cb", "stats_cb", "throttle_cb"):
            callback = conf.pop(name, None)
            if callback is not None:
                self._user_callbacks[name] = callback
        if "stats_cb" in self._user_callbacks:
            conf["stats_cb"] = functools.partial(self._forward, "stats_cb")
        if "throttle_cb" in self._user_callbacks:
            conf["throttle_cb"] = functools.partial(self._forward, "throttle_cb")
        # Only failures are reported: nothing can await a success (see _no_success_reports).
        self._failures_only = config_flag(conf, "delivery.report.only.error", False)
        conf["error_cb"] = self._on_error
        conf["on_delivery"] = self._on_untracked_delivery
        self._bootstrap = str(conf.get("bootstrap.servers", ""))
        self._producer = make_client(Producer, conf, config, "producer")

        self._state = _State.OPEN
        # None while produce may proceed; else why not (checked once per message).
        self._refusal: str | None = None
        self._produce = self._producer.produce
        self._create_future = loop.create_future
        self._call_soon = self._bridge.call_soon
        self._close_task: asyncio.Task[int] | None = None
        self.last_error: KafkaError | None = None
        """The most recent client-level error librdkafka reported (None when none yet)."""
        self._fatal_error: KafkaError | None = None
        # Counters are each written by the loop, or under the lock by the threads reports and
        # callbacks run on (librdkafka's poll thread, the callback thread, the loop itself).
        # Deliveries counted on the loop are self._settle.delivered (below).
        self._produced = 0
        self._failed_loop = 0
        self._thread_counts_lock = threading.Lock()
        self._delivered_thread = 0
        self._failed_thread = 0
        self._delivered_bound = 0  # metrics.delivered when only failures are reported
        self._final_metrics: ProducerMetrics | None = None  # the counts once closed
        self._failure_log = RateLimitedLog(logger)
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._waiting_timer: asyncio.TimerHandle | None = None
        self._batches: dict[asyncio.Future[Any], tuple[BatchSettle, int]] = {}
        """produce_many's batches not yet settled (by their future) and their sizes: metrics
        count a batch's outcomes once all are known."""
        # Settles awaited produces on the loop (C code when kafkaloop's _handoff extension is
        # built) and counts every delivery reported on the loop; its room_wanted flag says a
        # message waits for room in librdkafka's queue.
        self._settle = Settle(RecordMetadata, self._settle_failed, self._on_room)
        self._room = asyncio.Event()
        self._user_tasks: set[asyncio.Task[Any]] = set()
        # produce() in C for its common case, where kafkaloop's _handoff extension is built:
        # an instance attribute in front of the method, which it calls for every other case.
        self._fast_produce: AwaitedProduce | None = None
        if (
            AwaitedProduce is not None
            and type(self).produce is AIOProducer.produce
            and not self._failures_only
        ):
            self._fast_produce = AwaitedProduce(
                self._produce,
                self._create_future,
                self._call_soon,
                self._settle,
                self._waiting,
                AIOProducer.produce.__get__(self),
                self._produce_failed,
            )
            self.__dict__["produce"] = self._fast_produce

        # Where on_poll_thread callbacks run when the loop serves the reports (made on demand).
        self._callback_thread: CallbackThread | None = None
        # Who serves librdkafka's callbacks: the loop itself, or a poll thread.
        self._poller = poller(
            self._bridge,
            self._poll,
            self._producer,
            name="kafkaloop-producer-poll",
            interval=_POLL_INTERVAL,
            on_loop=not poll_thread,
        )
        self._poller.start()
        # produce_nowait's last on_delivery, on_poll_thread and the report callback made of them.
        self._last_callback: tuple[
            DeliveryCallback | None, bool, Callable[[KafkaError | None, Message], None] | None
        ] = (None, False, None)

    def __repr__(self) -> str:
        return (
            f"<AIOProducer bootstrap.servers={self._bootstrap!r} state={self._state.value} "
            f"in_flight={self.metrics.in_flight}>"
        )

    # -- producing -------------------------------------------------------------------------

    def produce(
        self,
        topic: str,
        value: str | bytes | None = None,
        key: str | bytes | None = None,
        *,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Hand a message to Kafka; the returned future resolves once the broker acknowledged it.

        The message is queued at once, so many calls can be made and their futures gathered
        later. The future raises :class:`DeliveryError` if Kafka reports a failure, or
        :class:`QueueFullError` if the local queue stayed full for ``queue_full_timeout``.
        Cancelling the future (or the task awaiting it) does not withdraw the message.

        The call itself raises, with nothing queued: :class:`QueueFullError` when
        ``max_waiting`` messages already wait for room, :class:`DeliveryError` for a message
        librdkafka refuses at once (too large, an unknown partition), and
        :class:`ProducerClosedError` (or the fatal :class:`DeliveryError`) once the producer is
        closing or has failed, and :class:`ConfigurationError` when it reports only failures.
        """
        if self._refusal is not None:
            raise self._refused()
        if self._failures_only:
            raise self._no_success_reports("produce")
        future: asyncio.Future[RecordMetadata] = self._create_future()
        on_delivery = functools.partial(self._call_soon, self._settle, future)
        if self._waiting or headers is not None or timestamp is not None:
            return self._produce_slow(
                topic, value, key, headers, partition, timestamp, on_delivery, future
            )
        partition = -1 if partition is None else partition
        try:
            # Positional arguments only: keywords would cost a dict per message in the C call.
            self._produce(topic, value, key, partition, on_delivery)
        except (BufferError, KafkaException) as exc:
            return self._produce_failed(exc, topic, value, key, partition, on_delivery, future)
        self._produced += 1
        return future

    def _produce_failed(
        self,
        exc: BaseException,
        topic: str,
        value: str | bytes | None,
        key: str | bytes | None,
        partition: int,
        on_delivery: Callable[[KafkaError | None, Message], None],
        future: asyncio.Future[RecordMetadata],
    ) -> asyncio.Future[RecordMetadata]:
        """produce() when librdkafka refused the message: wait for room in a full queue, or
        raise what went wrong."""
        if isinstance(exc, BufferError):
            self._wait_for_room(
                (topic, value, key, partition), {"on_delivery": on_delivery}, future
            )
            return future
        if isinstance(exc, KafkaException):
            raise DeliveryError(
                exc.args[0], topic, None if partition == -1 else partition
            ) from None
        raise exc

    def _produce_slow(
        self,
        topic: str,
        value: str | bytes | None,
        key: str | bytes | None,
        headers: Headers | None,
        partition: int | None,
        timestamp: int | None,
        on_delivery: Callable[[KafkaError | None, Message], None],
        future: asyncio.Future[RecordMetadata],
    ) -> asyncio.Future[RecordMetadata]:
        """produce() with headers or a timestamp, or while earlier messages wait for room."""
        message = (topic, value, key, -1 if partition is None else partition)
        extra = _extra(on_delivery, headers, timestamp)
        if self._waiting:
            self._wait_for_room(message, extra, future)
            return future
        try:
            self._produce(*message, **extra)
        except BufferError:
            self._wait_for_room(message, extra, future)
        except KafkaException as exc:
            raise DeliveryError(exc.args[0], topic, partition) from None
        else:
            self._produced += 1
        return future

    def produce_nowait(
        self,
        topic: str,
        value: str | bytes | None = None,
        key: str | bytes | None = None,
        *,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
        on_delivery: DeliveryCallback | None = None,
        on_poll_thread: bool = False,
    ) -> None:
        """Hand a message to Kafka without waiting for the outcome.

        ``on_delivery(err, metadata)`` is called once with the outcome: on the event loop, or
        on a thread of the producer's (not the loop) when ``on_poll_thread`` is true (keep that
        callback short and thread-safe); with ``delivery.report.only.error`` set, only for a
        failure. Without a callback, failures are still counted in
        :attr:`metrics` and logged. Raises :class:`QueueFullError` at once when librdkafka's
        queue is full.
        """
        if self._refusal is not None:
            raise self._refused()
        callback: Callable[[KafkaError | None, Message], None] | None
        if on_delivery is None:
            callback = None  # the producer-wide on_delivery counts it
        else:
            # An endpoint passes the same callback every time: its wrapper is made once.
            last = self._last_callback
            if last[0] is on_delivery and last[1] == on_poll_thread:
                callback = last[2]
            else:
                callback = (
                    self._thread_callback(on_delivery)
                    if on_poll_thread
                    else functools.partial(self._call_soon, self._call_on_loop, on_delivery)
                )
                if self._failures_only:
                    callback = functools.partial(self._count_failure_first, callback)
                self._last_callback = (on_delivery, on_poll_thread, callback)
        if self._waiting:
            raise self._queue_full_error()
        try:
            if headers is None and timestamp is None:
                # Positional arguments: keywords would cost a dict per message in the C call.
                self._produce(topic, value, key, -1 if partition is None else partition, callback)
            else:
                self._produce(
                    topic,
                    value,
                    key,
                    -1 if partition is None else partition,
                    **_extra(callback, headers, timestamp),
                )
        except BufferError:
            raise self._queue_full_error() from None
        except KafkaException as exc:
            raise DeliveryError(exc.args[0], topic, partition) from None
        self._produced += 1

    async def produce_many(
        self,
        topic: str,
        values: Iterable[str | bytes | tuple[str | bytes | None, str | bytes | None] | None],
        *,
        headers: Headers | None = None,
        return_exceptions: bool = False,
    ) -> list[RecordMetadata | DeliveryError]:
        """Produce many messages behind one awaitable; results come back in input order.

        Each item is a value, or a ``(key, value)`` pair. The loop does one unit of work for
        the whole batch, not one per message. A failed message raises its
        :class:`DeliveryError` once all are done, or takes its place in the list when
        ``return_exceptions`` is true. Raises :class:`ConfigurationError`, with nothing sent,
        when the producer reports only failures.
        """
        if self._refusal is not None:
            raise self._refused()
        if self._failures_only:
            raise self._no_success_reports("produce_many")
        items = list(values)
        for at, item in enumerate(items):  # before anything is sent
            if isinstance(item, tuple) and len(item) != 2:
                raise ValueError(f"produce_many: item {at} is a tuple but not a (key, value) pair")
        done: asyncio.Future[list[RecordMetadata | DeliveryError]] = self._create_future()
        batch = BatchSettle(
            len(items),
            self._call_soon,
            functools.partial(_delivery_error, topic),
            functools.partial(self._batch_done, done),
            self._settle,
        )
        if items:
            self._batches[done] = (batch, len(items))
        produce = self._producer.produce
        waited_since: float | None = None
        index = 0  # the first item not yet handed over (or failed)
        try:
            while index < len(items) and self._refusal is None:  # else closing, or failed
                if not self._waiting:  # earlier produce() calls wait for room: they go first
                    try:
                        batch.produce(produce, topic, items, index, headers or None)
                    except BufferError:
                        pass
                    except KafkaException as exc:
                        failed = batch.next
                        self._produced += failed - index + 1
                        batch(failed, exc.args[0], None)
                        index, waited_since = failed + 1, None
                        continue
                    if batch.next > index:
                        self._produced += batch.next - index
                        index, waited_since = batch.next, None
                    if index == len(items):
                        break
                # No room: queue_full_timeout bounds a wait without progress, not the batch.
                now = self._loop.time()
                waited_since = waited_since or now
                if now - waited_since >= self._queue_full_timeout:
                    break
                await self._wait_room(waited_since + self._queue_full_timeout)
        except BaseException as exc:  # a bad item (TypeError...), cancelled: the rest is not sent
            unsent = max(index, batch.next)
            self._produced += len(items) - index  # those handed over still settle the batch
            why = (
                KafkaError(KafkaError._DESTROY, "not sent: produce_many was cancelled")
                if isinstance(exc, asyncio.CancelledError)
                else KafkaError(KafkaError._INVALID_ARG, f"not sent: item {unsent} raised {exc!r}")
            )
            for rest in range(unsent, len(items)):
                batch(rest, why, None)
            raise
        if index < len(items):  # no room came, or closing: the rest fails, the batch settles
            full = (
                KafkaError(
                    KafkaError._QUEUE_FULL,
                    str(self._queue_full_error(waited="out")),
                )
                if self._refusal is None
                else KafkaError(KafkaError._DESTROY, "the producer closed before it was sent")
            )
            self._produced += len(items) - index
            for rest in range(index, len(items)):
                batch(rest, full, None)
        results = await asyncio.shield(done) if items else []
        if not return_exceptions:
            for result in results:
                if isinstance(result, DeliveryError):
                    raise result
        return results

    def _batch_done(
        self,
        done: asyncio.Future[list[RecordMetadata | DeliveryError]],
        results: list[RecordMetadata | DeliveryError],
    ) -> None:
        """On the loop: every outcome of a produce_many is known."""
        self._batches.pop(done, None)
        delivered = sum(1 for result in results if type(result) is RecordMetadata)
        self._settle.delivered += delivered
        self._failed_loop += len(results) - delivered
        if not done.done():
            done.set_result(results)

    def _refuse(self, why: str) -> None:
        """From now on, produce calls raise (see _refused)."""
        self._refusal = why
        if self._fast_produce is not None:
            self._fast_produce.open = False

    def _no_success_reports(self, method: str) -> ConfigurationError:
        return ConfigurationError(
            f"{method}() waits for its delivery, but this AIOProducer reports failed "
            "deliveries only (delivery.report.only.error): use produce_nowait(), or a "
            "producer without that setting."
        )

    def _refused(self) -> Exception:
        if self._fatal_error is not None:
            return DeliveryError(self._fatal_error)
        return ProducerClosedError(
            f"This AIOProducer is {self._state.value}: create a new one to produce again."
        )

    # -- delivery reports ------------------------------------------------------------------

    def _settle_failed(
        self, future: asyncio.Future[RecordMetadata], err: KafkaError, msg: Message
    ) -> None:
        """On the loop: an awaited produce failed (self._settle, which called this, then
        looks for room)."""
        self._failed_loop += 1
        if self._fatal_error is not None and err.code() == KafkaError._PURGE_QUEUE:
            err = self._fatal_error  # purged because of it: say why
        error = DeliveryError(err, msg.topic(), msg.partition())
        if future.done():  # cancelled, or failed by a deadline: nobody else will hear of it
            self._failure_log.warning(
                "Message not delivered (its awaiter had stopped waiting): %s", error
            )
        else:
            future.set_exception(error)

    def _call_on_loop(
        self, callback: DeliveryCallback, err: KafkaError | None, msg: Message
    ) -> None:
        settle = self._settle
        if err is None:  # (inlined _count_on_loop: this runs once per message)
            settle.delivered += 1
            error = None
        else:
            error = self._count_on_loop(err, msg)
        try:
            result = callback(error, cast(RecordMetadata, settle.metadata(msg)))
            if result is not None and inspect.isawaitable(result):
                self._track_user_task(result)
        except Exception:
            logger.exception("An on_delivery callback raised on the event loop")
        if settle.room_wanted:
            self._on_room()

    def _user_task_done(self, task: asyncio.Task[Any]) -> None:
        self._user_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("An on_delivery coroutine raised", exc_info=task.exception())

    def _count_on_loop(self, err: KafkaError | None, msg: Message) -> DeliveryError | None:
        if err is None:
            self._settle.delivered += 1
            return None
        if not self._failures_only:  # else counted as its report arrived
            self._failed_loop += 1
        return DeliveryError(err, msg.topic(), msg.partition())

    def _count_failure_first(
        self, callback: Callable[[KafkaError | None, Message], None], err: KafkaError, msg: Message
    ) -> None:
        """When only failures are reported, where librdkafka reports one: count it before
        librdkafka lets go of the message (metrics.delivered is reckoned from what it still
        holds), then pass the report on to the callback's own wrapper."""
        self._count_on_thread(err)
        callback(err, msg)

    def _call_on_thread(
        self, callback: DeliveryCallback, err: KafkaError | None, msg: Message
    ) -> None:
        """An out-of-band callback that asked for a thread of the producer's: on the poll
        thread, or on the callback thread when the loop serves the reports."""
        if err is None:  # (once per message: no further call)
            with self._thread_counts_lock:
                self._delivered_thread += 1
            error = None
        else:
            if not self._failures_only:  # else counted as its report arrived
                self._count_on_thread(err)
            error = DeliveryError(err, msg.topic(), msg.partition())
        try:
            callback(error, cast(RecordMetadata, self._settle.metadata(msg)))
        except Exception:
            logger.exception("An on_delivery callback raised on the poll thread")
        if self._settle.room_wanted:
            self._notify_room()

    def _thread_callback(
        self, on_delivery: DeliveryCallback
    ) -> Callable[[KafkaError | None, Message], None]:
        """The delivery report callback running `on_delivery` on a thread of the producer's."""
        run = functools.partial(self._call_on_thread, on_delivery)
        if not self._poller.on_loop:
            return run  # on the poll thread, where the report arrives
        if self._callback_thread is None:
            self._callback_thread = CallbackThread("kafkaloop-producer-callbacks")
        return functools.partial(self._callback_thread.call_soon, run)

    def _poll(self, timeout: float) -> int:
        """The poller's ``poll``: the callback thread, if any, is woken once per poll."""
        thread = self._callback_thread
        if thread is None:
            return self._producer.poll(timeout)
        return thread.run_held(self._producer.poll, timeout)

    def _on_untracked_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """On librdkafka's calling thread: the outcome of a fire-and-forget message."""
        if err is None:  # (the common case, once per message: no further call)
            with self._thread_counts_lock:
                self._delivered_thread += 1
        else:
            self._count_on_thread(err)
            self._failure_log.warning(
                "Fire-and-forget message not delivered: %s",
                DeliveryError(err, msg.topic(), msg.partition()),
            )
        if self._settle.room_wanted:
            self._notify_room()

    def _count_on_thread(self, err: KafkaError | None) -> None:
        with self._thread_counts_lock:
            if err is None:
                self._delivered_thread += 1
            else:
                self._failed_thread += 1

    def _notify_room(self) -> None:
        if self._settle.room_wanted:
            self._settle.room_wanted = False
            self._bridge.call_soon(self._on_room)

    # -- a full queue ----------------------------------------------------------------------

    def _queue_full_error(
        self, undelivered: int | None = None, *, waited: Literal["out", "crowded"] | None = None
    ) -> QueueFullError:
        """`waited`: an awaited produce waited out queue_full_timeout, or found max_waiting
        others already waiting (None: a produce_nowait())."""
        if undelivered is None:
            undelivered = self._undelivered()
        if waited == "out":
            advice = (
                f"It waited queue_full_timeout ({self._queue_full_timeout:g}s) for room. Slow "
                "down, or raise queue_full_timeout,"
            )
        elif waited == "crowded":
            advice = (
                f"It found max_waiting ({self._max_waiting}) produce() calls already waiting. "
                "Slow down, or raise max_waiting,"
            )
        else:
            advice = "Await produce() to wait for room, slow down, or raise"
        return QueueFullError(
            f"librdkafka's local queue is full ({undelivered} messages not yet "
            "delivered): Kafka is slow or unreachable, or messages come faster than it takes "
            f"them. {advice} queue.buffering.max.messages / queue.buffering.max.kbytes."
        )

    def _wait_for_room(
        self, message: tuple[Any, ...], extra: dict[str, Any], future: asyncio.Future[Any]
    ) -> None:
        if len(self._waiting) >= self._max_waiting:
            raise self._queue_full_error(waited="crowded")
        deadline = self._loop.time() + self._queue_full_timeout
        self._waiting.append(_Waiting(message, extra, future, deadline))
        self._produced += 1
        self._settle.room_wanted = True
        if self._waiting_timer is None:
            self._schedule_waiting_timer()

    def _schedule_waiting_timer(self) -> None:
        # Deliveries announce room (_notify_room); this timer is the fallback, and it expires
        # the messages that waited too long.
        self._waiting_timer = self._loop.call_later(0.05, self._on_waiting_timer)

    def _on_waiting_timer(self) -> None:
        self._waiting_timer = None
        self._on_room()
        now = self._loop.time()
        undelivered = self._undelivered()  # once for all that expire now
        while self._waiting and self._waiting[0].deadline <= now:
            waiting = self._waiting.popleft()
            self._failed_loop += 1
            error = self._queue_full_error(undelivered, waited="out")
            if not waiting.future.done():
                waiting.future.set_exception(error)
            else:
                self._failure_log.warning("Message not produced: %s", error)
        if self._waiting:
            self._settle.room_wanted = True
            self._schedule_waiting_timer()

    def _on_room(self) -> None:
        """On the loop, when deliveries may have made room: hand over waiting messages."""
        self._settle.room_wanted = False
        waiting = self._waiting
        while waiting:
            head = waiting[0]
            try:
                self._producer.produce(*head.message, **head.extra)
            except BufferError:
                self._settle.room_wanted = True
                return
            except KafkaException as exc:
                self._failed_loop += 1
                if not head.future.done():
                    head.future.set_exception(DeliveryError(exc.args[0], head.message[0]))
            waiting.popleft()
        if self._waiting_timer is not None:
            self._waiting_timer.cancel()
            self._waiting_timer = None
        self._room.set()

    async def _wait_room(self, deadline: float) -> None:
        """Wait (for produce_many) until deliveries announce room, for 50 ms at most; the
        caller then tries again, until `deadline`."""
        self._room.clear()
        self._settle.room_wanted = True
        left = min(deadline - self._loop.time(), 0.05)
        if left <= 0:
            await asyncio.sleep(0)  # always let the loop run: deliveries make the room
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), left)

    # -- client-level callbacks ------------------------------------------------------------

    def _on_error(self, err: KafkaError) -> None:
        """Where librdkafka's callbacks run (the loop, the poll thread, or the thread of a
        blocking flush or transaction call): a client-level error."""
        self.last_error = err
        if err.fatal():
            self._fatal_error = err
            self._refuse("fatal")
            logger.error("Kafka producer fatal error, it cannot continue: %s", err.str())
        elif err.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
            # Wrong credentials do not fix themselves: fail fast, as the Java client does,
            # instead of letting every message wait out message.timeout.ms.
            self._fatal_error = err
            self._refuse("fatal")
            logger.error("Kafka producer: %s; check sasl.username / sasl.password", err.str())
            self._producer.purge(in_queue=True, in_flight=False, blocking=False)
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            logger.warning("Kafka producer: all brokers are down: %s", err.str())
        else:
            logger.info("Kafka producer: %s", err.str())
        self._forward("error_cb", err)

    def _forward(self, name: str, *args: Any) -> None:
        callback = self._user_callbacks.get(name)
        if callback is not None:
            self._bridge.call_soon(self._run_user_callback, callback, args)

    def _run_user_callback(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        result = callback(*args)
        if inspect.isawaitable(result):
            self._track_user_task(result)

    def _track_user_task(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._user_tasks.add(task)
        task.add_done_callback(self._user_task_done)

    # -- flushing and closing --------------------------------------------------------------

    def _produced_so_far(self) -> int:
        return self._produced + (0 if self._fast_produce is None else self._fast_produce.produced)

    @property
    def metrics(self) -> ProducerMetrics:
        """Counts of produced, delivered, failed and waiting messages."""
        if self._final_metrics is not None:
            return self._final_metrics
        produced = self._produced_so_far()
        return self._reckon(produced, len(self._producer) if self._failures_only else 0)

    def _reckon(self, produced: int, held: int) -> ProducerMetrics:
        """The counts, from what was produced and then what librdkafka held.

        Read in this order when only failures are reported: what was produced, what
        librdkafka still holds (its messages, and the events it has queued for the loop),
        then what failed. Every failure is counted before librdkafka lets go of its message
        (_count_failure_first), so produced - held - failed is never more than were
        delivered; the count shown is the highest such bound yet, so it never goes back."""
        with self._thread_counts_lock:
            delivered_thread, failed_thread = self._delivered_thread, self._failed_thread
            failed = self._failed_loop + failed_thread
            if self._failures_only:
                self._delivered_bound = max(self._delivered_bound, produced - held - failed)
                delivered = self._delivered_bound
            else:
                delivered = self._settle.delivered + delivered_thread
        return ProducerMetrics(
            produced=produced,
            delivered=delivered,
            failed=failed,
            waiting_for_room=len(self._waiting),
        )

    @property
    def closed(self) -> bool:
        """Whether close() has begun."""
        return self._state is not _State.OPEN

    @property
    def fatal_error(self) -> KafkaError | None:
        """What made this producer refuse all messages (a fatal or authentication error)."""
        return self._fatal_error

    async def flush(self, timeout: float | None = None) -> int:
        """Wait until every message so far is delivered or failed; return how many are not.

        ``timeout`` in seconds, None for no limit (each message still fails after
        ``message.timeout.ms``). Every future of a settled message is resolved on return.
        With ``delivery.report.only.error`` set, a flush that times out returns at most what
        librdkafka still holds, which may count events it queued (log lines, errors) too.
        """
        deadline = None if timeout is None else self._loop.time() + timeout
        while self._waiting:
            self._on_room()
            if not self._waiting:
                break
            if deadline is not None and self._loop.time() >= deadline:
                break
            await self._bridge.run_blocking(self._producer.flush, 0.05)
        # In slices: a flush() whose caller was cancelled lets go of the blocking lane within
        # one, instead of holding a later close(timeout) behind it for message.timeout.ms.
        while True:
            left = _FLUSH_SLICE if deadline is None else deadline - self._loop.time()
            produced = self._produced_so_far()
            remaining = await self._bridge.run_blocking(
                self._producer.flush, max(0.0, min(left, _FLUSH_SLICE))
            )
            if not remaining:
                if self._failures_only:  # librdkafka let go of every message produced before
                    self._reckon(produced, held=0)
                break
            if not self._undelivered():
                break
            if deadline is not None and self._loop.time() >= deadline:
                break
        self._bridge.drain()
        if self._callback_thread is not None:  # on_poll_thread callbacks run before return
            await self._callback_thread.caught_up(self._bridge)
        return self._undelivered()

    def _undelivered(self) -> int:
        """Messages accepted and not yet delivered or failed. Not librdkafka's own count: that
        one includes the events (log lines, errors) it has queued for the application."""
        known = sum(size - batch.remaining for batch, size in self._batches.values())
        return self.metrics.in_flight - known

    async def close(self, timeout: float | None = None) -> int:
        """Flush, stop serving callbacks and return how many messages were still undelivered
        when it gave up (deliveries that failed before are in ``metrics.failed``).

        Idempotent: later calls wait for the first and return the same number. Messages still
        undelivered after ``timeout`` are purged: their futures raise :class:`DeliveryError`;
        those still waiting for room in the local queue raise :class:`ProducerClosedError`.
        """
        if self._close_task is None:
            self._state = _State.CLOSING
            self._refuse("closing")
            self._close_task = self._loop.create_task(self._close(timeout))
        return await asyncio.shield(self._close_task)

    async def _close(self, timeout: float | None) -> int:
        undelivered = await self.flush(timeout)
        if undelivered:
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            await self._bridge.run_blocking(self._producer.flush, 5.0)
            for waiting in self._waiting:
                self._failed_loop += 1
                if not waiting.future.done():
                    waiting.future.set_exception(
                        ProducerClosedError("The producer closed before this message had room.")
                    )
            self._waiting.clear()
            logger.warning("AIOProducer closed with %d message(s) not delivered", undelivered)
        await self._poller.stop(self._bridge)
        if self._callback_thread is not None:
            await self._callback_thread.stop(self._bridge)
        self._bridge.drain()
        if self._waiting_timer is not None:
            self._waiting_timer.cancel()
        self._bridge.close()
        self._last_callback = (None, False, None)  # (nor keep the user's callback alive)
        self._final_metrics = self.metrics  # librdkafka's queue is no longer served
        self._state = _State.CLOSED
        self._refuse("closed")
        return undelivered

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- transactions ----------------------------------------------------------------------

    async def init_transactions(self, timeout: float = 30.0) -> None:
        """Register ``transactional.id`` with the coordinator (once, before the first one)."""
        await self._transaction_call(
            "init_transactions()", self._producer.init_transactions, timeout
        )

    async def begin_transaction(self) -> None:
        """Start a transaction."""
        await self._transaction_call("begin_transaction()", self._producer.begin_transaction)

    async def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], group_metadata: Any, timeout: float = 30.0
    ) -> None:
        """Commit a consumer's offsets as part of the current transaction."""
        await self._transaction_call(
            "send_offsets_to_transaction()",
            self._producer.send_offsets_to_transaction,
            offsets,
            group_metadata,
            timeout,
        )

    async def commit_transaction(self, timeout: float = 30.0) -> None:
        """Flush and commit the current transaction."""
        await self._transaction_call(
            "commit_transaction()", self._producer.commit_transaction, timeout
        )
        self._bridge.drain()

    async def abort_transaction(self, timeout: float = 30.0) -> None:
        """Abort the current transaction; its messages are never shown to read_committed.

        Its messages not yet delivered fail (``_PURGE_QUEUE`` / ``_PURGE_INFLIGHT``)."""
        await self._transaction_call(
            "abort_transaction()", self._producer.abort_transaction, timeout
        )
        self._bridge.drain()

    async def _transaction_call(self, operation: str, call: Callable[..., Any], *args: Any) -> None:
        """`call` on a thread; librdkafka's KafkaException raised as a TransactionError."""
        try:
            await self._bridge.run_blocking(call, *args)
        except KafkaException as exc:
            raise TransactionError(operation, kafka_error_of(exc)) from None
