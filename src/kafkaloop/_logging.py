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
