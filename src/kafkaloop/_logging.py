"""Log lines kafkaloop writes on behalf of messages nobody awaits."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger("kafkaloop")
librdkafka_logger = logging.getLogger("kafkaloop.librdkafka")


class RateLimitedLog:
    """Logs the first failure at once, then at most one summary line per `interval` seconds.

    Fire-and-forget producers can fail by the thousand when a broker goes away; each failure is
    counted, and the log gets one line per interval saying how many were not shown. Safe from
    any thread.
    """

    def __init__(self, log: logging.Logger, interval: float = 5.0) -> None:
        self._log = log
        self._interval = interval
        self._lock = threading.Lock()
        self._next_at = 0.0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        """Log ``message % args`` unless a line went out less than `interval` seconds ago."""
        now = time.monotonic()
        with self._lock:
            if now < self._next_at:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._next_at = now + self._interval
        if suppressed:
            message += " (and %d more like it in the last %.0fs, not shown)"
            args = (*args, suppressed, self._interval)
        self._log.warning(message, *args)


class LibrdkafkaRateLimit(logging.Filter):
    """Rate-limits librdkafka's warnings and errors, per client and kind of line.

    While a cluster is down, librdkafka logs every failed connection attempt of every client
    to every broker, several lines a second each. Per client and facility (``FAIL``,
    ``ERROR``, ...), the first line goes out at once, then at most one per `interval`, saying
    how many were not shown. Lines below WARNING (librdkafka's ``debug``) all pass.
    """

    def __init__(self, interval: float = 5.0, max_kinds: int = 1_000) -> None:
        super().__init__()
        self._interval = interval
        self._max_kinds = max_kinds  # memory stays bounded whatever a process does
        self._lock = threading.Lock()
        self._kinds: dict[tuple[object, ...], list[float]] = {}  # kind: [next at, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        args = record.args
        # confluent-kafka logs ("%s [%s] %s", facility, client name, text).
        kind = (record.levelno, *args[:2]) if isinstance(args, tuple) else (record.levelno,)
        now = time.monotonic()
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is not None and now < seen[0]:
                seen[1] += 1
                return False
            if seen is None and len(self._kinds) >= self._max_kinds:
                self._kinds.clear()
            suppressed = 0 if seen is None else int(seen[1])
            self._kinds[kind] = [now + self._interval, 0]
        if suppressed and isinstance(args, tuple):
            record.msg = f"{record.msg} (and %d more like it in the last %.0fs, not shown)"
            record.args = (*args, suppressed, self._interval)
        return True


librdkafka_logger.addFilter(LibrdkafkaRateLimit())
