"""AIOAdminClient: confluent-kafka's AdminClient as coroutines, with errors that name the topic.

AdminClient operations return ``concurrent.futures.Future`` objects that librdkafka settles on
its own background thread; the bridge turns each into an asyncio future settled on the loop.
The few calls that block (metadata) run on the bridge's thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self, TypeVar

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConsumerGroupDescription,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from kafkaloop._bridge import LoopBridge, PollThread
from kafkaloop._config import make_client
from kafkaloop._exceptions import (
    AdminError,
    AdminErrorGroup,
    ClientClosedError,
    TopicAlreadyExistsError,
    TopicMismatchError,
    UnknownTopicError,
    kafka_error_of,
)
from kafkaloop._logging import RateLimitedLog, librdkafka_logger, logger
from kafkaloop._models import BrokerInfo, ClusterInfo, PartitionInfo, TopicInfo

__all__ = ["AIOAdminClient"]

T = TypeVar("T")

_METADATA_THREADS = 4
"""Metadata requests one admin client runs at once (each blocks a thread until answered)."""


def _led(topic: Any, partitions: int = 1) -> bool:
    """A metadata topic entry is there, without error, with at least `partitions`
    partitions, and every partition has a leader."""
    return (
        topic is not None
        and topic.error is None
        and len(topic.partitions) >= partitions
        and all(p.leader >= 0 for p in topic.partitions.values())
    )


class AIOAdminClient:
    """Kafka admin operations as coroutines. Create it inside a running event loop.

    Calls about several topics settle every topic, then raise: the topic's own
    :class:`AdminError` when one was asked for, an :class:`AdminErrorGroup` (one error per
    failed topic, and the names of those that succeeded) otherwise. (:meth:`ensure_topics`
    raises by how many topics are shaped otherwise: see there.)

    ``operation_timeout`` (seconds) bounds every call: the broker's work for creations,
    deletions and new partitions, each request of the others (librdkafka's own default for
    those is 60 s).
    """

    def __init__(self, config: Mapping[str, Any], *, operation_timeout: float = 30.0) -> None:
        self._bridge = LoopBridge.for_running_loop("AIOAdminClient")
        self._operation_timeout = operation_timeout
        # For the calls the broker works on: its time, and the request's (which includes
        # finding the controller: librdkafka's 60 s otherwise, with the cluster unreachable).
        self._timeouts = {
            "operation_timeout": operation_timeout,
            "request_timeout": operation_timeout + 1.0,  # (the broker's answer, in time)
        }
        self._error_log = RateLimitedLog(logger)
        conf = dict(config)
        conf.setdefault("logger", librdkafka_logger)
        conf.setdefault("error_cb", self._on_error)
        self._bootstrap = str(conf.get("bootstrap.servers", ""))
        self._admin = make_client(AdminClient, conf, config, "admin client")
        self._poll_thread = PollThread(self._admin.poll, name="kafkaloop-admin-poll", interval=0.2)
        self._poll_thread.start()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<AIOAdminClient bootstrap.servers={self._bootstrap!r} state={state}>"

    def _on_error(self, err: KafkaError) -> None:
        # Rate-limited: a cluster that is down reports every failed connection attempt.
        self._error_log.warning("Kafka admin client: %s", err.str())

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("This AIOAdminClient is closed: create a new one.")

    async def _settle(
        self, operation: str, futures: Mapping[str, Future[Any]], *, many: bool
    ) -> dict[str, Any]:
        """Await every per-topic future; raise the failures as described on the class."""
        names = list(futures)
        outcomes = await asyncio.gather(
            *(self._bridge.wrap_future(futures[name]) for name in names), return_exceptions=True
        )
        results: dict[str, Any] = {}
        errors: list[AdminError] = []
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                errors.append(AdminError.from_kafka(kafka_error_of(outcome), operation, name))
            else:
                results[name] = outcome
        if errors:
            if not many and len(errors) == 1:
                raise errors[0]
            raise AdminErrorGroup(
                f"{operation} failed for {len(errors)} of {len(names)} topics",
                errors,
                list(results),
            )
        return results

    # -- topics ----------------------------------------------------------------------------

    async def create_topics(
        self, new_topics: Sequence[NewTopic], *, validate_only: bool = False
    ) -> None:
        """Create topics (``confluent_kafka.admin.NewTopic``).

        Returns once the metadata a broker returns shows each created topic with a leader for
        every partition (the controller commits a topic before the brokers learn of it), so
        the next metadata call or produce finds it; waits about ``operation_timeout`` at most.
        """
        self._check_open()
        futures = self._admin.create_topics(
            list(new_topics), validate_only=validate_only, **self._timeouts
        )
        try:
            created = list(await self._settle("create_topics", futures, many=len(futures) > 1))
        except AdminErrorGroup as group:
            if not validate_only:
                await self._until_listed(group.succeeded, listed=True)
            raise
        if not validate_only:
            await self._until_listed(created, listed=True)

    async def delete_topics(self, topics: Sequence[str]) -> None:
        """Delete topics by name; returns once the metadata a broker returns no longer lists
        them (about ``operation_timeout`` at most), so the names can be created again."""
        self._check_open()
        futures = self._admin.delete_topics(list(topics), **self._timeouts)
        try:
            deleted = list(await self._settle("delete_topics", futures, many=len(futures) > 1))
        except AdminErrorGroup as group:
            await self._until_listed(group.succeeded, listed=False)
            raise
        await self._until_listed(deleted, listed=False)

    async def _until_listed(
        self, names: Sequence[str], *, listed: bool, partitions: Mapping[str, int] | None = None
    ) -> None:
        """Wait until the metadata a broker returns lists every name, each partition led
        (``listed``; with at least ``partitions[name]`` of them when given), or none of them.
        After about ``operation_timeout`` (a metadata request that fails meanwhile counts as
        not yet), log a warning and return: the operation itself succeeded, only the brokers
        are slow to show it."""
        least = partitions or {}
        if not names:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._operation_timeout
        pause = 0.01
        while True:
            left = deadline - loop.time()
            try:
                topics = (await self._metadata(None, timeout=max(left, 0.1))).topics
            except AdminError:
                waiting = list(names)
            else:
                waiting = [
                    name
                    for name in names
                    if (_led(topics.get(name), least.get(name, 1)) if listed else name in topics)
                    != listed
                ]
            if not waiting:
                return
            if loop.time() >= deadline:
                logger.warning(
                    "topics %s: the metadata still %s them%s after %.0f s",
                    ", ".join(waiting),
                    "does not show" if listed else "shows",
                    " with all their partitions led" if listed and partitions else "",
                    self._operation_timeout,
                )
                return
            await asyncio.sleep(min(pause, max(deadline - loop.time(), 0.0)))
            pause = min(pause * 2, 0.2)

    async def list_topics(self, *, internal: bool = False) -> list[str]:
        """Names of the cluster's topics, sorted; ``internal`` includes ``__consumer_offsets``."""
        metadata = await self._metadata(None)
        return sorted(name for name in metadata.topics if internal or not name.startswith("__"))

    async def describe_topics(self, topics: Iterable[str]) -> dict[str, TopicInfo]:
        """Partitions, leaders and replicas of each topic; :class:`UnknownTopicError` if absent."""
        wanted = list(topics)
        metadata = await self._metadata(None)
        found: dict[str, TopicInfo] = {}
        errors: list[AdminError] = []
        for name in wanted:
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None:
                error = (
                    topic.error
                    if topic is not None
                    else KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)
                )
                errors.append(AdminError.from_kafka(error, "describe_topics", name))
                continue
            found[name] = TopicInfo(
                name,
                tuple(
                    PartitionInfo(p.id, p.leader, tuple(p.replicas), tuple(p.isrs))
                    for p in sorted(topic.partitions.values(), key=lambda p: p.id)
                ),
            )
        if errors:
            if len(wanted) == 1:
                raise errors[0]
            raise AdminErrorGroup(
                f"describe_topics failed for {len(errors)} of {len(wanted)} topics",
                errors,
                list(found),
            )
        return found

    async def create_partitions(self, new_totals: Mapping[str, int]) -> None:
        """Grow topics to the given total partition counts (``{"items": 6}``).

        Returns once the metadata a broker returns shows each grown topic with that many
        partitions, each with a leader; waits about ``operation_timeout`` at most.
        """
        self._check_open()
        futures = self._admin.create_partitions(
            [NewPartitions(topic, total) for topic, total in new_totals.items()], **self._timeouts
        )
        try:
            grown = list(await self._settle("create_partitions", futures, many=len(new_totals) > 1))
        except AdminErrorGroup as group:
            await self._until_listed(group.succeeded, listed=True, partitions=new_totals)
            raise
        await self._until_listed(grown, listed=True, partitions=new_totals)

    async def ensure_topics(self, specs: Sequence[NewTopic]) -> list[str]:
        """Create the topics that are missing; check that the others have the same shape.

        Returns the names created. An existing topic with fewer partitions or another
        replication factor than its spec raises :class:`TopicMismatchError` (whatever the
        number of specs); two or more such topics raise an :class:`AdminErrorGroup` of them.
        """
        names = [spec.topic for spec in specs]
        existing = set(await self.list_topics(internal=True))
        missing = [spec for spec in specs if spec.topic not in existing]
        created = [spec.topic for spec in missing]
        if missing:
            # Another process creating the same topics at the same time is fine.
            try:
                await self.create_topics(missing)
            except TopicAlreadyExistsError:
                created = []
            except AdminErrorGroup as group:
                created = group.succeeded
                failures = [
                    e
                    for e in group.exceptions
                    if isinstance(e, AdminError) and not isinstance(e, TopicAlreadyExistsError)
                ]
                if failures:
                    raise AdminErrorGroup(group.message, failures, group.succeeded) from None
        # create_topics waited for the topics it created; one another process created at the
        # same time, or a broker other than the one that answered it, may not show it yet.
        present = await self._describe_created(names, fresh=bool(missing))
        mismatches: list[AdminError] = []
        for spec in specs:
            info = present[spec.topic]
            wanted_rf = spec.replication_factor
            if len(info.partitions) < spec.num_partitions or (
                wanted_rf > 0 and info.replication_factor != wanted_rf
            ):
                mismatches.append(
                    TopicMismatchError(
                        f"Topic {spec.topic!r} exists with {len(info.partitions)} partitions and "
                        f"replication factor {info.replication_factor}; wanted "
                        f"{spec.num_partitions} and {wanted_rf}: {TopicMismatchError.advice}.",
                        topic=spec.topic,
                    )
                )
        if len(mismatches) == 1:
            raise mismatches[0]
        if mismatches:
            raise AdminErrorGroup("ensure_topics found topics shaped otherwise", mismatches)
        return created

    async def _describe_created(self, names: list[str], *, fresh: bool) -> dict[str, TopicInfo]:
        """describe_topics, giving brand-new topics a few seconds to reach every broker's
        metadata: a multi-node cluster answers from whichever broker it asks."""
        deadline = asyncio.get_running_loop().time() + (10.0 if fresh else 0.0)
        while True:
            try:
                return await self.describe_topics(names)
            except (UnknownTopicError, AdminErrorGroup) as exc:
                errors = exc.exceptions if isinstance(exc, AdminErrorGroup) else (exc,)
                unknown_only = all(isinstance(e, UnknownTopicError) for e in errors)
                if not unknown_only or asyncio.get_running_loop().time() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    async def delete_records(
        self, before: Mapping[TopicPartition, int] | Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Delete records below the given offsets; returns each partition's new low watermark."""
        self._check_open()
        partitions = (
            [TopicPartition(tp.topic, tp.partition, offset) for tp, offset in before.items()]
            if isinstance(before, Mapping)
            else list(before)
        )
        futures = self._admin.delete_records(partitions, **self._timeouts)
        by_name = {f"{tp.topic}[{tp.partition}]": fut for tp, fut in futures.items()}
        settled = await self._settle("delete_records", by_name, many=len(partitions) > 1)
        return {
            TopicPartition(tp.topic, tp.partition): settled[
                f"{tp.topic}[{tp.partition}]"
            ].low_watermark
            for tp in futures
        }

    async def latest_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """The next offset to be written (the high watermark) of each partition."""
        self._check_open()
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        wanted = {TopicPartition(tp.topic, tp.partition): latest for tp in partitions}
        futures = self._admin.list_offsets(wanted, request_timeout=self._operation_timeout)
        by_name = {f"{tp.topic}[{tp.partition}]": fut for tp, fut in futures.items()}
        settled = await self._settle("list_offsets", by_name, many=len(wanted) > 1)
        return {
            TopicPartition(tp.topic, tp.partition): settled[name].offset
            for tp, name in zip(futures, by_name, strict=True)
        }

    # -- cluster and configs ---------------------------------------------------------------

    async def describe_cluster(self) -> ClusterInfo:
        """The cluster id, the controller and every broker."""
        self._check_open()
        result = await self._single(
            "describe_cluster",
            self._admin.describe_cluster(request_timeout=self._operation_timeout),
        )
        return ClusterInfo(
            result.cluster_id,
            result.controller.id if result.controller is not None else -1,
            tuple(
                BrokerInfo(n.id, n.host, n.port) for n in sorted(result.nodes, key=lambda n: n.id)
            ),
        )

    async def describe_topic_configs(self, topic: str) -> dict[str, str | None]:
        """A topic's configuration: every property and its value in force."""
        self._check_open()
        futures = self._admin.describe_configs(
            [ConfigResource(ResourceType.TOPIC, topic)], request_timeout=self._operation_timeout
        )
        entries: dict[str, ConfigEntry] = (
            await self._settle(
                "describe_configs", {topic: next(iter(futures.values()))}, many=False
            )
        )[topic]
        return {name: entry.value for name, entry in entries.items()}

    async def alter_topic_configs(self, topic: str, changes: Mapping[str, str | None]) -> None:
        """Set (or, with None, reset to the default) properties of a topic, leaving the rest."""
        self._check_open()
        resource = ConfigResource(
            ResourceType.TOPIC,
            topic,
            incremental_configs=[
                ConfigEntry(
                    name,
                    value,
                    incremental_operation=AlterConfigOpType.SET
                    if value is not None
                    else AlterConfigOpType.DELETE,
                )
                for name, value in changes.items()
            ],
        )
        futures = self._admin.incremental_alter_configs(
            [resource], request_timeout=self._operation_timeout
        )
        await self._settle("alter_configs", {topic: next(iter(futures.values()))}, many=False)

    # -- consumer groups -------------------------------------------------------------------

    async def list_consumer_groups(self) -> list[str]:
        """Ids of the cluster's consumer groups, sorted."""
        self._check_open()
        result = await self._single(
            "list_consumer_groups",
            self._admin.list_consumer_groups(request_timeout=self._operation_timeout),
        )
        return sorted(group.group_id for group in result.valid)

    async def describe_consumer_groups(
        self, group_ids: Sequence[str]
    ) -> dict[str, ConsumerGroupDescription]:
        """State, members and assignments of each group."""
        self._check_open()
        futures = self._admin.describe_consumer_groups(
            list(group_ids), request_timeout=self._operation_timeout
        )
        return await self._settle("describe_consumer_groups", futures, many=len(group_ids) > 1)

    async def list_consumer_group_offsets(self, group_id: str) -> dict[TopicPartition, int]:
        """The committed offset of every partition the group has committed to."""
        self._check_open()
        futures = self._admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group_id)], request_timeout=self._operation_timeout
        )
        result = (await self._settle("list_consumer_group_offsets", futures, many=False))[group_id]
        return {TopicPartition(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}

    # -- plumbing --------------------------------------------------------------------------

    async def _single(self, operation: str, future: Future[T]) -> T:
        """Await one cluster-wide operation; its failure as an AdminError."""
        try:
            return await self._bridge.wrap_future(future)
        except KafkaException as exc:
            raise AdminError.from_kafka(kafka_error_of(exc), operation, None) from None

    async def _metadata(self, topic: str | None, *, timeout: float | None = None) -> Any:
        self._check_open()
        try:
            # A lane of their own, several at once: a metadata request whose caller gave up
            # (cancelled) still blocks its thread until the timeout, and must hold up neither
            # the next request nor close().
            return await self._bridge.run_blocking_on(
                "metadata",
                self._admin.list_topics,
                topic,
                self._operation_timeout if timeout is None else timeout,
                threads=_METADATA_THREADS,
            )
        except KafkaException as exc:
            raise AdminError.from_kafka(kafka_error_of(exc), "metadata request", topic) from None

    async def close(self) -> None:
        """Stop the poll thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._poll_thread.stop(self._bridge)
        self._bridge.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
