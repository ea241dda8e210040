"""Faults against real brokers: every acknowledged record is in the topic, exactly once.

The bar is Kafka's own system tests: acked is a subset of consumed, and with idempotence there
are no duplicates. Figures are printed (run with -s) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import websockets
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from confluent_kafka.admin import NewTopic

from kafkaloop import (
    AIOAdminClient,
    AIOConsumer,
    AIOProducer,
    DeliveryError,
    QueueFullError,
    RecordMetadata,
    UnknownTopicError,
)
from kafkaloop.broker import LocalKafka
from tests.service_helpers import service


async def _leader(admin: AIOAdminClient, topic: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(UnknownTopicError):  # not yet in this broker's metadata
            info = (await admin.describe_topics([topic]))[topic]
            if info.partitions and info.partitions[0].leader >= 0:
                return info.partitions[0].leader
        await asyncio.sleep(0.2)
    raise AssertionError(f"{topic} has no leader")


async def _read_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": f"verify-{time.monotonic_ns()}",
        "isolation.level": "read_committed",
    }
    async with AIOConsumer(config) as consumer:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        values: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(values) < expected and time.monotonic() < deadline:
            values += [r.value for r in await consumer.getmany(5000, timeout=1.0)]
        values += [r.value for r in await consumer.getmany(5000, timeout=2.0)]
        return values


@pytest.mark.cluster
@pytest.mark.slow
async def test_leader_killed_under_load_loses_and_duplicates_nothing(
    kafka_cluster: LocalKafka, topic_name: str
) -> None:
    bootstrap = kafka_cluster.bootstrap_servers
    async with AIOAdminClient({"bootstrap.servers": bootstrap}) as admin:
        await admin.create_topics(
            [
                NewTopic(
                    topic_name,
                    num_partitions=1,
                    replication_factor=3,
                    config={"min.insync.replicas": "2"},
                )
            ]
        )
        leader = await _leader(admin, topic_name)
    victim = leader - 1  # node ids are index + 1

    total, concurrency = 20_000, 200
    acked: list[int] = []
    failed: list[DeliveryError] = []
    stall = 0.0
    last_ack = time.monotonic()
    config = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "message.timeout.ms": 60_000,
    }

    quarter, three_quarters = asyncio.Event(), asyncio.Event()

    def outcome() -> None:
        if len(acked) >= total // 4:
            quarter.set()
        if len(acked) + len(failed) >= total * 3 // 4:
            three_quarters.set()

    async with AIOProducer(config) as producer:
        counter = iter(range(total))

        async def user() -> None:
            nonlocal stall, last_ack
            for i in counter:
                try:
                    md = await producer.produce(topic_name, str(i).encode())
                except DeliveryError as exc:
                    failed.append(exc)
                    outcome()
                    continue
                assert isinstance(md, RecordMetadata)
                now = time.monotonic()
                stall = max(stall, now - last_ack)
                last_ack = now
                acked.append(i)
                outcome()

        users = [asyncio.create_task(user()) for _ in range(concurrency)]
        await quarter.wait()
        killed_at = len(acked)
        await asyncio.to_thread(kafka_cluster.stop_node, victim, hard=True)
        await three_quarters.wait()
        await asyncio.to_thread(kafka_cluster.start_node, victim)
        done, _ = await asyncio.wait(users, timeout=180)
        assert len(done) == concurrency, "some produces hung"

    values = await _read_all(bootstrap, topic_name, len(acked))
    consumed = Counter(int(v) for v in values)
    duplicates = sum(n - 1 for n in consumed.values() if n > 1)
    lost = set(acked) - set(consumed)
    print(
        f"\nleader {leader} killed after {killed_at} acks; acked {len(acked)}, failed "
        f"{len(failed)}, consumed {len(values)}, duplicates {duplicates}, lost {len(lost)}, "
        f"longest stall {stall:.2f}s"
    )

    assert len(acked) + len(failed) == total  # every produce had exactly one outcome
    assert lost == set()
    assert duplicates == 0


def _rss_bytes() -> int:
    """Resident memory, after handing freed heap memory back to the system (glibc keeps it
    otherwise, and RSS would measure the allocator's cache, not what is in use)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


@pytest.mark.slow
async def test_frozen_broker_keeps_memory_bounded_and_every_produce_resolves(
    tmp_path: Path, topic_name: str
) -> None:
    kafka = LocalKafka(1, state_dir=tmp_path / "kafka")
    await asyncio.to_thread(kafka.start)
    outcomes: Counter[str] = Counter()
    try:
        config = {
            "bootstrap.servers": kafka.bootstrap_servers,
            "message.timeout.ms": 8000,
            "queue.buffering.max.messages": 20_000,
        }
        async with AIOProducer(config, queue_full_timeout=1.0, max_waiting=1000) as producer:
            await producer.produce(topic_name, b"warm-up")
            baseline = peak = _rss_bytes()
            kafka.pause_node(0)
            stop_at = time.monotonic() + 6

            async def flood() -> None:  # fire-and-forget, as fast as it will go
                while time.monotonic() < stop_at:
                    try:
                        producer.produce_nowait(topic_name, b"x" * 100)
                    except QueueFullError:
                        outcomes["nowait: queue full"] += 1
                        await asyncio.sleep(0.001)

            async def user() -> None:  # awaited produces
                while time.monotonic() < stop_at:
                    try:
                        await producer.produce(topic_name, b"y" * 100)
                        outcomes["awaited: delivered"] += 1
                    except QueueFullError:
                        outcomes["awaited: queue full"] += 1
                    except DeliveryError as exc:
                        outcomes[f"awaited: {exc.error.name()}"] += 1

            async def sample() -> None:
                nonlocal peak
                while time.monotonic() < stop_at + 10:
                    peak = max(peak, _rss_bytes())
                    await asyncio.sleep(0.2)

            sampler = asyncio.create_task(sample())
            await asyncio.gather(flood(), *(user() for _ in range(100)))
            kafka.resume_node(0)
            after = await producer.produce(topic_name, b"after")
            remaining = await producer.flush(30)
            sampler.cancel()
            metrics = producer.metrics
    finally:
        await asyncio.to_thread(kafka.stop)

    growth = (peak - baseline) / 2**20
    print(f"\nfrozen 6 s: {dict(outcomes)}; RSS +{growth:.0f} MiB; {metrics}")
    assert outcomes["nowait: queue full"] > 0
    assert (
        outcomes["awaited: queue full"]
        + sum(n for k, n in outcomes.items() if k.startswith("awaited: _"))
        > 0
    )
    assert growth < 200
    assert after.offset >= 1
    assert remaining == 0
    assert metrics.in_flight == 0
    assert metrics.produced == metrics.delivered + metrics.failed


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# For clients that stop reading: small queues, cut off after 1 s, large items (10 kB each, so a
# client that never reads backs the server up within a few MB, past what the socket buffers
# take).
_SLOW_CLIENTS: dict[str, Any] = {
    "client_queue_size": 64,
    "slow_client_timeout": 1.0,
    "max_name_length": 20_000,
}


def _never_reading(url: str) -> socket.socket:
    """A connection to the server at `url` with a tiny receive buffer: the server feels a
    client that does not read soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    return sock


@pytest.mark.slow
async def test_websocket_clients_fast_slow_and_churning(
    kafka_bootstrap: str, topic_name: str
) -> None:
    async with service(kafka_bootstrap, topic_name, **_SLOW_CLIENTS) as (url, client):
        ws_url = url.replace("http://", "ws://") + "/ws/items"
        # One client that never reads, and 100 that do.
        slow = _never_reading(url)
        slow.sendall(
            b"GET /ws/items HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        fast = [await websockets.connect(ws_url) for _ in range(100)]
        try:
            await asyncio.sleep(1.0)
            rss_before = _rss_bytes()
            names = [f"n{i}-{'x' * 10_000}" for i in range(800)]
            for start in range(0, len(names), 50):
                await asyncio.gather(
                    *(client.post("/items4", json={"name": n}) for n in names[start : start + 50])
                )
                await asyncio.sleep(0.02)  # a pace the readers keep up with on a busy CI box

            async def receive_all(ws: Any) -> list[str]:
                got: list[str] = []  # the prefixes only: 100 copies of 6 MB would be the RSS
                while len(got) < len(names):
                    name = json.loads(await asyncio.wait_for(ws.recv(), 30))["name"]
                    got.append(name.split("-", 1)[0])
                return got

            received = await asyncio.gather(*(receive_all(ws) for ws in fast))
            growth = (_rss_bytes() - rss_before) / 2**20
            for ws in fast:
                await ws.close()
            fast = []
            deadline = time.monotonic() + 15
            while True:
                metrics = (await client.get("/metrics")).text
                subscribers_left = float(metrics.split("\npush_subscribers ")[1].split()[0])
                if subscribers_left == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        finally:
            for ws in fast:
                await ws.close()
            slow.close()

        wanted = sorted(name.split("-", 1)[0] for name in names)
        assert all(sorted(got) == wanted for got in received)
        assert growth < 200
        dropped = float(metrics.split("\npush_dropped_total ")[1].split()[0])
        # The one that never read was cut: its drops counted, or a send to it timed out.
        assert subscribers_left == 0, f"the slow client is still subscribed ({dropped} dropped)"

        # Churn: connections that come and go leave nothing behind.
        await asyncio.sleep(0.5)
        fds, tasks = _open_fds(), len(asyncio.all_tasks())
        for _ in range(1000):
            ws = await websockets.connect(ws_url)
            await ws.close()
        for _ in range(100):  # the closed connections' last tasks finish
            if _open_fds() <= fds + 5 and len(asyncio.all_tasks()) <= tasks + 2:
                break
            await asyncio.sleep(0.2)
        subscribers = await client.get("/metrics")
        print(
            f"\n100 readers got all {len(names)} items; {dropped:.0f} dropped for the one that "
            f"never read; RSS +{growth:.1f} MiB; fds "
            f"{fds} -> {_open_fds()}, tasks {tasks} -> {len(asyncio.all_tasks())}"
        )
        assert _open_fds() <= fds + 5
        assert len(asyncio.all_tasks()) <= tasks + 2
        assert "\npush_subscribers 0.0\n" in subscribers.text


def _held_by_a_process(local_port: int, remote_port: int) -> bool:
    """Whether the TCP socket between these loopback ports is still some process's (Linux: a
    socket its process let go of lingers in /proc/net/tcp with inode 0 while the kernel
    delivers what it had buffered)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if (int(local.split(":")[1], 16), int(remote.split(":")[1], 16)) == (
            local_port,
            remote_port,
        ):
            return inode != "0"
    return False


async def test_an_sse_client_that_stops_reading_is_disconnected(
    kafka_bootstrap: str,
    topic_name: str,
    caplog: pytest.LogCaptureFixture,
    uvicorn_errors: list[str],
) -> None:
    async with service(kafka_bootstrap, topic_name, **_SLOW_CLIENTS) as (url, client):
        stalled = _never_reading(url)
        server_port, client_port = stalled.getpeername()[1], stalled.getsockname()[1]
        stalled.setblocking(False)  # read without blocking the loop, which serves the other end
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(stalled, b"GET /sse/items HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            received = b""
            async with asyncio.timeout(30):
                while b": connected" not in received:  # subscribed
                    received += await loop.sock_recv(stalled, 4096)
            assert _held_by_a_process(server_port, client_port)
            # 4 MB of items: past what the socket buffers and the transport's buffer take.
            names = [f"n{i}-{'x' * 10_000}" for i in range(400)]
            for start in range(0, len(names), 50):
                await asyncio.gather(
                    *(client.post("/items4", json={"name": n}) for n in names[start : start + 50])
                )
            # Nothing read yet: the server must give up on its own, a send having waited 1 s.
            deadline = time.monotonic() + 30
            while "An SSE client read nothing" not in caplog.text:
                assert time.monotonic() < deadline, "the stalled SSE stream was never ended"
                await asyncio.sleep(0.2)
            # Dropped, not closed once the client reads what is buffered (which it never would):
            # the server has let go of its socket, with no read on this side.
            for _ in range(50):
                if not _held_by_a_process(server_port, client_port):
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the server still holds the stalled client's connection")
        finally:
            stalled.close()

        assert received.startswith(b"HTTP/1.1 200")
        assert "its connection is dropped" in caplog.text
        assert uvicorn_errors == []  # (not "ASGI callable returned without completing response")
        assert (await client.get("/healthz")).status_code == 200


@pytest.mark.slow
async def test_credentials_right_ones_produce_wrong_ones_fail_fast_and_never_leak(
    tmp_path: Path, topic_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret, wrong = "s3cret-alice-pw", "not-the-pw-42"
    kafka = LocalKafka(1, state_dir=tmp_path / "kafka", sasl_users={"alice": secret})
    await asyncio.to_thread(kafka.start)

    def config(password: str) -> dict[str, Any]:
        return {
            "bootstrap.servers": kafka.sasl_bootstrap_servers,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "alice",
            "sasl.password": password,
            "message.timeout.ms": 30_000,
        }

    try:
        async with AIOProducer(config(secret)) as good:
            delivered = await good.produce(topic_name, b"with the right password")
            good_repr = repr(good)

        async with AIOProducer(config(wrong)) as bad:
            started = time.monotonic()
            with pytest.raises(DeliveryError) as caught:
                await bad.produce(topic_name, b"with a wrong password")
            failed_after = time.monotonic() - started
            with pytest.raises(DeliveryError):
                bad.produce(topic_name, b"again")  # refused at once from now on
            bad_repr = repr(bad)
    finally:
        await asyncio.to_thread(kafka.stop)

    print(f"\nwrong password failed after {failed_after:.2f}s: {caught.value}")
    assert delivered.offset == 0
    assert failed_after < 10  # not message.timeout.ms (30 s)
    assert caught.value.code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED)
    assert "credentials" in str(caught.value)
    everything = caplog.text + good_repr + bad_repr + str(caught.value) + repr(caught.value)
    assert secret not in everything
    assert wrong not in everything
