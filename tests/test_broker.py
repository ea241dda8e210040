"""The local Kafka launcher, against real brokers, with plain confluent-kafka clients."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kafkaloop import LocalKafkaError, cli
from kafkaloop.broker import LocalKafka, _cluster_id, cache_dir, find_java, free_port, resolve_kafka


def _our_jvms(marker: str) -> list[int]:
    """Pids of live processes whose command line mentions `marker`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kafkaloop", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )


def _create_topic(admin: AdminClient, topic: NewTopic) -> None:
    """Create `topic` and wait until every partition has a leader in metadata."""
    for future in admin.create_topics([topic], operation_timeout=30).values():
        future.result(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        partitions = admin.list_topics(topic.topic, timeout=10).topics[topic.topic].partitions
        if len(partitions) == topic.num_partitions and all(
            p.leader >= 0 for p in partitions.values()
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"{topic.topic} has no leader for every partition after 30s")


def _leader(admin: AdminClient, topic: str, timeout: float = 30) -> int:
    """The leader of partition 0 of `topic`, once metadata names one."""
    deadline = time.monotonic() + timeout
    while True:
        partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
        if 0 in partitions and partitions[0].leader >= 0:
            return int(partitions[0].leader)
        if time.monotonic() > deadline:
            raise AssertionError(f"partition 0 of {topic} has no leader after {timeout}s")
        time.sleep(0.1)


def _produce_all(bootstrap: str, topic: str, count: int, **config: str | int) -> list[Message]:
    delivered: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append(msg)

    producer = Producer({"bootstrap.servers": bootstrap, **config})
    for i in range(count):
        producer.produce(
            topic, f"value-{i}".encode(), key=f"key-{i}".encode(), on_delivery=on_delivery
        )
    assert producer.flush(60) == 0
    assert errors == []
    return delivered


def _consume(bootstrap: str, topic: str, count: int, timeout: float = 60) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < count and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=1.0):
                assert msg.error() is None, msg.error()
                records.append(msg)
    finally:
        consumer.close()
    return records


def test_single_node_broker_produces_and_consumes(kafka_bootstrap: str, topic_name: str) -> None:
    delivered = _produce_all(kafka_bootstrap, topic_name, 100)
    assert len(delivered) == 100

    records = _consume(kafka_bootstrap, topic_name, 100)

    assert sorted(r.value() or b"" for r in records) == sorted(
        f"value-{i}".encode() for i in range(100)
    )
    assert {r.key() for r in records} == {f"key-{i}".encode() for i in range(100)}


@pytest.mark.cluster
def test_three_node_cluster_replicates_a_topic_three_ways(
    kafka_cluster: LocalKafka, topic_name: str
) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_cluster.bootstrap_servers})
    _create_topic(admin, NewTopic(topic_name, num_partitions=3, replication_factor=3))

    metadata = admin.list_topics(topic_name, timeout=10)

    assert sorted(metadata.brokers) == [1, 2, 3]
    partitions = metadata.topics[topic_name].partitions
    assert len(partitions) == 3
    assert all(sorted(p.replicas) == [1, 2, 3] for p in partitions.values())


@pytest.mark.cluster
def test_acks_all_writes_survive_a_hard_killed_leader(
    kafka_cluster: LocalKafka, topic_name: str
) -> None:
    bootstrap = kafka_cluster.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bootstrap})
    _create_topic(
        admin,
        NewTopic(
            topic_name, num_partitions=1, replication_factor=3, config={"min.insync.replicas": "2"}
        ),
    )
    leader_id = _leader(admin, topic_name)
    victim = leader_id - 1  # node ids are index + 1
    survivors = ",".join(kafka_cluster.node_address(i) for i in range(3) if i != victim)

    kafka_cluster.stop_node(victim, hard=True)
    try:
        assert not kafka_cluster.is_running(victim)
        assert _our_jvms(f"-Dkafkaloop.node={kafka_cluster.node_dir(victim)}") == []
        idempotent: dict[str, str | int] = {
            "enable.idempotence": "true",
            "message.timeout.ms": 60000,
        }
        delivered = _produce_all(survivors, topic_name, 200, acks="all", **idempotent)
        new_leader = _leader(admin, topic_name)
    finally:
        kafka_cluster.start_node(victim)

    assert len(delivered) == 200
    assert new_leader not in (leader_id, -1)
    assert len(_consume(bootstrap, topic_name, 200)) == 200


def test_up_twice_prints_the_same_address_and_down_leaves_no_jvm(tmp_path: Path) -> None:
    name = f"test-{os.getpid()}-{tmp_path.name}"
    port = str(free_port())
    marker = str(cache_dir() / "clusters" / name)
    try:
        first = _cli("broker", "up", "--name", name, "--port", port)
        assert first.returncode == 0, first.stderr
        second = _cli("broker", "up", "--name", name, "--port", port)
        status = _cli("broker", "status", "--name", name)
        assert _our_jvms(marker) != []
    finally:
        down = _cli("broker", "down", "--name", name, "--purge")

    assert first.stdout.strip() == f"127.0.0.1:{port}"
    assert second.returncode == 0
    assert second.stdout == first.stdout
    assert status.stdout.startswith(f"running 127.0.0.1:{port}")
    assert down.returncode == 0, down.stderr
    assert _our_jvms(marker) == []
    assert _cli("broker", "status", "--name", name).stdout.strip() == "stopped"


def test_missing_java_names_what_to_install(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(tmp_path)  # an empty directory: no java, no mvn

    result = _cli("broker", "up", "--name", "no-java", env=env)

    assert result.returncode == 2
    assert "Java was not found" in result.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_maven_on_first_start_names_what_to_install(tmp_path: Path) -> None:
    env = _env_with_only_java(tmp_path)
    env["KAFKALOOP_CACHE_DIR"] = str(tmp_path / "empty-cache")

    result = _cli("broker", "up", "--name", "no-mvn", env=env)

    assert result.returncode == 2
    assert "Maven was not found" in result.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.stderr


def test_warm_start_needs_neither_maven_nor_network(tmp_path: Path) -> None:
    resolve_kafka()  # the jars are in the cache (the session broker put them there)
    env = _env_with_only_java(tmp_path)
    env["KAFKALOOP_CACHE_DIR"] = str(cache_dir())
    name = f"warm-{os.getpid()}"
    try:
        result = _cli("broker", "up", "--name", name, "--port", str(free_port()), env=env)
    finally:
        _cli("broker", "down", "--name", name, "--purge")

    assert result.returncode == 0, result.stderr
    assert "Resolving" not in result.stderr


def test_up_on_another_port_than_the_cluster_was_made_on_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / "clusters" / "made"
    state_dir.mkdir(parents=True)
    (state_dir / "cluster.json").write_text(
        json.dumps(
            {
                "version": LocalKafka(1, state_dir=tmp_path / "probe").version,
                "cluster_id": "x",
                "nodes": [{"index": 0, "broker_port": 19301, "controller_port": 19302}],
            }
        )
    )
    env = {**os.environ, "KAFKALOOP_CACHE_DIR": str(tmp_path)}
    env.pop("KAFKALOOP_BROKER_PORT", None)

    try:
        by_flag = _cli("broker", "up", "--name", "made", "--port", "19400", env=env)
        by_env = _cli(
            "broker", "up", "--name", "made", env=env | {"KAFKALOOP_BROKER_PORT": "19400"}
        )
    finally:  # had it started the cluster, nothing is left running
        _cli("broker", "down", "--name", "made", env=env)

    for refused in (by_flag, by_env):
        assert refused.returncode == 2
        assert "was made on port 19301 and keeps it, not 19400" in refused.stderr
        assert "--purge" in refused.stderr
    assert json.loads((state_dir / "cluster.json").read_text())["nodes"][0]["broker_port"] == 19301


def test_stale_pid_in_state_file_reads_as_stopped(tmp_path: Path) -> None:
    state_dir = tmp_path / "cluster"
    state_dir.mkdir()
    # Our own pid: alive, but not a Kafka node of this cluster.
    (state_dir / "cluster.json").write_text(
        json.dumps(
            {
                "version": LocalKafka(1, state_dir=tmp_path / "probe").version,
                "cluster_id": "x",
                "nodes": [{"index": 0, "broker_port": 1, "controller_port": 2, "pid": os.getpid()}],
            }
        )
    )

    kafka = LocalKafka(state_dir=state_dir)

    assert kafka.nodes == 1
    assert not kafka.is_running()
    assert kafka.pids() == []
    kafka.stop()  # signals nothing: the pid is not ours


def test_a_node_just_launched_counts_as_running_before_proc_shows_its_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the fork and the end of a JVM's exec, /proc shows another command line (or
    none) for it: the node launched must not read as a node that exited during start-up."""
    from kafkaloop import broker

    state = {
        "version": LocalKafka(1, state_dir=tmp_path / "probe").version,
        "cluster_id": "x",
        "nodes": [{"index": 0, "broker_port": free_port(), "controller_port": free_port()}],
    }
    (tmp_path / "cluster.json").write_text(json.dumps(state))
    (tmp_path / "node-0").mkdir()
    java = tmp_path / "java"  # a "JVM" that starts and never answers
    java.write_text("#!/bin/sh\nexec sleep 60\n")
    java.chmod(0o755)
    monkeypatch.setattr(broker, "find_java", lambda: str(java))
    monkeypatch.setattr(broker, "resolve_kafka", lambda *args, **kwargs: tmp_path)
    monkeypatch.setattr(broker, "_pid_is_ours", lambda pid, node_dir: False)  # not exec'ed yet
    kafka = LocalKafka(state_dir=tmp_path)

    try:
        with pytest.raises(LocalKafkaError) as caught:
            kafka.start_node(0, timeout=1)
        running = kafka.is_running(0)
        launched = kafka._procs[0]
    finally:
        kafka.stop()

    assert "did not answer metadata requests within 1s" in str(caught.value)  # not "exited"
    assert running
    assert launched.returncode is not None  # stopped and reaped
    assert not kafka.is_running(0)


def test_stopping_a_cluster_of_another_version_keeps_its_state_file_as_it_was(
    tmp_path: Path,
) -> None:
    state = {
        "version": "3.9.1",  # made by a kafkaloop that ran another Kafka
        "cluster_id": "older-cluster-id",
        "nodes": [
            {"index": i, "broker_port": 1 + 2 * i, "controller_port": 2 + 2 * i}
            | {"pid": None, "sasl_port": None}
            for i in range(2)
        ],
    }
    (tmp_path / "cluster.json").write_text(json.dumps(state))

    LocalKafka(state_dir=tmp_path).stop()  # `kafkaloop broker down`

    assert json.loads((tmp_path / "cluster.json").read_text()) == state


def _stopped_cluster(state_dir: Path, version: str) -> None:
    state_dir.mkdir(parents=True)
    node = {"index": 0, "broker_port": 1, "controller_port": 2, "pid": None, "sasl_port": None}
    state = {"version": version, "cluster_id": "x", "nodes": [node]}
    (state_dir / "cluster.json").write_text(json.dumps(state))


@pytest.mark.parametrize("name", ["default", "three"])
def test_a_cluster_of_another_shape_is_refused_with_the_command_for_that_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("KAFKALOOP_CACHE_DIR", str(tmp_path))
    state_dir = tmp_path / "clusters" / name
    _stopped_cluster(state_dir, "3.9.1")

    with pytest.raises(LocalKafkaError) as caught:
        LocalKafka(3, state_dir=state_dir).start()  # `kafkaloop broker up --nodes 3 --name ...`

    flag = "" if name == "default" else f" --name {name}"
    assert f"Delete it first (`kafkaloop broker down{flag} --purge`)" in str(caught.value)


def test_a_cluster_outside_the_cache_is_refused_with_advice_for_python(tmp_path: Path) -> None:
    _stopped_cluster(tmp_path / "mine", "3.9.1")

    with pytest.raises(LocalKafkaError) as caught:
        LocalKafka(3, state_dir=tmp_path / "mine").start()

    assert "kafkaloop broker" not in str(caught.value)
    assert "use another state_dir" in str(caught.value)


def test_down_of_a_cluster_never_made_says_so_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKALOOP_CACHE_DIR", str(tmp_path))

    assert cli.main(["broker", "down", "--name", "never-made"]) == 0

    assert "No local cluster named 'never-made'" in capsys.readouterr().err
    assert not (tmp_path / "clusters" / "never-made").exists()


@pytest.mark.cluster
@pytest.mark.parametrize("failure", ["port-taken", "not-ready-in-time"])
def test_a_failed_start_of_a_degraded_cluster_leaves_its_running_nodes_running(
    kafka_cluster: LocalKafka, failure: str
) -> None:
    kafka_cluster.stop_node(2, hard=True)
    port = int(kafka_cluster.node_address(2).rsplit(":", 1)[1])
    try:
        with socket.socket() as taken:
            if failure == "port-taken":  # node 2 is not launched at all
                # (its connections may linger in TIME-WAIT since it was killed)
                taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                taken.bind(("127.0.0.1", port))
                taken.listen()
            with pytest.raises(LocalKafkaError, match=r"(?i)node \d"):
                # "not-ready-in-time": node 2 is launched, the cluster cannot answer in time
                kafka_cluster.start(timeout=60 if failure == "port-taken" else 0)
            running = [kafka_cluster.is_running(i) for i in range(3)]
    finally:
        kafka_cluster.start_node(2)

    assert running == [True, True, False]


def test_find_java_returns_an_executable() -> None:
    assert os.access(find_java(), os.X_OK)


def _env_with_only_java(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(find_java())
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(bin_dir)
    return env


def test_free_ports_are_outside_the_range_outgoing_connections_take_theirs_from() -> None:
    ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(20000 <= port < ephemeral_start for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_cluster_ids_never_start_with_a_dash_the_storage_tool_would_take_for_an_option() -> None:
    ids = [_cluster_id() for _ in range(2000)]  # about 31 would start with "-" by chance
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["broker", "down", "--purge", "--name", ".."], "argument --name"),  # not the whole cache
        (["broker", "status", "--name", "/"], "argument --name"),
        (["broker", "up", "--nodes", "0"], "argument --nodes: a whole number, at least 1"),
        (["broker", "up", "--port", "70000"], "argument --port: not a port number"),
        (["broker", "logs", "--lines", "-1"], "argument --lines/-n: a whole number, at least 0"),
        (["broker", "up", "--timeout", "-5"], "argument --timeout: a number of seconds, above 0"),
        (["broker", "down", "--timeout", "nan"], "argument --timeout: a number of seconds"),
        (["serve", "--workers", "-2"], "argument --workers: a whole number, at least 1"),
        (["smoke", "--count", "-5"], "argument --count: a whole number, at least 1"),
        (["smoke", "--count", "0"], "argument --count: a whole number, at least 1"),
    ],
)
def test_arguments_are_checked_before_anything_runs(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)

    assert exited.value.code == 2
    assert says in capsys.readouterr().err


def test_logs_of_a_node_the_cluster_does_not_have_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKALOOP_CACHE_DIR", str(tmp_path))

    assert cli.main(["broker", "logs", "--node", "7"]) == 2
    assert "No node 7" in capsys.readouterr().err


def test_following_the_logs_follows_every_node_in_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = [tmp_path / "node-0.log", tmp_path / "node-1.log"]
    for path in logs:
        path.write_text("before\n")

    def append(node: int, text: str) -> Callable[[], None]:
        def write() -> None:
            with open(logs[node], "a") as fh:
                fh.write(text)

        return write

    writes = iter([append(0, "a1\n"), append(1, "b1\nb2"), append(0, "a2\n"), append(1, " end\n")])

    def sleep(_seconds: float) -> None:  # each wait for more: a node writes; then Ctrl-C
        write = next(writes, None)
        if write is None:
            raise KeyboardInterrupt
        write()

    monkeypatch.setattr(time, "sleep", sleep)
    with open(logs[0]) as first, open(logs[1]) as second:
        first.read(), second.read()  # (as `broker logs` leaves them, once it printed the ends)
        cli._follow(logs, [first, second])

    assert capsys.readouterr().out == (
        f"==> {logs[0]} <==\na1\n==> {logs[1]} <==\nb1\n==> {logs[0]} <==\na2\n"
        f"==> {logs[1]} <==\nb2 end\n"
    )
