"""Fixtures: a real local Kafka for the whole session, and unique topic names per test.

Set KAFKA_BOOTSTRAP_SERVERS (or KAFKALOOP_BOOTSTRAP_SERVERS) to run most of the suite against
an existing cluster instead; tests that must stop and start brokers (the three-node cluster) are
skipped then, and those that kill or start a broker of their own still start one.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator

import pytest

from kafkaloop.broker import LocalKafka, print_progress
from kafkaloop.settings import bootstrap_from_env


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a single-node broker shared by the session."""
    existing = bootstrap_from_env()
    if existing:
        yield existing
        return
    kafka = LocalKafka(
        1, state_dir=tmp_path_factory.mktemp("kafka-single"), progress=print_progress
    )
    with kafka:
        yield kafka.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A three-node cluster this session controls (nodes can be killed and restarted)."""
    if bootstrap_from_env():
        pytest.skip("needs a local three-node cluster; the environment names a cluster")
    kafka = LocalKafka(
        3, state_dir=tmp_path_factory.mktemp("kafka-cluster"), progress=print_progress
    )
    with kafka:
        yield kafka


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name no other test (or earlier run) uses."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:80]
    return f"t-{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def uvicorn_errors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What uvicorn logs as errors meanwhile (its logger keeps them from caplog, and its
    logging set-up drops handlers added to it)."""
    errors: list[str] = []
    log = logging.getLogger("uvicorn.error")

    def error(msg: object, *args: object, **_kwargs: object) -> None:
        errors.append(str(msg) % args if args else str(msg))

    monkeypatch.setattr(log, "error", error)
    return errors
