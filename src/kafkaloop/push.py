"""Live push: one fan-out consumer per process, many WebSocket or SSE clients.

Each client gets a bounded queue. A client that cannot keep up has what does not fit dropped
(and counted); one still dropping items more than ``slow_timeout`` seconds after its first drop
is disconnected (checked as items arrive for it). Either way it
never holds up the others, and memory stays bounded by ``queue_size`` per client.

With nobody subscribed for ``idle_pause`` seconds the consumer stops fetching (its partitions
paused): records nobody will see cost the process nothing. The first client to come back
resumes it from the records stamped at or after the moment it subscribed, so nothing produced
after a client subscribed is missed, however long the resume takes.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition

from kafkaloop._consumer import BACKGROUND_FETCH, AIOConsumer
from kafkaloop._exceptions import ConsumerError, KafkaloopError
from kafkaloop._logging import RateLimitedLog, logger
from kafkaloop._models import ConsumerRecord

__all__ = ["GOING_AWAY", "TOO_SLOW", "Broadcaster", "SlowClientError", "Subscription"]

_READ = 500
"""Most records offered per read: the encoding and offering run on the loop."""
_PAUSED_READ = 0.25
"""Seconds one read waits while paused: reads of nothing keep the consumer in its group, and
a subscriber waits about this long for the resume to begin."""
METADATA_REFRESH_MS = 30_000
"""How often the push consumer asks for its topics' partitions (librdkafka's default: 5
minutes): a partition the topics gain is pushed from, at most, about this long after it came."""
_RESUME_TIMEOUT = 5.0
"""Seconds each of the resume's questions to the broker may take before it is tried again."""


# WebSocket close codes: "try again later" for a client too slow, "going away" at shutdown.
TOO_SLOW = 1013
GOING_AWAY = 1001


class SlowClientError(KafkaloopError):
    """The subscription ended: the client stayed full too long, or the service is stopping.

    ``code`` is the WebSocket close code to send: 1013 (too slow) or 1001 (going away).
    """

    def __init__(self, reason: str, code: int = TOO_SLOW) -> None:
        super().__init__(reason)
        self.code = code


class Subscription:
    """One client's view of the broadcast: an async iterator over payloads."""

    def __init__(self, hub: Broadcaster, queue_size: int, slow_timeout: float) -> None:
        self._hub = hub
        self._items: collections.deque[str] = collections.deque()
        self._queue_size = queue_size
        self._slow_timeout = slow_timeout
        self._ready = asyncio.Event()
        self._full_since: float | None = None
        self.dropped = 0
        """Payloads this client missed because its queue was full."""
        self.closed_reason: str | None = None
        self.close_code = TOO_SLOW

    def offer(self, payload: str) -> bool:
        """Queue a payload (True), or drop it (and count it) when this client is full."""
        if self.closed_reason is not None:
            return False
        if len(self._items) < self._queue_size:
            self._items.append(payload)
            self._full_since = None
            self._ready.set()
            return True
        self.dropped += 1
        self._hub.dropped += 1
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
        elif now - self._full_since > self._slow_timeout:
            self.close(f"too slow: {self.dropped} items dropped")
        return False

    def close(self, reason: str = "closed", code: int = TOO_SLOW) -> None:
        """Stop this subscription; the reader's next wait raises :class:`SlowClientError`."""
        if self.closed_reason is None:
            self.closed_reason = reason
            self.close_code = code
            self._hub._unsubscribe(self)
            self._ready.set()

    async def get(self) -> str:
        """The next payload; raises SlowClientError once the subscription was closed."""
        while not self._items:
            if self.closed_reason is not None:
                raise SlowClientError(self.closed_reason, self.close_code)
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        while True:
            try:
                yield await self.get()
            except SlowClientError:
                return


class Broadcaster:
    """Reads `topics` with a fan-out consumer and offers each record, encoded once, to every
    subscriber. ``await start()`` returns once every partition is assigned at its current end,
    so anything produced afterwards reaches the clients subscribed by then.

    With no subscriber for `idle_pause` seconds (None: never) fetching stops until one comes.
    The resume starts each partition at its first record stamped at or after the moment the
    first subscriber came, by this process's wall clock (the resume takes up to about a
    second). Records are stamped by their producer (or, on a topic with
    ``message.timestamp.type=LogAppendTime``, by the broker): one whose clock runs X behind
    this one's can have the records it made within X after that moment missed."""

    def __init__(
        self,
        config: Mapping[str, Any],
        topics: Sequence[str],
        *,
        encode: Callable[[ConsumerRecord], str],
        queue_size: int = 256,
        slow_timeout: float = 10.0,
        idle_pause: float | None = 5.0,
    ) -> None:
        self._consumer = AIOConsumer.fan_out(
            {
                **BACKGROUND_FETCH,
                "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
                **config,
            },
            topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        self._encode = encode
        self._queue_size = queue_size
        self._slow_timeout = slow_timeout
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._assigned = asyncio.Event()
        # Each topic's partitions at start() (None: start() could not ask). A partition not
        # there came since, and is read whole; a topic listed with none (the broker could not
        # say) starts at its end, as every partition does when start() could not ask.
        self._at_start: dict[str, frozenset[int]] | None = None
        self._next: dict[tuple[str, int], int] = {}  # where each partition's reading is
        # Partitions a resume must seek before they are read again (their place in _next, if
        # any, is from before the last pause), and partitions assigned whose pause state the
        # hub has yet to set: librdkafka keeps a partition paused through the group taking it
        # away and giving it back, and reads a new one at once, whatever the hub is doing.
        self._stale: set[tuple[str, int]] = set()
        self._unsettled: set[tuple[str, int]] = set()
        self._stopping = False
        self._idle_pause = idle_pause
        self._idle_since: float | None = time.monotonic()
        self._paused = False
        # When the subscribers last went from none to some: where a resume starts reading.
        self._wanted_since_ms: int | None = None
        self._resumed_since_ms = 0  # the last resume's (where a stale partition starts)
        self._resume_failures = RateLimitedLog(logger)
        self._settle_failures = RateLimitedLog(logger)
        self.delivered = 0
        """Payloads handed to subscribers' queues."""
        self.dropped = 0
        """Payloads dropped for slow subscribers, all clients together."""

    async def _on_assign(self, consumer: AIOConsumer, partitions: list[TopicPartition]) -> None:
        """Where each partition starts (the consumer assigns them with the offsets set here):
        one assigned before (the group lost it, say), where the push left off, or, if the hub
        paused and resumed since, at the first record stamped since the resume's subscriber
        came; one the topics had at start(), at its end as of now, explicitly ("latest" would
        be resolved only at the first fetch, and a message produced in between would be
        missed); one they gained since (heard of at the consumer's next metadata refresh,
        after some of it may have come), at its beginning. The next turn of the reading
        pauses or resumes them as the hub is (:meth:`_settle`).

        Once the broker fails to answer, the rest start without asking it (:meth:`_fallback`),
        so a rebalance waits for one question's timeout, not one per partition."""
        broker_answers = True
        try:
            for partition in partitions:
                where = (partition.topic, partition.partition)
                if broker_answers:
                    try:
                        partition.offset = await self._start_of(consumer, partition)
                    except Exception as exc:
                        logger.warning(
                            "The push consumer could not ask where %s [%d] is (%r); it places "
                            "it and the rest of this assignment without asking",
                            partition.topic,
                            partition.partition,
                            exc,
                        )
                        broker_answers = False
                if not broker_answers:
                    partition.offset = self._fallback(where)
                if self._paused:
                    self._stale.add(where)  # a resume seeks it, wherever it starts now
                if partition.offset >= 0:
                    self._next[where] = partition.offset
                else:  # (where it is becomes known at its first read)
                    self._next.pop(where, None)
                self._unsettled.add(where)
        finally:
            self._assigned.set()

    def _fallback(self, where: tuple[str, int]) -> int:
        """Where a partition starts when the broker cannot say where it ends: where the push
        left off (unclamped: one gone from the log is read from its end, as is librdkafka's
        "latest"); its end if it left off before a pause (what came since its client did may
        be missed, rather than everything since the pause pushed again) or it is not new; its
        beginning if it is."""
        stale = where in self._stale and not self._paused
        if stale:
            self._stale.discard(where)
        left_off = self._next.get(where)
        if stale or (left_off is None and self._old(where)):
            return OFFSET_END
        return OFFSET_BEGINNING if left_off is None else left_off

    def _old(self, where: tuple[str, int]) -> bool:
        """Whether the topics had this partition at start() (or the hub cannot tell)."""
        if self._at_start is None:
            return True
        listed = self._at_start.get(where[0])
        return listed is not None and (not listed or where[1] in listed)

    async def _start_of(self, consumer: AIOConsumer, partition: TopicPartition) -> int:
        where = (partition.topic, partition.partition)
        if where in self._stale and not self._paused:
            [start] = await self._starts([partition], self._resumed_since_ms)
            self._stale.discard(where)
            return start
        low, high = await consumer.watermarks(partition, _RESUME_TIMEOUT)
        left_off = self._next.get(where)
        if left_off is not None:
            return min(max(left_off, low), high)
        return high if self._old(where) else low

    async def _on_revoke(self, _consumer: AIOConsumer, partitions: list[TopicPartition]) -> None:
        self._unsettled.difference_update((tp.topic, tp.partition) for tp in partitions)

    async def _settle(self) -> None:
        """Pause or resume the partitions assigned since the last turn, as the hub is: a
        resumed one reads on from where the push is in it. One taken away meanwhile is left
        alone (given back, it is assigned, and settled, again)."""
        assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        ready = [where for where in self._unsettled if where in assigned]
        if not ready:
            return  # (assigned just after the rebalance callback: on a later turn)
        self._unsettled.difference_update(ready)
        partitions = [TopicPartition(*where) for where in ready]
        try:
            if self._paused:
                await self._consumer.pause(partitions)
                return
            for where in ready:
                if where in self._next:
                    try:
                        await self._consumer.seek(TopicPartition(*where, self._next[where]))
                    except KafkaException as exc:  # taken away during the awaits, most likely
                        self._settle_failures.warning(
                            "The push consumer could not seek %s [%d]: %r", *where, exc
                        )
            await self._consumer.resume(partitions)
        except Exception as exc:
            self._settle_failures.warning(
                "The push consumer could not settle its partitions (tried again): %r", exc
            )
            assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
            self._unsettled.update(w for w in ready if w in assigned)

    @property
    def subscribers(self) -> int:
        """How many clients are subscribed now."""
        return len(self._subscribers)

    @property
    def paused(self) -> bool:
        """Whether fetching is stopped for want of subscribers."""
        return self._paused

    def subscribe(self) -> Subscription:
        """A new client's subscription; close it when the client goes."""
        subscription = Subscription(self, self._queue_size, self._slow_timeout)
        if self._stopping:
            subscription.close("the service is stopping", GOING_AWAY)
            return subscription
        if not self._subscribers:  # (even while a pause is under way: it may end paused)
            self._wanted_since_ms = time.time_ns() // 1_000_000  # as records are stamped
        self._subscribers.add(subscription)
        self._idle_since = None
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
        if not self._subscribers:
            self._wanted_since_ms = None  # nobody left to resume for
            if self._idle_since is None:
                self._idle_since = time.monotonic()

    def close_all(self, reason: str = "the service is stopping") -> None:
        """End every subscription (and any new one) with "going away": streams end, so a
        server draining its connections before shutdown is not held up by them."""
        self._stopping = True
        for subscription in list(self._subscribers):
            subscription.close(reason, GOING_AWAY)

    async def start(self, timeout: float = 30.0) -> None:
        """Start reading; return once the partitions are assigned (or after `timeout`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Every topic's, not only the subscribed ones': a regex subscription's are not known
        # here, and a topic missing from the answer is one made since.
        try:
            found = await self._consumer.topics(timeout)
        except KafkaException as exc:
            logger.warning(
                "The push consumer could not list the topics (%r): partitions added from now "
                "on will be pushed from the moment it hears of them",
                exc,
            )
        else:
            self._at_start = {topic: frozenset(listed) for topic, listed in found.items()}
        self._task = loop.create_task(self._run(), name="kafkaloop-push")
        try:
            async with asyncio.timeout_at(deadline):
                await self._assigned.wait()
        except TimeoutError:
            logger.warning(
                "The push consumer has no partitions after %.0fs; items will be pushed once it has",
                timeout,
            )

    async def _run(self) -> None:
        while True:
            try:
                if self._paused:
                    if self._subscribers:
                        await self._try_resume()
                elif self._idle_too_long():
                    await self._pause()
                if self._unsettled:
                    await self._settle()
                records = await self._consumer.getmany(
                    max_records=_READ, timeout=_PAUSED_READ if self._paused else 1.0
                )
                reached = self._next  # (at once: a rebalance may come during any await)
                for record in records:
                    reached[record.topic, record.partition] = record.offset + 1
                if self._paused and records:
                    await self._pause()  # partitions assigned while paused: pause them too
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("The push consumer failed a read; reading goes on")
                await asyncio.sleep(1.0)
                continue
            if len(records) < _READ:
                # Let records gather: under load one read per 10 ms, not one per message
                # (each read is a round trip to the consumer's thread).
                await asyncio.sleep(0.01)
            if not self._subscribers:
                continue  # nobody to push to: do not even encode
            for record in records:
                try:
                    payload = self._encode(record)
                except Exception:
                    logger.exception(
                        "Could not encode %s[%d]@%d for push; skipped",
                        record.topic,
                        record.partition,
                        record.offset,
                    )
                    continue
                self._push(payload)

    def _push(self, payload: str) -> None:
        """Offer `payload` to every subscriber; count those whose queue took it."""
        for subscription in list(self._subscribers):
            if subscription.offer(payload):
                self.delivered += 1

    def _idle_too_long(self) -> bool:
        return (
            self._idle_pause is not None
            and self._idle_since is not None
            and not self._subscribers
            and time.monotonic() - self._idle_since >= self._idle_pause
        )

    async def _pause(self) -> None:
        partitions = self._consumer.assignment()
        if partitions:
            await self._consumer.pause(partitions)
            self._paused = True
            paused = {(tp.topic, tp.partition) for tp in partitions}
            self._stale |= paused | self._next.keys()  # the partitions a resume must seek
            self._unsettled -= paused

    async def _try_resume(self) -> None:
        """Resume, or log why not: the read that follows keeps the consumer in its group, and
        the next turn tries again."""
        try:
            await self._resume()
        except Exception as exc:
            self._resume_failures.warning("The push consumer could not resume yet: %r", exc)

    async def _resume(self) -> None:
        """Start each partition at its first record stamped since the first subscriber came
        (:meth:`_starts`) and resume it. A partition the group gives back later starts there
        too (:meth:`_on_assign`)."""
        since = self._wanted_since_ms
        if since is None:
            since = time.time_ns() // 1_000_000
        partitions = self._consumer.assignment()
        starts = await self._starts(partitions, since)
        for tp, start in zip(partitions, starts, strict=True):
            await self._consumer.seek(TopicPartition(tp.topic, tp.partition, start))
            self._next[tp.topic, tp.partition] = start
        await self._consumer.resume(partitions)
        self._resumed_since_ms = since
        self._paused = False
        resumed = {(tp.topic, tp.partition) for tp in partitions}
        self._stale -= resumed
        self._unsettled -= resumed

    async def _starts(self, partitions: Sequence[TopicPartition], since: int) -> list[int]:
        """Each partition's first record stamped at or after `since` (ms), or its end as it is
        now where there is none yet (asked first: a record appended after that is stamped
        later, and found)."""
        if not partitions:
            return []
        ends = [(await self._consumer.watermarks(tp, _RESUME_TIMEOUT))[1] for tp in partitions]
        found = await self._consumer.offsets_for_times(
            [TopicPartition(tp.topic, tp.partition, since) for tp in partitions],
            _RESUME_TIMEOUT,
        )
        starts = []
        for tp, end, first in zip(partitions, ends, found, strict=True):
            if first.error is not None:
                raise ConsumerError(
                    f"No offset for {tp.topic} [{tp.partition}] at {since} ms: {first.error}",
                    error=first.error,
                )
            starts.append(first.offset if first.offset >= 0 else end)
        return starts

    async def stop(self) -> None:
        """Stop reading, end every subscription, close the consumer."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.close_all()
        await self._consumer.close()

    def lag(self) -> int:
        """Records the push consumer is behind its topics (0 while paused: nobody waits)."""
        if self._consumer.closed or self._paused:
            return 0
        return sum(self._consumer.lag().values())

    def stats(self) -> dict[str, Any]:
        """Subscribers, delivered and dropped counts."""
        return {
            "subscribers": self.subscribers,
            "paused": self.paused,
            "delivered": self.delivered,
            "dropped": self.dropped,
        }
