"""The ``kafkaloop`` command line: ``kafkaloop broker up | down | status | logs`` and friends."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar

from kafkaloop._exceptions import ConfigurationError, KafkaloopError
from kafkaloop.broker import LocalKafka, cache_dir, print_progress

if TYPE_CHECKING:
    import asyncio

    from kafkaloop.settings import KafkaSettings

_Settings = TypeVar("_Settings", bound="KafkaSettings")

DEFAULT_PORT = 9092

KAFKA_WAIT = 30.0
"""How long `kafkaloop serve` waits for the cluster to answer before it gives up."""


def _cluster(args: argparse.Namespace, *, nodes: int | None = None) -> LocalKafka:
    port = getattr(args, "port", None) or _port_from_env("KAFKALOOP_BROKER_PORT", DEFAULT_PORT)
    return LocalKafka(
        nodes,
        state_dir=cache_dir() / "clusters" / args.name,
        port=port,
        heap=getattr(args, "heap", None),
        progress=print_progress,
    )


def _broker_up(args: argparse.Namespace) -> int:
    kafka = _cluster(args, nodes=args.nodes)
    asked = args.port or (
        os.environ.get("KAFKALOOP_BROKER_PORT")
        and _port_from_env("KAFKALOOP_BROKER_PORT", DEFAULT_PORT)
    )
    if asked and kafka.first_port is not None and asked != kafka.first_port:
        raise ConfigurationError(
            f"The cluster {args.name!r} was made on port {kafka.first_port} and keeps it, not "
            f"{asked}: leave out --port (and KAFKALOOP_BROKER_PORT), use another --name, or "
            f"`kafkaloop broker down --name {args.name} --purge` (deleting its data) first."
        )
    if not kafka.is_running():
        print_progress(f"Starting a {kafka.nodes}-node Kafka cluster in {kafka.state_dir} ...")
    started = time.monotonic()
    address = kafka.start(timeout=args.timeout)
    if time.monotonic() - started > 1:
        print_progress(f"Kafka is up after {time.monotonic() - started:.1f}s.")
    print(address)
    return 0


def _broker_down(args: argparse.Namespace) -> int:
    kafka = _cluster(args)
    if not kafka.state_dir.exists():  # (a mistyped --name says so, and leaves nothing behind)
        print_progress(f"No local cluster named {args.name!r}: nothing in {kafka.state_dir}.")
        return 0
    running = kafka.is_running()
    if args.purge:
        kafka.purge()
        print_progress(f"Stopped and deleted {kafka.state_dir}.")
    else:
        kafka.stop(timeout=args.timeout)
        print_progress("Stopped." if running else "Not running.")
    return 0


def _broker_status(args: argparse.Namespace) -> int:
    kafka = _cluster(args)
    if kafka.is_running():
        print(f"running {kafka.bootstrap_servers} (pids {' '.join(map(str, kafka.pids()))})")
        return 0
    if kafka.pids():
        print(
            f"degraded: {len(kafka.pids())} of {kafka.nodes} nodes running "
            f"({kafka.bootstrap_servers})"
        )
        return 1
    print("stopped")
    return 3


def _broker_logs(args: argparse.Namespace) -> int:
    kafka = _cluster(args)
    files = kafka.log_files()
    if args.node is not None:
        if args.node >= len(files):
            print_progress(f"No node {args.node}: the cluster has {len(files)}, from node 0.")
            return 2
        files = [files[args.node]]
    files = [path for path in files if path.exists()]  # (a node never started has none)
    if not files:
        print_progress(f"No logs in {kafka.state_dir}: the broker has never been started.")
        return 1
    with contextlib.ExitStack() as stack:
        # Opened once: what is followed starts right where what is printed ends.
        logs = [stack.enter_context(open(path, errors="replace")) for path in files]
        for path, log in zip(files, logs, strict=True):
            lines = log.read().splitlines()
            if len(files) > 1:
                print(f"==> {path} <==")
            if args.lines:
                print("\n".join(lines[-args.lines :]))
        if args.follow:
            _follow(files, logs)
    return 0


def _follow(paths: Sequence[Path], logs: Sequence[IO[str]]) -> None:
    """Print what is written to the open `logs` (of `paths`) from where they are, as
    ``tail -f`` does, until Ctrl-C: with several, each run of whole lines under the name of
    the file it came from."""
    partial = [""] * len(logs)  # a line being written, printed once it is whole
    last = None
    try:
        while True:
            quiet = True
            for i, log in enumerate(logs):
                whole, newline, partial[i] = (partial[i] + log.read()).rpartition("\n")
                if not newline:
                    continue
                quiet = False
                if len(logs) > 1 and i != last:
                    sys.stdout.write(f"==> {paths[i]} <==\n")
                    last = i
                sys.stdout.write(whole + newline)
                sys.stdout.flush()
            if quiet:
                time.sleep(0.2)
    except KeyboardInterrupt:
        pass


def _smoke(args: argparse.Namespace) -> int:
    from kafkaloop._smoke import run_smoke  # imported late: keeps `broker` start-up light
    from kafkaloop.settings import KafkaSettings, bootstrap_from_env

    if bootstrap_from_env():  # a cluster of the user's: with their client configuration
        settings = _settings(KafkaSettings)
        settings.check()
        producer, consumer = settings.producer(), settings.consumer()
    else:
        local = {"bootstrap.servers": _cluster(args).start()}
        producer, consumer = {**local, "enable.idempotence": True}, local
    return run_smoke(producer, consumer, args.topic, args.count)


def http_protocol(write_batching: bool) -> str | type[asyncio.Protocol]:
    """uvicorn's ``http`` for the service: the write-batching protocol when asked for and
    httptools is there, else httptools or h11 as they come."""
    import importlib.util  # imported late: keeps `broker` start-up light

    if not importlib.util.find_spec("httptools"):
        return "h11"
    if not write_batching:
        return "httptools"
    from kafkaloop.write_batching import WriteBatchingProtocol

    return WriteBatchingProtocol


def _cluster_name(value: str) -> str:
    """A local cluster's name: a directory of its own under the cache, never a path."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise argparse.ArgumentTypeError("letters, digits, '.', '_' and '-', not starting with '.'")
    return value


def _whole_number(least: int, most: int, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number from `least` to `most`, else `what` it must be (which
    argparse reports as usage and status 2)."""

    def number(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(what) from None
        if not least <= n <= most:
            raise argparse.ArgumentTypeError(what)
        return n

    return number


_at_least_zero = _whole_number(0, sys.maxsize, "a whole number, at least 0")
_at_least_one = _whole_number(1, sys.maxsize, "a whole number, at least 1")
_port = _whole_number(0, 65535, "not a port number (0-65535)")


def _seconds(value: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError("a number of seconds, above 0") from None
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError("a number of seconds, above 0")
    return seconds


def _port_from_env(variable: str, default: int) -> int:
    """The port `variable` names (unset or empty: `default`), or ConfigurationError."""
    try:
        return _port(os.environ.get(variable) or str(default))
    except argparse.ArgumentTypeError as exc:
        raise ConfigurationError(f"{variable}: {exc}") from None


_SETTINGS = "invalid settings in the environment (KAFKALOOP_*, KAFKA_BOOTSTRAP_SERVERS)"


def _settings(kind: type[_Settings]) -> _Settings:
    """`kind` read from the environment, or ConfigurationError naming what is wrong."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        return kind()
    except SettingsError as exc:
        # "error parsing value for field "producer_config" ...": the field, not the value.
        raise ConfigurationError(f"{_SETTINGS}: {exc} (malformed JSON?)") from None
    except ValidationError as exc:
        # Each error's place and reason, never the values given (they may hold credentials).
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'settings'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigurationError(f"{_SETTINGS}: {problems}") from None


def _serve(args: argparse.Namespace) -> int:
    import importlib.util  # imported late: keeps `broker` start-up light

    import uvicorn

    from kafkaloop.settings import ServiceSettings

    port = args.port if args.port is not None else _port_from_env("KAFKALOOP_PORT", 8000)
    settings = _settings(ServiceSettings)
    # What librdkafka refuses, said here once: in the app's start-up it would be a traceback
    # per worker.
    settings.check(consumers=settings.item_cache or settings.live_push)
    # Said here once, in a line: in the app's start-up it would be a traceback per worker.
    _reach(settings, KAFKA_WAIT)
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = http_protocol(settings.write_batching)
    print_progress(
        f"Serving on http://{args.host}:{port} with {args.workers} worker(s), "
        f"Kafka at {settings.bootstrap_servers} ({loop}, "
        f"{http if isinstance(http, str) else 'httptools, writes batched'})"
    )
    uvicorn.run(
        "kafkaloop.service.app:create_app",
        factory=True,
        host=args.host,
        port=port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=args.access_log,
        # Half the shutdown budget to finish requests, half to flush the producer.
        timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_timeout / 2)),
        ws="websockets-sansio",
        loop=loop,
        http=http,
    )
    return 0


def _reach(settings: KafkaSettings, timeout: float) -> None:
    """Raise a KafkaloopError unless the cluster answers a metadata request within `timeout`."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from kafkaloop._config import make_client
    from kafkaloop._exceptions import kafka_error_of
    from kafkaloop._logging import librdkafka_logger
    from kafkaloop.settings import BOOTSTRAP_VARIABLES

    config = settings.admin()
    admin = make_client(
        AdminClient, {"logger": librdkafka_logger, **config}, config, "admin client"
    )
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaloopError(
            f"Kafka at {config['bootstrap.servers']} did not answer within {timeout:g}s "
            f"({kafka_error_of(exc).str()}). Start it (`kafkaloop broker up`), "
            f"or set {' or '.join(BOOTSTRAP_VARIABLES)} to a cluster that runs."
        ) from None


def _bench(args: argparse.Namespace) -> int:  # noqa: RET503 (execv does not return)
    # The benchmarks live in the repository's bench/ (they are not installed with the library).
    if not (Path.cwd() / "bench" / f"{args.name}.py").exists():
        print(
            f"kafkaloop: no bench/{args.name}.py here: run this from a clone of the kafkaloop "
            "repository.",
            file=sys.stderr,
        )
        return 2
    # Replaced by the benchmark, so Ctrl-C and SIGTERM reach it and it cleans up after itself.
    command = [sys.executable, "-m", f"bench.{args.name}", *args.rest]
    os.execv(sys.executable, command)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``kafkaloop`` command."""
    parser = argparse.ArgumentParser(prog="kafkaloop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    broker = commands.add_parser("broker", help="run a local Apache Kafka (KRaft) on loopback")
    actions = broker.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--name",
        type=_cluster_name,
        default="default",
        help="which local cluster (each has its own state directory)",
    )
    common.add_argument(
        "--port",
        type=_port,
        default=None,
        help="first broker port (default $KAFKALOOP_BROKER_PORT or 9092)",
    )

    up = actions.add_parser("up", parents=[common], help="start (or reuse) the local cluster")
    up.add_argument(
        "--nodes",
        type=_at_least_one,
        default=None,
        help="number of nodes (default: as last started, else 1)",
    )
    up.add_argument(
        "--heap", default=None, help="JVM heap per node (default $KAFKALOOP_BROKER_HEAP or 512m)"
    )
    up.add_argument("--timeout", type=_seconds, default=120.0, help="seconds to wait for readiness")
    up.set_defaults(handler=_broker_up)

    down = actions.add_parser("down", parents=[common], help="stop the local cluster")
    down.add_argument("--purge", action="store_true", help="also delete its data and logs")
    down.add_argument(
        "--timeout",
        type=_seconds,
        default=20.0,
        help="seconds to wait after SIGTERM before SIGKILL",
    )
    down.set_defaults(handler=_broker_down)

    status = actions.add_parser("status", parents=[common], help="running or stopped")
    status.set_defaults(handler=_broker_status)

    logs = actions.add_parser("logs", parents=[common], help="show the broker logs")
    logs.add_argument("--lines", "-n", type=_at_least_zero, default=50)
    logs.add_argument("--node", type=_at_least_zero, default=None)
    logs.add_argument("--follow", "-f", action="store_true")
    logs.set_defaults(handler=_broker_logs)

    serve = commands.add_parser(
        "serve", help="run the reference web service ($KAFKA_BOOTSTRAP_SERVERS picks the cluster)"
    )
    serve.add_argument("--host", default=os.environ.get("KAFKALOOP_HOST") or "127.0.0.1")
    serve.add_argument("--port", type=_port, default=None, help="default: $KAFKALOOP_PORT or 8000")
    serve.add_argument(
        "--workers",
        type=_at_least_one,
        default=1,
        help="processes; each has its own producer and fan-out consumer",
    )
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(handler=_serve)

    bench = commands.add_parser(
        "bench", help="run a benchmark from bench/: web (load test), producer, consumer"
    )
    bench.add_argument("name", choices=["web", "producer", "consumer"])
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options")
    bench.set_defaults(handler=_bench)

    smoke = commands.add_parser(
        "smoke", help="produce messages and consume them back ($KAFKA_BOOTSTRAP_SERVERS or local)"
    )
    smoke.add_argument("--topic", default="kafkaloop-smoke")
    smoke.add_argument("--count", type=_at_least_one, default=1000)
    smoke.add_argument("--name", default="default", help=argparse.SUPPRESS)
    smoke.add_argument("--port", type=_port, default=None, help=argparse.SUPPRESS)
    smoke.set_defaults(handler=_smoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kafkaloop`` command."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except KafkaloopError as exc:
        print(f"kafkaloop: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `kafkaloop broker logs | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (nor at exit)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
