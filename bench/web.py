"""Web load: the reference service against the design note's app and FastStream, same run.

    .venv/bin/python -m bench.web            # 3 rounds x 6 levels x 13 endpoints x 2 tools
    .venv/bin/python -m bench.web --quick    # 1 round, 3 s cells, concurrency 10 and 400
    .venv/bin/python -m bench.web --apps kafkaloop baseline --generators wrk --concurrency 400
    .venv/bin/python -m bench.web --apps kafkaloop --variant no-cache KAFKALOOP_ITEM_CACHE=false

Each app is a process of its own (one uvicorn worker, log level warning) on a port of its own,
producing to a fresh topic of its own; all run for the whole benchmark. Servers are pinned to
one core and the load generator (siege as in the note, and wrk) to the other, so the two do not
take turns on one core: by default (``--pin loop``) only each server's event-loop thread is on
the server core, its other threads (librdkafka's), the broker and the generator on the other,
as one uvicorn worker runs on a machine with cores to spare; ``--pin process`` puts every thread
of a server on its core and leaves the broker's JVM wherever the scheduler puts it. For every
(round, concurrency, app, endpoint, generator): a warm-up (siege's cells warm up with wrk where
it is installed), then a timed run; the order of the apps' endpoints rotates every round so drift
hits all alike. Figures are medians over rounds.
The reference service also gets /items0, the asyncio floor (bench/apps/kafkaloop_app.py): its
no-op plus one await and no Kafka, the most any awaited endpoint can keep of the no-op here.
``--variant NAME ENV=VALUE...`` runs the reference service once more, as the app
``kafkaloop-NAME`` with those environment variables set, in the same rounds: an A/B of a setting
in one run, each variant's endpoints judged over its own no-op.

Throughput counts 2xx answers only. wrk gives latency percentiles; siege gives only the mean
(computed here from its concurrency and elapsed time, as its own `response_time` has 10 ms
resolution). The generator's CPU (user + system, every thread) over the timed run is reported
as a share of one core: well under 100% means the generator was not the bottleneck. So is the
server's (every thread: above 100% when its librdkafka threads run on the other core) and its
event-loop thread's alone (near 100%: the loop was the limit), with what other processes (the
broker, ...) took of the server's core meanwhile, and 2xx answers per server CPU-second: what
an answer costs, a figure that holds even when something else shared the core.

Delivery is checked against Kafka: per cell, the topic's messages (high watermarks) must grow
by at least the 2xx answers of a producing endpoint, and by no more than those plus what was
in flight when the generator stopped (at most its concurrency at each cut-off, plus its errors
and non-2xx answers); the no-op and the floor must produce nothing. At the end, a fixed number of
requests that all complete gives the exact check: messages == 2xx answers, per endpoint.

Writes bench/results/web.csv, web.png (the note's chart, a panel per generator) and web.md (what
is printed); the apps' own output goes to a temporary directory named at the end. Exits 1 when
a delivery check fails or an app dies.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench._common import (
    RESULTS,
    Progress,
    bench_broker,
    bootstrap_of,
    machine_note,
    markdown_table,
    median,
    write_csv,
)
from kafkaloop.broker import free_port

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"name": "bench"}'
PARTITIONS = 3  # the reference service's default for the topics it creates
NOOP = "items5"
FLOOR = "items0"  # kafkaloop's app only: the no-op plus one await, no Kafka (bench/apps)
SILENT = (FLOOR, NOOP)  # endpoints that produce nothing
ENDPOINT_KINDS = {
    FLOOR: "asyncio floor",
    "items1": "awaited",
    "items2": "callback on loop",
    "items3": "callback on poll thread",
    "items4": "fire-and-forget",
    "items5": "no-op",
}
OUT_OF_BAND = ("items2", "items3", "items4")
UNCHECKED = "n/a (generator failed)"  # a cell's Kafka check when its generator failed


# -- the apps under test ----------------------------------------------------------------------


@dataclass(frozen=True)
class App:
    """How to start one contender and tell when it is ready."""

    name: str
    argv: tuple[str, ...]  # followed by --port P
    topic_env: str
    endpoints: tuple[str, ...]
    ready: tuple[str, str]  # method, path: a 200 there means it serves
    env: dict[str, str] = field(default_factory=dict)


PYTHON = sys.executable
APPS = {
    "kafkaloop": App(
        "kafkaloop",
        (PYTHON, "-m", "bench.apps.kafkaloop_app"),
        "KAFKALOOP_ITEMS_TOPIC",
        (FLOOR, "items1", "items2", "items3", "items4", "items5"),
        ("GET", "/readyz"),
        # Stopping must not outlast the benchmark's patience; the flush gets half of it.
        {"KAFKALOOP_TOPIC_PARTITIONS": str(PARTITIONS), "KAFKALOOP_SHUTDOWN_TIMEOUT": "20"},
    ),
    "baseline": App(
        "baseline",
        (PYTHON, "-m", "bench.apps.baseline_app"),
        "BENCH_ITEMS_TOPIC",
        ("items1", "items2", "items3", "items4", "items5"),
        ("POST", "/items5"),
    ),
    "faststream": App(
        "faststream",
        (PYTHON, "-m", "bench.apps.faststream_app"),
        "BENCH_ITEMS_TOPIC",
        ("items1", "items5"),
        ("POST", "/items5"),
    ),
}


def variant_app(name: str, env: dict[str, str]) -> App:
    """The reference service as an app of its own, ``kafkaloop-NAME``, with `env` set."""
    base = APPS["kafkaloop"]
    return replace(base, name=f"{base.name}-{name}", env={**base.env, **env})


def app_rank(name: str) -> tuple[int, str]:
    """Report order: the apps as listed in APPS, then the variants by name."""
    order = list(APPS)
    return (order.index(name), "") if name in order else (len(order), name)


class Server:
    """One app's process: started pinned, stopped with SIGTERM, its CPU time readable."""

    def __init__(
        self, app: App, bootstrap: str, topic: str, pin: list[str], log_path: Path
    ) -> None:
        self.app = app
        self.topic = topic
        self.port = free_port()
        self.log_path = log_path
        env = {
            **os.environ,
            **app.env,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            app.topic_env: topic,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*pin, *app.argv, "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def url(self, endpoint: str) -> str:
        return f"http://127.0.0.1:{self.port}/{endpoint}"

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_ready(self, limit: float = 90.0) -> None:
        method, path = self.app.ready
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.app.name} exited with {self.process.returncode} before it was "
                    f"ready:\n{self.log_tail()}"
                )
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}{path}",
                data=BODY if method == "POST" else None,
                headers={"Content-Type": "application/json"},
                method=method,
            )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(request, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.app.name} not ready after {limit:.0f}s:\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.app.name} exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def cpu_seconds(self, *, loop_only: bool = False) -> float:
        """User + system time of every thread of the server so far (of its main thread,
        which runs the event loop, with `loop_only`)."""
        pid = self.process.pid
        path = f"/proc/{pid}/task/{pid}/stat" if loop_only else f"/proc/{pid}/stat"
        stat = Path(path).read_text()
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, limit: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(limit)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_quiet(servers: Sequence[Server], limit: float = 5.0, busy: float = 0.1) -> None:
    """Wait (a while at most) until no server uses more than `busy` of a core.

    A service that consumes its own topic may still be catching up after its cell; the next
    cell, maybe another app's, must not share the servers' core with that.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = [s.cpu_seconds() for s in servers]
        time.sleep(0.2)
        if all(s.cpu_seconds() - b < busy * 0.2 for s, b in zip(servers, before, strict=True)):
            return


# -- load generators --------------------------------------------------------------------------

# A request unanswered this long is an error, for every generator (siege's own default is 30 s).
REQUEST_TIMEOUT = 10
# A generator not gone this long after its run (plus one request's timeout) is stopped and its
# cell counted as failed: Debian's siege (4.0.7) now and then hangs as it ends a timed run, an
# upstream bug reported fixed in siege 4.1.4; each such hang used to cost a minute.
STOP_GRACE = 10


@dataclass
class Outcome:
    """What one generator run reports."""

    ok: int = 0
    non2xx: int = 0
    errors: int = 0
    seconds: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    avg_ms: float | None = None
    failure: str | None = None  # the generator itself failed: counts are not to be trusted


class Generator(Protocol):
    name: str

    def argv(self, url: str, concurrency: int, seconds: int) -> list[str]: ...

    def parse(self, stdout: str) -> Outcome: ...


class Siege:
    """siege, configured as the note did (verbose off), reporting JSON; keep-alive, no delay."""

    name = "siege"

    def __init__(self, workdir: Path, max_concurrency: int) -> None:
        self.workdir = workdir
        self.body = workdir / "body.json"
        self.body.write_bytes(BODY)
        self.rc = workdir / "siegerc"
        # keep-alive as wrk does, so both measure the app rather than TCP set-up (and no run
        # exhausts loopback ports); benchmark: no delay between a user's requests; failures:
        # never abort, the errors are counted instead; parser: no fetching of page assets.
        self.rc.write_text(
            "verbose = false\nquiet = true\njson_output = true\nshow-logfile = false\n"
            "logging = false\nparser = false\nprotocol = HTTP/1.1\nconnection = keep-alive\n"
            f"benchmark = true\nfailures = 1000000\nlimit = {max(255, max_concurrency)}\n"
            f"timeout = {REQUEST_TIMEOUT}\n"
        )

    def argv(self, url: str, concurrency: int, seconds: int) -> list[str]:
        urls = self.workdir / f"urls-{re.sub('[^0-9A-Za-z]', '-', url)}.txt"
        if not urls.exists():
            urls.write_text(f"{url} POST <{self.body}\n")
        return [
            "siege",
            f"--rc={self.rc}",
            f"--file={urls}",
            f"--concurrent={concurrency}",
            f"--time={seconds}S",
            "--content-type=application/json",
        ]

    def parse(self, stdout: str) -> Outcome:
        report = json.loads(stdout[stdout.index("{") :])
        hits = int(report["transactions"])
        ok = int(report["successful_transactions"])
        elapsed = float(report["elapsed_time"])
        # siege's concurrency is the summed response time over the elapsed time.
        avg = float(report["concurrency"]) * elapsed / hits * 1000 if hits else None
        return Outcome(
            ok=ok,
            non2xx=hits - ok,
            errors=int(report["failed_transactions"]),
            seconds=elapsed,
            avg_ms=avg,
        )


WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "duration_us": %%d, "non2xx": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d, "mean_us": %%f}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


class Wrk:
    """wrk with one thread (it has one core), the POST body from a Lua script."""

    name = "wrk"

    def __init__(self, workdir: Path) -> None:
        self.script = workdir / "post.lua"
        self.script.write_text(WRK_SCRIPT % BODY.decode())

    def argv(self, url: str, concurrency: int, seconds: int) -> list[str]:
        return [
            "wrk",
            "--threads=1",
            f"--connections={concurrency}",
            f"--duration={seconds}s",
            f"--timeout={REQUEST_TIMEOUT}s",
            f"--script={self.script}",
            url,
        ]

    def parse(self, stdout: str) -> Outcome:
        line = next(x for x in reversed(stdout.splitlines()) if x.startswith("{"))
        report = json.loads(line)
        # wrk's status errors are answers >= 400: the only non-2xx these apps give.
        errors = sum(int(report[k]) for k in ("connect", "read", "write", "timeout"))
        answered = int(report["requests"])
        return Outcome(
            ok=answered - int(report["non2xx"]),
            non2xx=int(report["non2xx"]),
            errors=errors,
            seconds=int(report["duration_us"]) / 1e6,
            p50_ms=int(report["p50_us"]) / 1000 if answered else None,
            p99_ms=int(report["p99_us"]) / 1000 if answered else None,
            avg_ms=float(report["mean_us"]) / 1000 if answered else None,
        )


class Hey:
    """hey (optional): goroutine per user, latency percentiles, status code counts."""

    name = "hey"

    def __init__(self, workdir: Path) -> None:
        self.body = workdir / "body.json"
        self.body.write_bytes(BODY)

    def argv(self, url: str, concurrency: int, seconds: int) -> list[str]:
        return [
            "hey",
            "-z",
            f"{seconds}s",
            "-c",
            str(concurrency),
            "-t",
            str(REQUEST_TIMEOUT),
            "-m",
            "POST",
            "-T",
            "application/json",
            "-D",
            str(self.body),
            url,
        ]

    def parse(self, stdout: str) -> Outcome:
        total = re.search(r"Total:\s+([\d.]+) secs", stdout)
        codes = {
            int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", stdout)
        }
        errors_part = (
            stdout.split("Error distribution:", 1)[1] if "Error distribution" in stdout else ""
        )
        errors = sum(int(n) for n in re.findall(r"\[(\d+)\]", errors_part))

        def quantile(q: str) -> float | None:
            found = re.search(rf"{q}% in ([\d.]+) secs", stdout)
            return float(found.group(1)) * 1000 if found else None

        average = re.search(r"Average:\s+([\d.]+) secs", stdout)
        ok = sum(n for code, n in codes.items() if 200 <= code < 300)
        return Outcome(
            ok=ok,
            non2xx=sum(codes.values()) - ok,
            errors=errors,
            seconds=float(total.group(1)) if total else 0.0,
            p50_ms=quantile("50"),
            p99_ms=quantile("99"),
            avg_ms=float(average.group(1)) * 1000 if average and ok else None,
        )


@dataclass
class Timed:
    """One generator run: its outcome, wall time, and the generator's own CPU seconds."""

    outcome: Outcome
    wall: float
    cpu: float


def run_generator(
    generator: Generator,
    url: str,
    concurrency: int,
    seconds: int,
    pin: list[str],
    stderr_path: Path,
) -> Timed:
    argv = [*pin, *generator.argv(url, concurrency, seconds)]
    # The generator is the only child reaped during the run, so the children's rusage grows
    # by exactly its CPU time (every thread of it), read after it has exited.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(stderr_path, "wb") as stderr:
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                timeout=seconds + REQUEST_TIMEOUT + STOP_GRACE,
                check=False,
            )
        except subprocess.TimeoutExpired:
            done = None
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done is None:
        return Timed(Outcome(failure=f"{generator.name} did not stop"), wall, cpu)
    stdout = done.stdout.decode(errors="replace")
    try:
        outcome = generator.parse(stdout)
    except (ValueError, KeyError, StopIteration):
        tail = stderr_path.read_text(errors="replace").strip().splitlines()[-3:]
        outcome = Outcome(failure=f"{generator.name} exited {done.returncode}: {' | '.join(tail)}")
    else:
        if done.returncode != 0:
            outcome.failure = f"{generator.name} exited {done.returncode}"
    return Timed(outcome, wall, cpu)


# -- Kafka's side of the count ----------------------------------------------------------------


class Watermarks:
    """How many messages each topic holds (the sum of its partitions' high watermarks)."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"bench-web-{uuid.uuid4().hex[:8]}"}
        )

    def total(self, topic: str) -> int:
        partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )

    def settled(self, topic: str, limit: float = 15.0) -> int:
        """The total once it stops moving: deliveries still on their way are in."""
        deadline = time.monotonic() + limit
        last = self.total(topic)
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.total(topic)
            if now == last:
                return now
            last = now
        return last

    def close(self) -> None:
        self._consumer.close()


# Warnings and worse only: at info level librdkafka announces its own tidying-up on exit.
QUIET = {"log_level": 4}


def create_topics(bootstrap: str, names: Sequence[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, **QUIET})
    for future in admin.create_topics(
        [NewTopic(n, num_partitions=PARTITIONS) for n in names]
    ).values():
        future.result(30)


def delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, **QUIET})
    for future in admin.delete_topics(list(names)).values():
        with contextlib.suppress(Exception):
            future.result(30)


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


async def post_many(port: int, path: str, total: int, connections: int) -> collections.Counter[int]:
    """`total` POSTs over `connections` keep-alive connections, every answer awaited.

    Returns the count per status; -1 counts requests whose connection failed.
    """
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    statuses: collections.Counter[int] = collections.Counter()
    remaining = total

    async def connection() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while remaining > 0:
                remaining -= 1
                try:
                    writer.write(request)
                    status = int((await reader.readline()).split()[1])
                    length = 0
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    await reader.readexactly(length)
                except (OSError, IndexError, ValueError, asyncio.IncompleteReadError):
                    statuses[-1] += 1
                    return
                statuses[status] += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return statuses


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Cell:
    """One timed run of one generator on one endpoint of one app, with its warm-up."""

    round: int
    generator: str
    app: str
    endpoint: str
    concurrency: int
    warm: Outcome
    measured: Outcome
    generator_cpu: float  # share of one core over the timed run
    server_cpu: float
    server_cpu_seconds: float
    loop_cpu: float  # the server's event-loop thread alone, share of one core
    others_on_server_core: float | None  # what other processes took of the server's core
    kafka_delta: int

    @property
    def answered_ok(self) -> int:
        return self.warm.ok + self.measured.ok

    @property
    def in_flight_bound(self) -> int:
        """Messages Kafka may hold beyond the 2xx answers: requests the generator gave up on."""
        cutoffs = 2 if self.warm.seconds else 1
        unanswered = sum(o.errors + o.non2xx for o in (self.warm, self.measured))
        return cutoffs * self.concurrency + unanswered

    @property
    def delivery(self) -> str:
        if self.warm.failure or self.measured.failure:
            return UNCHECKED
        if self.endpoint in SILENT:
            return "ok" if self.kafka_delta == 0 else f"{self.kafka_delta} unexpected"
        excess = self.kafka_delta - self.answered_ok
        if excess < 0:
            return f"LOST {-excess}"
        if excess > self.in_flight_bound:
            return f"EXTRA {excess - self.in_flight_bound}"
        return "ok"


@dataclass(frozen=True)
class Pinning:
    """Which core runs what: taskset prefixes, and the cores themselves.

    ``loop`` (the default): each server's event-loop thread alone on the server core; the
    server's other threads (librdkafka's, a poll thread), the broker and the load generator
    on the other core. The design note measured one uvicorn worker, that is one event loop,
    on a machine with cores to spare for the rest. ``process``: the whole server process,
    every thread, on the server core; the broker wherever the scheduler puts it.
    """

    mode: str
    server: list[str]  # prefix for starting a server
    generator: list[str]
    server_core: int | None
    generator_core: int | None
    note: str

    def settle_server(self, pid: int) -> None:
        """Once a server is ready, its threads as `mode` says (threads it starts later
        inherit their creator's: the loop's stay on the server core)."""
        if self.mode != "loop" or self.server_core is None or self.generator_core is None:
            return
        for tid in threads(pid):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                core = self.server_core if tid == pid else self.generator_core
                os.sched_setaffinity(tid, {core})

    def settle_broker(self, pids: Sequence[int]) -> dict[int, set[int]]:
        """The bench's own broker (every thread of `pids`) on the generator core, in ``loop``
        mode; returns each thread's cores before, for :func:`restore_cores`."""
        before: dict[int, set[int]] = {}
        if self.mode != "loop" or self.generator_core is None:
            return before
        for pid in pids:
            for tid in threads(pid):
                with contextlib.suppress(OSError):  # a thread that ended meanwhile
                    before[tid] = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, {self.generator_core})
        return before


def restore_cores(before: dict[int, set[int]]) -> None:
    """Put threads back on the cores they had (a broker that outlives the bench)."""
    for tid, cores in before.items():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cores)


def threads(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    return []


def pinning(mode: str) -> Pinning:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or not shutil.which("taskset"):
        return Pinning(mode, [], [], None, None, "no pinning (needs two cores and taskset)")
    server, generator = cores[0], cores[1]
    if mode == "loop":
        return Pinning(
            mode,
            [],
            ["taskset", "-c", str(generator)],
            server,
            generator,
            f"each server's event-loop thread pinned to core {server}; the servers' other "
            f"threads (librdkafka's), the bench's own broker (not one named by "
            f"$KAFKA_BOOTSTRAP_SERVERS) and the load generator to core {generator}",
        )
    return Pinning(
        mode,
        ["taskset", "-c", str(server)],
        ["taskset", "-c", str(generator)],
        server,
        generator,
        f"servers (every thread) pinned to core {server}, load generator to core {generator}, "
        "broker unpinned",
    )


def core_jiffies(core: int | None) -> tuple[int, int]:
    """(busy, total) time of one core so far, from /proc/stat; (0, 0) for no core."""
    if core is None:
        return 0, 0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            ticks = [int(x) for x in line.split()[1:]]
            idle = ticks[3] + ticks[4]  # idle and iowait
            return sum(ticks[:8]) - idle, sum(ticks[:8])
    return 0, 0


def make_generators(names: Sequence[str], workdir: Path, levels: Sequence[int]) -> list[Generator]:
    missing = " ".join(n for n in names if not shutil.which(n))
    if missing:
        sys.exit(f"Missing load generator(s): {missing}; apt-get install -y {missing}")
    made: dict[str, Generator] = {
        "siege": Siege(workdir, max(levels)),
        "wrk": Wrk(workdir),
        "hey": Hey(workdir),
    }
    return [made[n] for n in names]


def run(args: argparse.Namespace) -> int:
    run_id = uuid.uuid4().hex[:6]
    apps = [APPS[a] for a in APPS if a in args.apps]
    apps += [variant_app(name, env) for name, env in args.variants.items()]
    levels: list[int] = args.concurrency
    pins = pinning(args.pin)
    pairs = [(app, endpoint) for app in apps for endpoint in app.endpoints]
    cells_total = args.rounds * len(levels) * len(pairs) * len(args.generators)
    exact_total = sum(len(a.endpoints) for a in apps)
    estimate = cells_total * (args.warmup + args.duration + 2)
    machine = machine_note()  # (its load average is the start's: the report says so)
    print(f"# Web load, run {run_id}\n\n{machine}\n")
    print(
        f"One uvicorn worker per app, log level warning; {pins.note}. {args.rounds} round(s) of "
        f"{args.warmup} s warm-up + {args.duration} s per cell, {cells_total} cells "
        f"(about {estimate / 60:.0f} min).\n"
    )
    sys.stdout.flush()
    # Outside bench/results (which is committed): the apps' own output, for a look afterwards.
    log_dir = Path(tempfile.gettempdir()) / f"bench-web-{run_id}"
    cells: list[Cell] = []
    exact: list[list[Any]] = []
    progress = Progress(1 + cells_total + exact_total)
    # SIGTERM unwinds like Ctrl-C: the servers, the broker and the topics are cleaned up.
    signal.signal(signal.SIGTERM, _interrupted)
    with bench_broker() as kafka, tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        # A broker named by $KAFKA_BOOTSTRAP_SERVERS is not the bench's to pin.
        bootstrap = bootstrap_of(kafka)
        broker_cores = pins.settle_broker([] if kafka is None else kafka.pids())
        workdir = Path(tmp)
        generators = make_generators(args.generators, workdir, levels)
        topics = {app.name: f"bench-web-{app.name}-{run_id}" for app in apps}
        create_topics(bootstrap, list(topics.values()))
        marks = Watermarks(bootstrap)
        servers: dict[str, Server] = {}
        aborted: str | None = None
        try:
            progress.step("starting the apps")
            for app in apps:
                servers[app.name] = Server(
                    app, bootstrap, topics[app.name], pins.server, log_dir / f"{app.name}.log"
                )
            for server in servers.values():
                server.wait_ready()
                pins.settle_server(server.process.pid)
            everyone = list(servers.values())
            for round_ in range(args.rounds):
                for concurrency in levels:
                    # A new order each round, so no endpoint always runs right after another.
                    shift = round_ * max(1, len(pairs) // max(1, args.rounds)) % len(pairs)
                    for app, endpoint in pairs[shift:] + pairs[:shift]:
                        server = servers[app.name]
                        for generator in generators:
                            progress.step(
                                f"round {round_ + 1} c={concurrency} {generator.name} "
                                f"{app.name} /{endpoint}"
                            )
                            cells.append(
                                run_cell(
                                    args,
                                    round_,
                                    generator,
                                    server,
                                    everyone,
                                    endpoint,
                                    concurrency,
                                    marks,
                                    pins,
                                    workdir,
                                )
                            )
            for app in apps:
                for endpoint in app.endpoints:
                    progress.step(f"exact delivery check {app.name} /{endpoint}")
                    exact.append(exact_check(servers[app.name], everyone, endpoint, marks))
        except RuntimeError as error:  # an app died or never got ready: report what ran
            aborted = str(error)
        finally:
            progress.finish()
            for server in servers.values():
                server.stop()
            marks.close()
            delete_topics(bootstrap, list(topics.values()))
            restore_cores(broker_cores)
    status = report(args, run_id, machine, cells, exact)
    print(f"The apps' output: {log_dir}/")
    if aborted:
        print(f"\nABORTED: {aborted}", file=sys.stderr)
        return 1
    return status


def run_cell(
    args: argparse.Namespace,
    round_: int,
    generator: Generator,
    server: Server,
    everyone: Sequence[Server],
    endpoint: str,
    concurrency: int,
    marks: Watermarks,
    pins: Pinning,
    workdir: Path,
) -> Cell:
    for each in everyone:
        each.check_alive()
        # Threads a server started since (a callback thread, on first use) inherited their
        # creator's core.
        pins.settle_server(each.process.pid)
    wait_quiet(everyone)
    url = server.url(endpoint)
    stderr = workdir / "generator.err"
    before = marks.settled(server.topic)
    warm = Outcome()
    if args.warmup:
        # A warm-up warms the server, whatever measures it next: siege's cells warm up with
        # wrk where it is installed, as siege's hangs (STOP_GRACE) came mostly at the end of its
        # short warm-up runs, and a hung warm-up leaves its cell unchecked.
        warmer = Wrk(workdir) if generator.name == "siege" and shutil.which("wrk") else generator
        warm = run_generator(warmer, url, concurrency, args.warmup, pins.generator, stderr).outcome
    pins.settle_server(server.process.pid)  # and any the warm-up started
    server_before, core_before = server.cpu_seconds(), core_jiffies(pins.server_core)
    loop_before = server.cpu_seconds(loop_only=True)
    timed = run_generator(generator, url, concurrency, args.duration, pins.generator, stderr)
    server_cpu = server.cpu_seconds() - server_before
    loop_cpu = server.cpu_seconds(loop_only=True) - loop_before
    busy, total = (b - a for a, b in zip(core_before, core_jiffies(pins.server_core), strict=True))
    # The core's busy share minus the server's there (its loop alone when only the loop is
    # pinned to it): the broker or anything else running on that core.
    on_core = loop_cpu if pins.mode == "loop" else server_cpu
    others = max(0.0, busy / total - on_core / timed.wall) if total else None
    server.check_alive()
    delta = marks.settled(server.topic) - before
    return Cell(
        round=round_,
        generator=generator.name,
        app=server.app.name,
        endpoint=endpoint,
        concurrency=concurrency,
        warm=warm,
        measured=timed.outcome,
        generator_cpu=timed.cpu / timed.wall,
        server_cpu=server_cpu / timed.wall,
        server_cpu_seconds=server_cpu,
        loop_cpu=loop_cpu / timed.wall,
        others_on_server_core=others,
        kafka_delta=delta,
    )


def exact_check(
    server: Server, everyone: Sequence[Server], endpoint: str, marks: Watermarks
) -> list[Any]:
    wait_quiet(everyone)
    before = marks.settled(server.topic)
    statuses = asyncio.run(post_many(server.port, f"/{endpoint}", total=1000, connections=20))
    delta = marks.settled(server.topic) - before
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    expected = ok if endpoint not in SILENT else 0
    others = sum(statuses.values()) - ok
    verdict = "ok" if delta == expected and not others else "MISMATCH"
    return [server.app.name, f"/{endpoint}", ok, others, delta, verdict]


# -- the report -------------------------------------------------------------------------------


def _ms(value: float | None) -> float | str:
    return round(value, 2) if value is not None and not math.isnan(value) else ""


def _pct(value: float | None) -> int | str:
    return round(100 * value) if value is not None else ""


def _rate(cell: Cell) -> float | None:
    good = not cell.measured.failure and cell.measured.seconds
    return cell.measured.ok / cell.measured.seconds if good else None


def _paired(group: Sequence[Cell], cells: Sequence[Cell]) -> dict[str, Any]:
    """The endpoint's throughput over the no-op's of the same round, cell by cell: the no-op
    ran minutes apart at most, so drift between rounds drops out. Median, lowest and highest
    over the rounds; their spread is how far one round can be trusted."""
    noop = {
        c.round: _rate(c)
        for c in cells
        if c.endpoint == NOOP
        and (c.generator, c.app, c.concurrency)
        == (group[0].generator, group[0].app, group[0].concurrency)
    }
    ratios = []
    for cell in group:
        rate, base = _rate(cell), noop.get(cell.round)
        if rate is not None and base:
            ratios.append(rate / base)
    if not ratios:
        return {
            "paired_ratio": "",
            "paired_ratio_min": "",
            "paired_ratio_max": "",
            "paired_rounds": 0,
        }
    return {
        "paired_rounds": len(ratios),
        "paired_ratio": round(median(ratios), 3),
        "paired_ratio_min": round(min(ratios), 3),
        "paired_ratio_max": round(max(ratios), 3),
    }


def summarize(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str, int], list[Cell]] = collections.defaultdict(list)
    for cell in cells:
        groups[cell.generator, cell.app, cell.endpoint, cell.concurrency].append(cell)
    rows: list[dict[str, Any]] = []
    for (generator, app, endpoint, concurrency), group in groups.items():
        good = [c for c in group if not c.measured.failure and c.measured.seconds]
        rates = [c.measured.ok / c.measured.seconds for c in good]
        # 2xx answers per CPU-second of the server: what each costs, even when something
        # else took part of the server's core.
        efficiency = [c.measured.ok / c.server_cpu_seconds for c in good if c.server_cpu_seconds]

        def med(values: list[float | None]) -> float | None:
            present = [v for v in values if v is not None]
            return median(present) if present else None

        failed = [c.delivery for c in group if c.delivery != "ok"]
        rows.append(
            {
                "generator": generator,
                "app": app,
                "endpoint": f"/{endpoint}",
                "kind": ENDPOINT_KINDS[endpoint],
                "concurrency": concurrency,
                "rounds": len(good),
                "rps": round(median(rates)) if rates else "",
                "rps_min": round(min(rates)) if rates else "",
                "rps_max": round(max(rates)) if rates else "",
                "p50_ms": _ms(med([c.measured.p50_ms for c in good])),
                "p99_ms": _ms(med([c.measured.p99_ms for c in good])),
                "avg_ms": _ms(med([c.measured.avg_ms for c in good])),
                "ok": sum(c.measured.ok for c in group),
                "non2xx": sum(c.measured.non2xx for c in group),
                "errors": sum(c.measured.errors for c in group),
                "generator_cpu_pct": round(100 * median([c.generator_cpu for c in group])),
                "server_cpu_pct": round(100 * median([c.server_cpu for c in group])),
                "loop_cpu_pct": round(100 * median([c.loop_cpu for c in group])),
                "others_on_server_core_pct": _pct(med([c.others_on_server_core for c in group])),
                "rps_per_server_core": round(median(efficiency)) if efficiency else "",
                "kafka_messages": sum(c.kafka_delta for c in group),
                "answered_2xx_incl_warmup": sum(c.answered_ok for c in group),
                "delivery": "; ".join(failed) if failed else "ok",
                "ratio_to_noop": "",
                "ratio_to_noop_per_cpu": "",
                **_paired(group, cells),
            }
        )
    by_key = {(r["generator"], r["app"], r["endpoint"], r["concurrency"]): r for r in rows}
    for row in rows:
        noop = by_key.get((row["generator"], row["app"], f"/{NOOP}", row["concurrency"]))
        if noop and noop["rps"] and row["rps"] != "":
            row["ratio_to_noop"] = round(row["rps"] / noop["rps"], 3)
        if noop and noop["rps_per_server_core"] and row["rps_per_server_core"] != "":
            row["ratio_to_noop_per_cpu"] = round(
                row["rps_per_server_core"] / noop["rps_per_server_core"], 3
            )
    rows.sort(key=lambda r: (r["generator"], r["concurrency"], app_rank(r["app"]), r["endpoint"]))
    return rows


def ratio_table(rows: Sequence[dict[str, Any]], levels: Sequence[int], column: str) -> str:
    lines: dict[tuple[str, str, str], dict[int, Any]] = collections.defaultdict(dict)
    for row in rows:
        lines[row["generator"], row["app"], row["endpoint"]][row["concurrency"]] = row[column]
    return markdown_table(
        ["generator", "app", "endpoint", *(f"c={c}" for c in levels)],
        [
            [g, a, f"{e} {ENDPOINT_KINDS[e[1:]]}", *(_ratio(v.get(c, "")) for c in levels)]
            for (g, a, e), v in lines.items()
        ],
    )


def _ratio(value: float | str) -> str:
    return f"{value:.3f}" if isinstance(value, float | int) else ""


def _target(
    at: dict[tuple[str, str], dict[str, Any]],
    label: str,
    ours: tuple[str, str],
    other: tuple[str, str],
    target: float,
    strict: bool = False,
) -> str:
    if ours not in at or other not in at:
        return f"{label}: (not measured)"
    a, b = at[ours], at[other]
    ratio = a["rps"] / b["rps"]
    per_cpu = (
        f"{a['rps_per_server_core'] / b['rps_per_server_core']:.3f}"
        if a["rps_per_server_core"] and b["rps_per_server_core"]
        else "-"
    )
    met = ratio > target if strict else ratio >= target
    paired = (
        f"; round by round (n={a['paired_rounds']}): median {a['paired_ratio']:.3f}, "
        f"{a['paired_ratio_min']:.3f}-{a['paired_ratio_max']:.3f}"
        if other[0] == ours[0] and other[1] == f"/{NOOP}" and a.get("paired_ratio") != ""
        else ""
    )
    return (
        f"{label} = {ratio:.3f} ({a['rps']} vs {b['rps']} req/s; per server CPU-second "
        f"{per_cpu}){paired}; target {'>' if strict else '>='} {target:g}: "
        f"{'met' if met else 'MISSED'}"
    )


def targets(rows: Sequence[dict[str, Any]], levels: Sequence[int]) -> list[str]:
    """The issue's targets at 400 users, judged on throughput; the ratio of 2xx answers per
    server CPU-second is shown beside, as it holds even when something else shared the core.
    Each variant of the reference service is judged the same way, over its own no-op."""
    level = 400 if 400 in levels else max(levels)
    lines = [] if level == 400 else [f"(no run at 400 users: at {level} instead)"]
    ours = sorted({r["app"] for r in rows if r["app"].startswith("kafkaloop")}, key=app_rank)
    for generator in sorted({r["generator"] for r in rows}):
        at = {
            (r["app"], r["endpoint"]): r
            for r in rows
            if r["generator"] == generator and r["concurrency"] == level and r["rps"] != ""
        }
        found = []
        for app in ours:
            noop, awaited = (app, f"/{NOOP}"), (app, "/items1")
            found.append(_target(at, f"{app} awaited / no-op", awaited, noop, 0.95))
            floor = at.get((app, f"/{FLOOR}"))
            if floor and floor["rps"] and at.get(noop) and at.get(awaited) and at[noop]["rps"]:
                found.append(
                    f"(the asyncio floor, /{FLOOR}: {floor['rps'] / at[noop]['rps']:.2f}x "
                    "no-op, the most an awaited endpoint can keep on this stack; awaited / "
                    f"floor {at[awaited]['rps'] / floor['rps']:.2f})"
                )
            for endpoint in OUT_OF_BAND:
                label = f"{app} /{endpoint} {ENDPOINT_KINDS[endpoint]} / no-op"
                found.append(_target(at, label, (app, f"/{endpoint}"), noop, 0.98))
        found.append(
            _target(
                at,
                "kafkaloop awaited / baseline awaited",
                ("kafkaloop", "/items1"),
                ("baseline", "/items1"),
                1.0,
                strict=True,
            )
        )
        lines += [f"- {generator}, c={level}: {text}" for text in found]
    return lines


def chart(rows: Sequence[dict[str, Any]], levels: Sequence[int], path: Path) -> None:
    """The note's chart: req/s against concurrency, a line per endpoint, one panel per tool."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    generators = sorted({r["generator"] for r in rows})
    lines = sorted({(r["app"], r["endpoint"]) for r in rows}, key=lambda k: (app_rank(k[0]), k[1]))
    legend_rows = math.ceil(len(lines) / 3)
    height = 5.0 + 0.25 * legend_rows
    fig, axes = plt.subplots(
        1, len(generators), figsize=(7.5 * len(generators), height), squeeze=False
    )
    styles = {"kafkaloop": "-", "baseline": "--", "faststream": ":"}
    colours = {e: f"C{i}" for i, e in enumerate(ENDPOINT_KINDS)}
    for ax, generator in zip(axes[0], generators, strict=True):
        for app, endpoint in lines:
            points = sorted(
                (r["concurrency"], r["rps"])
                for r in rows
                if (r["generator"], r["app"], r["endpoint"]) == (generator, app, endpoint)
                and r["rps"] != ""
            )
            ax.plot(
                [c for c, _ in points],
                [rate for _, rate in points],
                linestyle=styles.get(app, "-."),
                linewidth=2.0 if app == "kafkaloop" else 1.4,
                color=colours[endpoint[1:]],
                marker="o",
                markersize=3,
                label=f"{app} {endpoint} {ENDPOINT_KINDS[endpoint[1:]]}",
            )
        ax.set_xscale("log")
        ax.set_xticks(list(levels), [str(c) for c in levels])
        ax.minorticks_off()
        ax.set_xlabel("Number of concurrent requests")
        ax.set_ylabel("Requests/second (2xx)")
        ax.set_title(f"One uvicorn worker, load by {generator}")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.28 * legend_rows / (legend_rows + 4), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(
    args: argparse.Namespace,
    run_id: str,
    machine: str,
    cells: Sequence[Cell],
    exact: Sequence[list[Any]],
) -> int:
    rows = summarize(cells)
    if not rows:
        print("No cells ran.")
        return 1
    levels: list[int] = args.concurrency
    RESULTS.mkdir(exist_ok=True)
    write_csv(RESULTS / "web.csv", rows)
    chart(rows, levels, RESULTS / "web.png")
    table = markdown_table(
        [
            "generator",
            "c",
            "app",
            "endpoint",
            "req/s",
            "p50 ms",
            "p99 ms",
            "avg ms",
            "non-2xx",
            "errors",
            "gen CPU %",
            "server CPU %",
            "its loop's CPU %",
            "others on its core %",
            "2xx per server CPU-s",
            "Kafka check",
        ],
        [
            [
                r["generator"],
                r["concurrency"],
                r["app"],
                r["endpoint"],
                r["rps"],
                r["p50_ms"] if r["p50_ms"] != "" else "-",
                r["p99_ms"] if r["p99_ms"] != "" else "-",
                r["avg_ms"],
                r["non2xx"],
                r["errors"],
                r["generator_cpu_pct"],
                r["server_cpu_pct"],
                r["loop_cpu_pct"],
                r["others_on_server_core_pct"],
                r["rps_per_server_core"],
                r["delivery"],
            ]
            for r in rows
        ],
    )
    failures = sorted(
        {f"{c.measured.failure} (timed run)" for c in cells if c.measured.failure}
        | {f"{c.warm.failure} (warm-up)" for c in cells if c.warm.failure}
    )
    # A cell whose generator failed (siege, now and then, in a warm-up) is not checked: the
    # exact check still is, and the run says how many went unchecked.
    unchecked = [c for c in cells if c.delivery == UNCHECKED]
    delivery_bad = any(c.delivery not in ("ok", UNCHECKED) for c in cells) or any(
        e[-1] != "ok" for e in exact
    )
    totals: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for cell in cells:
        totals[cell.app][0] += cell.kafka_delta
        totals[cell.app][1] += cell.answered_ok if cell.endpoint not in SILENT else 0
    text = "\n".join(
        [
            f"## Requests/second (median of {args.rounds} round(s), {args.duration} s cells)\n",
            "siege reports no percentiles: its column is the mean latency only. CPU % is a "
            "share of one core over the timed run (generator: every thread of it); "
            '"others on its core" is what other processes (the broker, ...) took of the '
            "server's core meanwhile.\n",
            table,
            "\n## Each endpoint's throughput over the same app's no-op (/items5)\n",
            ratio_table(rows, levels, "ratio_to_noop"),
            "\nThe same, in 2xx answers per CPU-second of the server (what each answer costs; "
            "unmoved by other processes taking part of the server's core):\n",
            ratio_table(rows, levels, "ratio_to_noop_per_cpu"),
            "\nRound by round: each cell over the no-op's cell of the same round, the median "
            "over the rounds (drift between rounds drops out; the targets below also give the "
            "lowest and highest):\n",
            ratio_table(rows, levels, "paired_ratio"),
            "\n## Delivery: Kafka's count against the 2xx answers\n",
            markdown_table(
                ["app", "messages in Kafka (cells)", "2xx to producing endpoints (incl. warm-up)"],
                [[app, got, answered] for app, (got, answered) in totals.items()],
            ),
            "\nTimed cells may leave a few more messages than 2xx answers (requests in flight "
            "when the generator stopped); the exact check below waits for every answer.\n",
            markdown_table(
                ["app", "endpoint", "2xx", "other", "messages in Kafka", "exact check"], exact
            ),
            "\n## Targets\n",
            *targets(rows, levels),
        ]
    )
    if failures:
        text += "\n\n## Generator failures\n\n" + "\n".join(f"- {f}" for f in failures)
    print(text)
    (RESULTS / "web.md").write_text(f"# Web load, run {run_id}\n\n{machine}\n\n{text}\n")
    print(f"\nWrote {RESULTS / 'web.csv'}, {RESULTS / 'web.png'}, {RESULTS / 'web.md'}")
    if unchecked:
        print(f"\n{len(unchecked)} cell(s) not checked against Kafka: their generator failed.")
    if delivery_bad:
        print("\nDELIVERY CHECK FAILED: see the Kafka check column and the exact check.")
        return 1
    return 0


def seconds(text: str) -> int:
    """'10' or '10s'."""
    return int(text.removesuffix("s"))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=seconds, help="seconds per timed run (10)")
    parser.add_argument("--warmup", type=seconds, help="seconds of warm-up before each (3)")
    parser.add_argument("--rounds", type=int, help="rounds (3)")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", help="concurrent users (1 10 50 100 200 400)"
    )
    parser.add_argument(
        "--generators", nargs="+", choices=["siege", "wrk", "hey"], default=["siege", "wrk"]
    )
    parser.add_argument("--apps", nargs="+", choices=list(APPS), default=list(APPS))
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar="ARG",
        help="NAME ENV=VALUE...: also run the reference service as the app kafkaloop-NAME, "
        "with these environment variables set (repeatable), e.g. --variant no-cache "
        "KAFKALOOP_ITEM_CACHE=false",
    )
    parser.add_argument(
        "--pin",
        choices=["loop", "process"],
        default="loop",
        help="loop: each server's event-loop thread alone on one core, the rest (librdkafka's "
        "threads, the broker, the generator) on the other (default); process: every thread "
        "of a server on one core, the broker unpinned",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 round, 3 s cells, 1 s warm-up, c=10 and 400"
    )
    args = parser.parse_args(argv)
    quick = {"duration": 3, "warmup": 1, "rounds": 1, "concurrency": [10, 400]}
    full = {"duration": 10, "warmup": 3, "rounds": 3, "concurrency": [1, 10, 50, 100, 200, 400]}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.duration < 1 or args.rounds < 1 or min(args.concurrency) < 1:
        parser.error("--duration, --rounds and every --concurrency must be at least 1")
    args.variants = {}
    for name, *assignments in args.variant:
        error = variant_error(name, assignments, args.variants)
        if error:
            parser.error(f"--variant {name}: {error}")
        args.variants[name] = dict(a.split("=", 1) for a in assignments)
    return args


def variant_error(name: str, assignments: Sequence[str], seen: Collection[str]) -> str | None:
    """What is wrong with a --variant, if anything: its name goes into an app's name and a
    topic's, so letters, digits and dashes only."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", name):
        return "the name takes letters, digits and dashes only"
    if name in seen:
        return "given twice"
    if not assignments:
        return "no ENV=VALUE given (the reference service as it is already runs as kafkaloop)"
    for assignment in assignments:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", assignment, flags=re.DOTALL):
            return f"{assignment!r} is not ENV=VALUE"
    return None


if __name__ == "__main__":
    sys.exit(run(parse_args()))
