"""HTTP answers written once per turn of the event loop: uvicorn's httptools protocol, batched.

    uvicorn.run(app, http=WriteBatchingProtocol)       # what `kafkaloop serve` runs by default

uvicorn writes an answer's head and its body with one socket write each, each the moment it is
asked for: two system calls per answer, and as many wake-ups of the client. Here what a
connection writes during one turn of the loop is kept and sent with one write when the loop next
runs its ready callbacks, together with every other connection's answers of that turn. Under
load the loop then writes in bursts and reads in bursts, and each turn serves more requests for
the same fixed costs (bench/README.md has the figures). An answer leaves at most one loop turn
later than it would have: microseconds on an idle loop.

Memory stays bounded: a connection that writes more than ``_FLUSH_AT`` bytes within one turn (a
streamed body) has them written at once, so uvicorn's flow control sees the socket's real
buffer. ``KAFKALOOP_WRITE_BATCHING=false`` runs uvicorn's own protocol instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["WriteBatchingProtocol"]

_FLUSH_AT = 64 * 1024
"""Bytes a connection may hold back within one turn before they are written at once."""


class _Flusher:
    """One per event loop: the connections holding writes back, flushed once a turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: list[_BatchingTransport] = []

    def hold(self, transport: _BatchingTransport) -> None:
        if not self._waiting:
            self._loop.call_soon(self._flush)
        self._waiting.append(transport)

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        for transport in waiting:
            transport.flush()


_flushers: dict[asyncio.AbstractEventLoop, _Flusher] = {}


def _flusher(loop: asyncio.AbstractEventLoop) -> _Flusher:
    flusher = _flushers.get(loop)
    if flusher is None:
        if len(_flushers) > 16:  # loops come and go (tests): forget the closed ones
            for old in [old for old in _flushers if old.is_closed()]:
                del _flushers[old]
        flusher = _flushers[loop] = _Flusher(loop)
    return flusher


class _BatchingTransport(asyncio.Transport):
    """A socket transport whose writes within one loop turn go out as one."""

    def __init__(self, transport: asyncio.Transport, flusher: _Flusher) -> None:
        super().__init__()
        self._transport = transport
        self._flusher = flusher
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._flusher.hold(self)
        self._held.append(bytes(data))
        self._held_bytes += len(data)
        if self._held_bytes > _FLUSH_AT:
            self.flush()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Write what is held back now (a no-op when nothing is, or the socket is closing)."""
        held, self._held, self._held_bytes = self._held, [], 0
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()  # an answer followed by "connection: close" still leaves first
        self._transport.close()

    def abort(self) -> None:
        self._held, self._held_bytes = [], 0
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
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
