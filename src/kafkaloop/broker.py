"""A real Apache Kafka (KRaft, combined broker + controller) on loopback, for development and tests.

Kafka's jars are resolved once from Maven Central with Maven into a cache directory
(``$KAFKALOOP_CACHE_DIR``, else ``$XDG_CACHE_HOME/kafkaloop``, else ``~/.cache/kafkaloop``);
later starts reuse them and need no network. Each node runs as its own JVM with a bounded
heap. Every process started is recorded in the cluster's state file, together with a marker on
its command line, so ``stop`` only ever signals processes this module started, and a stale pid
(a reboot, a reused pid) is recognised.

    with LocalKafka(nodes=3) as kafka:
        kafka.bootstrap_servers          # "127.0.0.1:41233,127.0.0.1:41234,127.0.0.1:41235"
        kafka.stop_node(0, hard=True)    # SIGKILL, e.g. the partition leader
        kafka.start_node(0)
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

from kafkaloop._exceptions import LocalKafkaError, ToolNotFoundError

__all__ = [
    "KAFKA_VERSION",
    "LocalKafka",
    "cache_dir",
    "free_port",
    "resolve_kafka",
]

KAFKA_VERSION = "4.4.0"
"""The Apache Kafka release the launcher runs (``org.apache.kafka:kafka_2.13``)."""

LOG4J_VERSION = "2.25.3"
MIN_JAVA = 17
DEFAULT_HEAP = "512m"
START_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0

_INSTALL_HINT = (
    "Install {what} (for example `apt-get install {package}`), "
    "or set KAFKA_BOOTSTRAP_SERVERS to use an existing Kafka cluster instead."
)

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>kafkaloop.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <!-- Kafka logs through slf4j 1.x; log4j2 is the backend its own distribution ships. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
"""


def cache_dir() -> Path:
    """Where jars and local clusters live: ``$KAFKALOOP_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/kafkaloop``, else ``~/.cache/kafkaloop``."""
    explicit = os.environ.get("KAFKALOOP_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "kafkaloop"


def _install_hint(what: str, package: str) -> str:
    return _INSTALL_HINT.format(what=what, package=package)


def find_java() -> str:
    """Path of a ``java`` of version 17 or later, or :class:`ToolNotFoundError`."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = str(Path(java_home) / "bin" / "java") if java_home else None
    if not candidate or not os.access(candidate, os.X_OK):
        candidate = shutil.which("java")
    if candidate is None:
        raise ToolNotFoundError(
            "Java was not found: a local Kafka broker needs Java 17 or later. "
            + _install_hint("a JDK", "openjdk-17-jre-headless")
        )
    try:
        out = subprocess.run(
            [candidate, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolNotFoundError(
            f"{candidate} -version failed ({exc}). "
            + _install_hint("a JDK", "openjdk-17-jre-headless")
        ) from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0_392" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise ToolNotFoundError(
            f"{candidate} is Java {major or 'of an unknown version'}; Kafka {KAFKA_VERSION} needs "
            f"Java {MIN_JAVA} or later. " + _install_hint("a newer JDK", "openjdk-17-jre-headless")
        )
    return candidate


def resolve_kafka(
    version: str = KAFKA_VERSION,
    *,
    cache: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Return the directory holding Kafka's jars, resolving them with Maven the first time."""
    home = (cache or cache_dir()) / f"kafka-{version}"
    lib = home / "lib"
    if (home / "resolved").exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ToolNotFoundError(
            f"Maven was not found: it is needed once, to fetch Apache Kafka {version}. "
            + _install_hint("Maven", "maven")
        )
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home):
        if (home / "resolved").exists():
            return lib
        if progress:
            progress(f"Resolving Apache Kafka {version} with Maven into {home} (once)...")
        (home / "pom.xml").write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
        staging = home / "lib.partial"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(home / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise LocalKafkaError(
                f"Maven could not resolve org.apache.kafka:kafka_2.13:{version} "
                f"(exit {result.returncode}). Check network access to Maven Central, "
                f"or set KAFKA_BOOTSTRAP_SERVERS to use an existing cluster.\n{tail}"
            )
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
        (home / "resolved").write_text(version + "\n")
    return lib


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise launcher commands that touch one directory (two `up`s at once, say)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_PORTS_FROM = 20000
"""Where free_port() starts looking: ports the kernel never hands out to outgoing connections
(Linux's ephemeral range starts at 32768 by default)."""


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server about to be started on it.

    Chosen below the kernel's ephemeral range: a port that ``bind(0)`` hands out is one an
    outgoing connection (a Kafka client's, say) may take as its own before the server binds.
    """
    end = _ephemeral_start()
    if end - _PORTS_FROM > 1000:  # else the range is moved so low that none is left below it
        for _ in range(100):
            port = random.randrange(_PORTS_FROM, end)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _cluster_id() -> str:
    """A random cluster id, as Kafka makes them: never starting with "-", which the storage
    tool would read as an option (one id in 64 would fail to format)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _marker(node_dir: Path) -> str:
    return f"-Dkafkaloop.node={node_dir}"


def _pid_is_ours(pid: int, node_dir: Path) -> bool:
    """True when `pid` is alive and is the JVM started for `node_dir` (not a reused pid)."""
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        state = stat.rsplit(")", 1)[-1].split()[0]
        return state not in ("Z", "X") and _marker(node_dir).encode() in cmdline
    if sys.platform.startswith("linux"):
        return False
    # No /proc: ask ps for the command line, so a reused pid is not taken for ours.
    result = subprocess.run(
        ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and _marker(node_dir) in result.stdout


@dataclasses.dataclass
class _Node:
    index: int
    broker_port: int
    controller_port: int
    pid: int | None = None
    sasl_port: int | None = None

    @property
    def node_id(self) -> int:
        return self.index + 1

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    def listeners(self) -> tuple[str, str, str]:
        """listeners, advertised.listeners and the security protocol map."""
        listeners = [
            f"PLAINTEXT://127.0.0.1:{self.broker_port}",
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
        ]
        advertised = [f"PLAINTEXT://127.0.0.1:{self.broker_port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        if self.sasl_port is not None:
            listeners.append(f"SASL://127.0.0.1:{self.sasl_port}")
            advertised.append(f"SASL://127.0.0.1:{self.sasl_port}")
            protocols.append("SASL:SASL_PLAINTEXT")
        return ",".join(listeners), ",".join(advertised), ",".join(protocols)


class LocalKafka:
    """A local Kafka cluster of one or more KRaft nodes, each in its own JVM.

    ``state_dir`` holds the cluster's configuration, data and logs; reusing it reattaches to a
    cluster started earlier (by this process or by ``kafkaloop broker up``).
    """

    def __init__(
        self,
        nodes: int | None = None,
        *,
        state_dir: Path | str | None = None,
        port: int | None = None,
        heap: str | None = None,
        version: str = KAFKA_VERSION,
        properties: Mapping[str, str] | None = None,
        sasl_users: Mapping[str, str] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if nodes is not None and nodes < 1:
            raise ValueError(f"nodes must be at least 1, not {nodes}")
        self.state_dir = Path(state_dir) if state_dir else cache_dir() / "clusters" / "default"
        # None: the shape of the cluster already in state_dir, or a single node.
        self.nodes = nodes or self._recorded_nodes() or 1
        self.port = port
        self.heap = heap or os.environ.get("KAFKALOOP_BROKER_HEAP") or DEFAULT_HEAP
        self.version = version
        self.properties = dict(properties or {})
        # SASL/PLAIN users (name -> password) of an extra listener, e.g. for credential tests.
        self.sasl_users = dict(sasl_users or {})
        self._progress = progress
        self._cluster_id = ""
        self._recorded_version = version  # the state file's: another, for a cluster made so
        self._nodes: list[_Node] = []
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._load()

    def __repr__(self) -> str:
        return f"<LocalKafka nodes={self.nodes} state_dir={str(self.state_dir)!r}>"

    # -- state -----------------------------------------------------------------------------

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "cluster.json"

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _recorded_nodes(self) -> int:
        return len(self._read_state().get("nodes", []))

    def _load(self, *, strict: bool = False) -> None:
        """Read the state file. A cluster of another shape or version is left alone, and
        refused only when `strict` (starting would have to wipe it)."""
        state = self._read_state()
        if not state:
            return
        self._recorded_version = str(state.get("version", self.version))
        if state.get("version") != self.version or len(state["nodes"]) != self.nodes:
            if not strict:  # stopped, looked at, saved again as it is
                self._cluster_id = str(state.get("cluster_id", ""))
                self._nodes = [_Node(**node) for node in state["nodes"]]
                return
            alive = any(
                n.get("pid") and _pid_is_ours(n["pid"], self.node_dir(n["index"]))
                for n in state["nodes"]
            )
            raise LocalKafkaError(
                f"A {len(state['nodes'])}-node Kafka {state.get('version')} cluster "
                f"{'is running' if alive else 'keeps its data'} in {self.state_dir}. "
                + self._make_way(alive)
            )
        self._cluster_id = state["cluster_id"]
        self._nodes = [_Node(**node) for node in state["nodes"]]

    def _make_way(self, alive: bool) -> str:
        """How to make way for a cluster of another shape where this one's state is."""
        if self.state_dir.parent == cache_dir() / "clusters":  # a cluster the CLI names
            name = self.state_dir.name
            down = "kafkaloop broker down" + ("" if name == "default" else f" --name {name}")
            return (
                f"Stop it first (`{down}`), or"
                if alive
                else f"Delete it first (`{down} --purge`), or"
            ) + " use another --name (from Python: another state_dir)."
        return (
            "Stop it first (stop() on a LocalKafka of that state_dir), or"
            if alive
            else "Delete that directory first, or"
        ) + " use another state_dir."

    def _save(self) -> None:
        state = {
            "version": self._recorded_version,
            "cluster_id": self._cluster_id,
            "nodes": [dataclasses.asdict(node) for node in self._nodes],
        }
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self._state_file)

    def node_dir(self, index: int) -> Path:
        """The directory holding node `index`'s configuration, data and ``kafka.log``."""
        return self.state_dir / f"node-{index}"

    @property
    def first_port(self) -> int | None:
        """The first node's broker port, as recorded when the cluster was made (None: never
        made). A cluster keeps its ports until it is purged."""
        return self._nodes[0].broker_port if self._nodes else None

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT[,...]`` for every node."""
        if not self._nodes:
            raise LocalKafkaError(f"{self!r} has never been started; call start() first.")
        return ",".join(node.address for node in self._nodes)

    @property
    def sasl_bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT[,...]`` of the SASL_PLAINTEXT (PLAIN) listener of every node."""
        if not self._nodes or self._nodes[0].sasl_port is None:
            raise LocalKafkaError(f"{self!r} has no SASL listener: pass sasl_users.")
        return ",".join(f"127.0.0.1:{node.sasl_port}" for node in self._nodes)

    def node_address(self, index: int) -> str:
        """The bootstrap address of node `index` alone."""
        return self._nodes[index].address

    def is_running(self, index: int | None = None) -> bool:
        """Whether node `index` (or every node) is running."""
        if not self._nodes:
            return False
        chosen = self._nodes if index is None else [self._nodes[index]]
        return all(self._alive(node.index) for node in chosen)

    def pids(self) -> list[int]:
        """Process ids of the nodes that are running."""
        return [node.pid for node in self._nodes if self._alive(node.index) and node.pid]

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start every node that is not running, wait until the cluster answers, return its address.

        Starting a running cluster does nothing and returns the same address.
        """
        with _locked(self.state_dir):
            self._load(strict=True)
            if self.is_running():
                return self.bootstrap_servers
            java = find_java()
            lib = resolve_kafka(self.version, progress=self._progress)
            if not self._nodes:
                self._create(java, lib)
            # On a failure, the nodes this call launched are stopped (no JVM left behind);
            # those running before it, in a cluster some of whose nodes had stopped, run on.
            launched: list[int] = []
            try:
                for node in self._nodes:
                    if not self.is_running(node.index):
                        launched.append(node.index)
                        self._launch(java, lib, node)
            except BaseException:
                self._signal_and_wait(launched, signal.SIGTERM, STOP_TIMEOUT)
                raise
            finally:
                self._save()  # every pid launched is on record
        try:
            self._wait_ready(range(self.nodes), timeout)
        except BaseException:
            with _locked(self.state_dir):
                self._signal_and_wait(launched, signal.SIGTERM, STOP_TIMEOUT)
                self._save()
            raise
        return self.bootstrap_servers

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every node: SIGTERM, then SIGKILL whatever is still running after `timeout`."""
        with _locked(self.state_dir):
            self._load()
            self._signal_and_wait(list(range(len(self._nodes))), signal.SIGTERM, timeout)
            if self._nodes:
                self._save()

    def stop_node(self, index: int, *, hard: bool = True, timeout: float = STOP_TIMEOUT) -> None:
        """Stop one node: SIGKILL when `hard` (a crash), otherwise a clean SIGTERM shutdown."""
        self._signal_and_wait([index], signal.SIGKILL if hard else signal.SIGTERM, timeout)
        self._save()

    def start_node(self, index: int, timeout: float = START_TIMEOUT) -> None:
        """Start node `index` again (same ports, same data) and wait until it answers."""
        node = self._nodes[index]
        if not self.is_running(index):
            self._launch(find_java(), resolve_kafka(self.version), node)
            self._save()
        self._wait_ready([index], timeout)

    def pause_node(self, index: int) -> None:
        """Freeze node `index` (SIGSTOP): it keeps its sockets open but answers nothing."""
        self._signal_node(index, signal.SIGSTOP)

    def resume_node(self, index: int) -> None:
        """Let a paused node run again (SIGCONT)."""
        self._signal_node(index, signal.SIGCONT)

    def purge(self) -> None:
        """Stop the cluster and delete its data, configuration and logs."""
        self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self._nodes = []
        self._cluster_id = ""

    def log_files(self) -> list[Path]:
        """Each node's ``kafka.log`` (the JVM's standard output and error)."""
        return [self.node_dir(node.index) / "kafka.log" for node in self._nodes]

    # -- internals -------------------------------------------------------------------------

    def _create(self, java: str, lib: Path) -> None:
        if self.state_dir.exists():
            for child in self.state_dir.glob("node-*"):
                shutil.rmtree(child)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._cluster_id = _cluster_id()
        self._recorded_version = self.version
        self._nodes = []
        for index in range(self.nodes):
            if self.port is not None:
                broker_port = self.port + index
                if _port_in_use(broker_port):
                    raise LocalKafkaError(
                        f"Port {broker_port} on 127.0.0.1 is already in use by another program. "
                        "Pass --port (or set KAFKALOOP_BROKER_PORT) to pick another one."
                    )
            else:
                broker_port = free_port()
            sasl_port = free_port() if self.sasl_users else None
            self._nodes.append(_Node(index, broker_port, free_port(), sasl_port=sasl_port))
        (self.state_dir / "log4j2.properties").write_text(_LOG4J2)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self._nodes)
        formatters = []
        for node in self._nodes:
            node_dir = self.node_dir(node.index)
            node_dir.mkdir(parents=True)
            props = node_dir / "server.properties"
            props.write_text(self._server_properties(node, voters))
            formatters.append(
                subprocess.Popen(
                    [
                        java,
                        "-Xmx256m",
                        "-XX:TieredStopAtLevel=1",
                        *self._log_opts(),
                        "-cp",
                        f"{lib}/*",
                        "kafka.tools.StorageTool",
                        "format",
                        "-t",
                        self._cluster_id,
                        "-c",
                        str(props),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
            )
        for node, proc in zip(self._nodes, formatters, strict=True):
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise LocalKafkaError(
                    f"Formatting the storage of node {node.index} failed "
                    f"(exit {proc.returncode}):\n{out.decode(errors='replace')[-2000:]}"
                )

    def _server_properties(self, node: _Node, voters: str) -> str:
        replicas = min(3, self.nodes)
        listeners, advertised, protocols = node.listeners()
        sasl: dict[str, str] = {}
        if self.sasl_users:
            users = " ".join(f'user_{name}="{secret}"' for name, secret in self.sasl_users.items())
            sasl = {
                "sasl.enabled.mechanisms": "PLAIN",
                "listener.name.sasl.sasl.enabled.mechanisms": "PLAIN",
                "listener.name.sasl.plain.sasl.jaas.config": (
                    f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
                ),
            }
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": listeners,
            "advertised.listeners": advertised,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": protocols,
            "log.dirs": str(self.node_dir(node.index) / "data"),
            "num.partitions": "1",
            "default.replication.factor": str(replicas),
            "offsets.topic.replication.factor": str(replicas),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(min(2, self.nodes)),
            "share.coordinator.state.topic.replication.factor": str(replicas),
            "share.coordinator.state.topic.min.isr": str(min(2, self.nodes)),
            # A development cluster: consumers join at once instead of waiting for peers.
            "group.initial.rebalance.delay.ms": "0",
            "log.segment.bytes": str(64 * 1024 * 1024),
            # Two cores: a few threads each, not one per core of a server.
            "num.network.threads": "2",
            "num.io.threads": "4",
            **sasl,
            **self.properties,
        }
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def _log_opts(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={self.state_dir / 'log4j2.properties'}"]

    def _launch(self, java: str, lib: Path, node: _Node) -> None:
        node_dir = self.node_dir(node.index)
        for port in (node.broker_port, node.controller_port, node.sasl_port):
            if port is not None and _port_in_use(port):
                raise LocalKafkaError(
                    f"Node {node.index} cannot start: port {port} on 127.0.0.1 is taken by "
                    f"another program. Run `kafkaloop broker down --purge` to start afresh "
                    f"on new ports."
                )
        cmd = [
            java,
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            _marker(node_dir),
            *self._log_opts(),
            "-cp",
            f"{lib}/*",
            "kafka.Kafka",
            str(node_dir / "server.properties"),
        ]
        previous = self._procs.pop(node.index, None)
        if previous is not None:
            previous.wait()  # it is dead (is_running said so): only reap it
        with open(node_dir / "kafka.log", "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=node_dir,
                start_new_session=True,
            )
        self._procs[node.index] = proc
        node.pid = proc.pid

    def _wait_ready(self, indexes: Iterator[int] | range | list[int], timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        for index in indexes:
            node = self._nodes[index]
            # log_level 0: refused connections are expected until the JVM is up.
            admin = AdminClient({"bootstrap.servers": node.address, "log_level": 0})
            while True:
                if not self.is_running(index):
                    raise LocalKafkaError(
                        f"Kafka node {index} exited during start-up. The end of "
                        f"{self.node_dir(index) / 'kafka.log'}:\n{self._log_tail(index)}"
                    )
                try:
                    metadata = admin.list_topics(timeout=1.0)
                except Exception:
                    metadata = None
                if (
                    metadata is not None
                    and node.node_id in metadata.brokers
                    and len(metadata.brokers) >= self._expected_live()
                ):
                    break
                if time.monotonic() > deadline:
                    raise LocalKafkaError(
                        f"Kafka node {index} did not answer metadata requests within "
                        f"{timeout:.0f}s. The end of its log:\n{self._log_tail(index)}"
                    )
                time.sleep(0.2)

    def _expected_live(self) -> int:
        return sum(1 for node in self._nodes if self.is_running(node.index))

    def _alive(self, index: int, pid: int | None = None) -> bool:
        """Whether node `index` runs (its recorded pid, or `pid`). A JVM this object started is
        asked through its process handle: between the fork and the end of its exec, /proc
        shows another command line, or none, and would read as not ours. One started by
        another process is looked up in /proc."""
        pid = self._nodes[index].pid if pid is None else pid
        if pid is None:
            return False
        proc = self._procs.get(index)
        if proc is not None and proc.pid == pid:
            return proc.poll() is None
        return _pid_is_ours(pid, self.node_dir(index))

    def _log_tail(self, index: int, lines: int = 30) -> str:
        try:
            text = (self.node_dir(index) / "kafka.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _signal_node(self, index: int, signum: signal.Signals) -> None:
        node = self._nodes[index]
        if node.pid is None or not self._alive(index):
            raise LocalKafkaError(f"Kafka node {index} is not running.")
        os.kill(node.pid, signum)

    def _signal_and_wait(self, indexes: list[int], signum: signal.Signals, timeout: float) -> None:
        running = {
            index: pid
            for index in indexes
            if (pid := self._nodes[index].pid) is not None and self._alive(index, pid)
        }
        for pid in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a paused JVM cannot act on SIGTERM
                os.kill(pid, signum)
        deadline = time.monotonic() + timeout
        while running:
            running = {i: p for i, p in running.items() if self._alive(i, p)}
            if not running:
                break
            if time.monotonic() > deadline:
                for pid in running.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                signum = signal.SIGKILL
            time.sleep(0.1)
        for index in indexes:
            self._nodes[index].pid = None
            proc = self._procs.pop(index, None)
            if proc is not None:
                proc.wait()  # signalled and gone: collect its exit status


def print_progress(message: str, stream: TextIO | None = None) -> None:
    """Progress output for long launcher steps (on standard error as it is when called)."""
    print(message, file=stream or sys.stderr, flush=True)
