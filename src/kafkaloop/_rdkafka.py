"""The librdkafka calls kafkaloop makes itself, where confluent-kafka has no method for them.

There is one: a client's main queue can write a byte to a file descriptor when it stops being
empty (``rd_kafka_queue_io_event_enable``). The event loop then watches the queue like a socket
and serves the client's callbacks with ``poll(0)``, which does not block (see
:class:`kafkaloop._bridge.LoopPoller`), instead of a poll thread that takes the GIL once per
delivery report while the loop is busy.

confluent-kafka does not hand out its ``rd_kafka_t``; it is the first field after the object
header of its client types (``Handle`` in its ``confluent_kafka.h``, the same in every 2.x
release). The version gate (confluent-kafka 2.x) is what guards that reading; the checks after
it (the library must be the one already loaded in the process, the handle must answer as a
producer) catch a wrong library, not a wrong layout, which would crash. When any step fails (another
platform or confluent-kafka major version, ``KAFKALOOP_NO_EXTENSIONS``), :func:`watch_main_queue`
returns None and the caller keeps its poll thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path

import confluent_kafka

from kafkaloop._extensions import DISABLED

__all__ = ["QueueWatch", "watch_main_queue"]

logger = logging.getLogger("kafkaloop")

_RD_KAFKA_PRODUCER = 0
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_library_looked_up = False


def _mapped_librdkafka() -> str | None:
    """The path of the librdkafka that confluent-kafka loaded into this process, if one."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return None
    paths = {
        line.split(None, 5)[5]
        for line in maps.splitlines()
        if line.count(" ") >= 5 and "/librdkafka" in line and ".so" in line
    }
    bundled = str(Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs")
    preferred = sorted(p for p in paths if p.startswith(bundled)) or sorted(paths)
    return preferred[0] if len(preferred) == 1 else None


def _load() -> ctypes.CDLL | None:
    global _library, _library_looked_up
    with _lock:
        if _library_looked_up:
            return _library
        _library_looked_up = True
        path = _mapped_librdkafka()
        if path is None:
            return None
        try:
            # RTLD_NOLOAD: the copy already in memory, or nothing.
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except OSError:
            return None
        lib.rd_kafka_version.restype = ctypes.c_int
        lib.rd_kafka_version.argtypes = []
        if lib.rd_kafka_version() != confluent_kafka.libversion()[1]:
            return None
        lib.rd_kafka_type.restype = ctypes.c_int
        lib.rd_kafka_type.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_name.restype = ctypes.c_char_p
        lib.rd_kafka_name.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_queue_get_main.restype = ctypes.c_void_p
        lib.rd_kafka_queue_get_main.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_queue_destroy.restype = None
        lib.rd_kafka_queue_destroy.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_queue_length.restype = ctypes.c_size_t
        lib.rd_kafka_queue_length.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_queue_io_event_enable.restype = None
        lib.rd_kafka_queue_io_event_enable.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        _library = lib
        return lib


def _handle(producer: confluent_kafka.Producer) -> int | None:
    """The producer's ``rd_kafka_t *``, read from where confluent-kafka keeps it."""
    if not isinstance(producer, confluent_kafka.Producer):
        return None
    if type(producer).__basicsize__ < object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p):
        return None
    version = confluent_kafka.version()  # a string, or (string, int) in older releases
    if not (version[0] if isinstance(version, tuple) else version).startswith("2."):
        return None
    pointer = ctypes.c_void_p.from_address(id(producer) + object.__basicsize__).value
    return pointer or None


class QueueWatch:
    """A client's main queue, writing a byte to :meth:`fileno` each time it gets work.

    Keep the client alive until :meth:`close`: librdkafka writes to the descriptor until then.
    """

    def __init__(self, lib: ctypes.CDLL, queue: int) -> None:
        self._lib = lib
        self._queue: int | None = queue
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        lib.rd_kafka_queue_io_event_enable(queue, self._write_fd, b"\x01", 1)

    def fileno(self) -> int:
        """The descriptor to watch for reading."""
        return self._read_fd

    def clear(self) -> None:
        """Take the bytes written so far (before serving the queue, so none is missed)."""
        try:
            while len(os.read(self._read_fd, 4096)) == 4096:
                pass
        except BlockingIOError:
            pass

    def pending(self) -> int:
        """How many events wait in the queue (0 once closed)."""
        return 0 if self._queue is None else int(self._lib.rd_kafka_queue_length(self._queue))

    def close(self) -> None:
        """Stop the writes, then close the descriptors. Idempotent."""
        queue, self._queue = self._queue, None
        if queue is None:
            return
        self._lib.rd_kafka_queue_io_event_enable(queue, -1, None, 0)
        self._lib.rd_kafka_queue_destroy(queue)
        os.close(self._read_fd)
        os.close(self._write_fd)


def watch_main_queue(producer: confluent_kafka.Producer) -> QueueWatch | None:
    """A :class:`QueueWatch` on `producer`'s main queue, or None where that is not possible."""
    if DISABLED:
        return None
    lib = _load()
    rk = _handle(producer) if lib is not None else None
    if lib is None or rk is None:
        return None
    if lib.rd_kafka_type(rk) != _RD_KAFKA_PRODUCER or b"#producer-" not in (
        lib.rd_kafka_name(rk) or b""
    ):
        logger.debug("kafkaloop: unexpected confluent-kafka layout; using a poll thread")
        return None
    queue = lib.rd_kafka_queue_get_main(rk)
    if not queue:
        return None
    return QueueWatch(lib, queue)
