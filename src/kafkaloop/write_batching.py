"""HTTP answers written once per turn of the event loop: uvicorn's httptools protocol, batched.

    uvicorn.run(app, http=WriteBatchingProtocol)       # what `kafkaloop serve` runs by default

uvicorn writes an answer's head and its body with one socket write each, each the moment it is
asked for: two system calls per answer, and as many wake-ups of the client. Here what a
connection writes during one turn of the loop is held and written with one write (one per
connection) by a single callback when the loop next runs its ready callbacks. Under load the
answers of a turn then leave in one burst, the next requests come back in bursts, and each turn
serves more requests for the same fixed costs (bench/README.md, "Answers written once per loop
turn", has the figures). An answer leaves at most one loop turn later than it would have:
microseconds on an idle loop.

Memory stays bounded: a connection that writes more than ``_FLUSH_AT`` bytes within one turn (a
streamed body) has them written at once, so at most that much per connection sits outside the
socket's buffer, which uvicorn's flow control watches. Closing the connection through this
transport writes what is held first; aborting it, or the client going away, drops it.
``KAFKALOOP_WRITE_BATCHING=false`` runs uvicorn's own protocol instead.

The protocol also offers the app a way to drop a connection at once, the ASGI extension
``kafkaloop.abort`` (``kafkaloop.fastapi.abort_connection``), for a response that gives up on a
client that stopped reading.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Iterable
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from kafkaloop._asgi import ABORT

__all__ = ["WriteBatchingProtocol"]

_FLUSH_AT = 64 * 1024
"""Bytes a connection may hold back within one turn before they are written at once."""


class _Flusher:
    """One per event loop: the connections holding writes back, flushed once a turn."""

    def __init__(self) -> None:
        self._waiting: list[_BatchingTransport] = []

    def hold(self, transport: _BatchingTransport) -> None:
        if not self._waiting:
            asyncio.get_running_loop().call_soon(self._flush)
        self._waiting.append(transport)

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        for transport in waiting:
            try:
                transport.flush()
            except Exception as exc:  # one broken socket must not strand the others' answers
                asyncio.get_running_loop().call_exception_handler(
                    {
                        "message": "Writing a connection's held answers failed",
                        "exception": exc,
                        "transport": transport,
                    }
                )


# (weak: a loop that is gone takes its flusher with it; the flusher holds no loop)
_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = (
    weakref.WeakKeyDictionary()
)


def _flusher(loop: asyncio.AbstractEventLoop) -> _Flusher:
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = _Flusher()
    return flusher


class _BatchingTransport(asyncio.Transport):
    """A socket transport whose writes within one loop turn go out as one."""

    def __init__(self, transport: asyncio.Transport, flusher: _Flusher) -> None:
        super().__init__()
        self._transport = transport
        self._flusher = flusher
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._queued = False  # on the flusher's list for this turn

    def write(self, data: bytes | bytearray | memoryview) -> None:
        chunk = bytes(data)
        if not chunk or self._transport.is_closing():
            return  # (the socket's own write would drop it too)
        if not self._queued:
            self._queued = True
            self._flusher.hold(self)
        self._held.append(chunk)
        self._held_bytes += len(chunk)
        if self._held_bytes > _FLUSH_AT:
            self._write_held()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Write what is held back now: the flusher's call, once a turn."""
        self._queued = False
        self._write_held()

    def _write_held(self) -> None:
        held, self._held, self._held_bytes = self._held, [], 0
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        try:
            self._write_held()  # an answer followed by "connection: close" still leaves first
        finally:
            self._transport.close()

    def abort(self) -> None:
        self._held, self._held_bytes = [], 0
        self._transport.abort()

    def write_eof(self) -> None:
        self._write_held()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()


class WriteBatchingProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP protocol, writing each connection's output once per loop turn.

    Pass it as uvicorn's ``http``. A WebSocket upgraded from it keeps the batching transport.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports have asyncio.Transport's methods without deriving from it)
        socket = cast(asyncio.Transport, transport)
        batching = _BatchingTransport(socket, _flusher(asyncio.get_running_loop()))
        super().connection_made(batching)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # A request of its own (an upgrade has none): its abort acts on it, even when
        # pipelined requests follow it, and on nothing once its answer is complete. The
        # request is held weakly: the scope holding it would make every request a reference
        # cycle, which only the garbage collector frees (a fifth of the loop's time under
        # load, bench/README.md).
        if cycle is not None and cycle.scope is self.scope:
            extensions = self.scope.setdefault("extensions", {})
            extensions[ABORT] = {"abort": functools.partial(_abort, weakref.ref(cycle))}


def _abort(request: weakref.ref[RequestResponseCycle]) -> None:
    """Drop the request's connection with what it still held to write (what the kernel
    already has still goes out), if the request's answer is not complete."""
    cycle = request()
    if cycle is None or cycle.response_complete:
        return  # the connection serves the requests after it now, or is gone
    cycle.disconnected = True  # (as connection_lost will say): no "incomplete" error
    cycle.transport.abort()
