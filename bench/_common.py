"""What every benchmark needs: a broker, progress output, tables, CSV, and a note on the machine."""

from __future__ import annotations

import contextlib
import csv
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kafkaloop.broker import LocalKafka, cache_dir, print_progress
from kafkaloop.settings import bootstrap_from_env

RESULTS = Path(__file__).parent / "results"


@contextlib.contextmanager
def bench_broker(heap: str = "1g") -> Iterator[LocalKafka | None]:
    """A local single-node broker kept only for this benchmark (None when
    $KAFKA_BOOTSTRAP_SERVERS names another one to use)."""
    if bootstrap_from_env():
        yield None
        return
    kafka = LocalKafka(
        1, state_dir=cache_dir() / "clusters" / "bench", heap=heap, progress=print_progress
    )
    was_running = kafka.is_running()
    kafka.start()
    try:
        yield kafka
    finally:
        if not was_running:
            kafka.purge()


def bootstrap_of(kafka: LocalKafka | None) -> str:
    """Where the benchmark's broker is: `kafka` (bench_broker's), or the cluster the
    environment names."""
    return kafka.bootstrap_servers if kafka is not None else str(bootstrap_from_env())


@contextlib.contextmanager
def bench_kafka(heap: str = "1g") -> Iterator[str]:
    """$KAFKA_BOOTSTRAP_SERVERS, or a local single-node broker kept only for this benchmark."""
    with bench_broker(heap) as kafka:
        yield bootstrap_of(kafka)


class Progress:
    """A one-line progress bar on stderr: ``[#####.....] 12/40 kafkaloop c=400``."""

    def __init__(self, total: int, width: int = 30) -> None:
        self.total = total
        self.done = 0
        self.width = width
        self.started = time.monotonic()

    def step(self, label: str) -> None:
        """Announce the next unit of work."""
        filled = int(self.width * self.done / max(1, self.total))
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        line = (
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
            f"{elapsed:5.0f}s (eta {eta:4.0f}s) {label}"
        )
        sys.stderr.write(f"{line:<110}")
        sys.stderr.flush()
        self.done += 1

    def finish(self) -> None:
        """End the progress line."""
        sys.stderr.write(f"\r{'':<110}\r")
        sys.stderr.flush()


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write dict rows to `path` (creating its directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def report(name: str, text: str) -> None:
    """Print a benchmark's markdown `text` and keep it as ``bench/results/<name>``."""
    text = text.rstrip("\n") + "\n"
    print(text, end="")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(text)
    print(f"\nWrote {RESULTS / name}")


def machine_note() -> str:
    """One line on the machine and its load, for the results."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"load average {load[0]:.2f} at the start; the broker runs on the same machine."
    )
