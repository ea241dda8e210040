"""HTTP answers written once per loop turn: what is held, when it leaves, and over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
from fastapi import FastAPI
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from kafkaloop.fastapi import abort_connection
from kafkaloop.write_batching import _FLUSH_AT, _BatchingTransport, _flusher
from tests.service_helpers import requests_left_for_the_collector, serving

T = TypeVar("T")


class RecordingTransport(asyncio.Transport):
    """A socket stand-in: what was written, and whether it was closed or aborted."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.writes))


def batching() -> tuple[_BatchingTransport, RecordingTransport]:
    socket = RecordingTransport()
    return _BatchingTransport(socket, _flusher(asyncio.get_running_loop())), socket


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes each batching transport held every time it wrote them out."""
    sizes: list[int] = []
    write_held = _BatchingTransport._write_held

    def recording(self: _BatchingTransport) -> None:
        sizes.append(self._held_bytes)
        write_held(self)

    monkeypatch.setattr(_BatchingTransport, "_write_held", recording)
    return sizes


async def test_a_head_and_body_leave_in_one_write_on_the_next_loop_turn() -> None:
    transport, socket = batching()

    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"body")
    assert socket.writes == []
    assert transport.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody")

    await asyncio.sleep(0)
    assert socket.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]

    await asyncio.sleep(0)
    assert socket.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]  # nothing written twice


async def test_each_connection_gets_its_own_write_in_the_same_turn() -> None:
    (first, first_socket), (second, second_socket) = batching(), batching()

    first.write(b"a1")
    second.write(b"b1")
    first.write(b"a2")
    await asyncio.sleep(0)

    assert first_socket.writes == [b"a1a2"]
    assert second_socket.writes == [b"b1"]


async def test_more_than_the_limit_in_one_turn_is_written_at_once() -> None:
    transport, socket = batching()
    chunk = b"x" * (_FLUSH_AT // 2)

    transport.write(chunk)
    transport.write(chunk)
    assert socket.writes == []
    transport.write(b"y")  # past the limit: no waiting for the turn

    assert socket.writes == [chunk + chunk + b"y"]
    assert transport.get_write_buffer_size() == len(socket.writes[0])
    await asyncio.sleep(0)
    assert len(socket.writes) == 1


async def test_a_write_after_a_flush_at_the_limit_still_waits_for_the_turn() -> None:
    transport, socket = batching()

    transport.write(b"x" * (_FLUSH_AT + 1))
    transport.write(b"tail")
    assert socket.writes == [b"x" * (_FLUSH_AT + 1)]

    await asyncio.sleep(0)
    assert socket.writes == [b"x" * (_FLUSH_AT + 1), b"tail"]


class BrokenTransport(RecordingTransport):
    def write(self, data: Any) -> None:
        raise RuntimeError("the socket broke")


async def test_one_connection_failing_its_write_does_not_strand_the_others() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        flusher = _flusher(loop)
        broken = _BatchingTransport(BrokenTransport(), flusher)
        fine, fine_socket = batching()

        broken.write(b"lost")
        fine.write(b"answer")
        await asyncio.sleep(0)
        fine.write(b"next")
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)

    assert fine_socket.writes == [b"answer", b"next"]
    assert [str(c["exception"]) for c in reported] == ["the socket broke"]


async def test_close_writes_what_is_held_first_and_abort_drops_it() -> None:
    closed, closed_socket = batching()
    closed.write(b"last answer")
    closed.close()
    assert closed_socket.writes == [b"last answer"]
    assert closed_socket.closing

    aborted, aborted_socket = batching()
    aborted.write(b"never sent")
    aborted.abort()
    assert aborted.get_write_buffer_size() == 0
    await asyncio.sleep(0)
    assert aborted_socket.writes == []
    assert aborted_socket.aborted


async def test_nothing_is_written_to_a_socket_that_closed_meanwhile() -> None:
    transport, socket = batching()
    transport.write(b"answer")
    socket.closing = True  # the client went away within the turn

    await asyncio.sleep(0)

    assert socket.writes == []


aborts: list[bool] = []  # what abort_connection() returned in the app below


class _Aborting(Response):
    """Starts an answer, then drops the connection: mid-answer, or once the answer is over."""

    def __init__(self, *, when_complete: bool) -> None:
        super().__init__()
        self.when_complete = when_complete

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"half", "more_body": True})
        if self.when_complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        await asyncio.sleep(0.05)  # written out (an abort drops what is still held)
        aborts.append(abort_connection(scope))


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/abort")
    async def abort() -> Response:
        return _Aborting(when_complete=False)

    @app.get("/late-abort")
    async def late_abort() -> Response:
        return _Aborting(when_complete=True)

    @app.get("/echo/{text}")
    async def echo(text: str) -> dict[str, str]:
        return {"text": text}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(64):
                yield bytes([65 + i % 26]) * 16384  # 1 MiB in all, no await between chunks

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    return app


async def _read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    return await reader.read()


async def ask(request: bytes, read: Callable[[asyncio.StreamReader], Awaitable[T]]) -> T:
    """Serve the app above, send `request` on a fresh connection, return what `read` gets."""
    async with serving(_app()) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(request)
            return await asyncio.wait_for(read(reader), 30)
        finally:
            writer.close()
            await writer.wait_closed()


async def test_pipelined_answers_arrive_whole_and_in_order_over_a_real_socket() -> None:
    async def twenty(reader: asyncio.StreamReader) -> list[tuple[bytes, bytes]]:
        return [await _read_answer(reader) for _ in range(20)]

    answers = await ask(
        b"".join(f"GET /echo/{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for n in range(20)), twenty
    )

    assert [body for _head, body in answers] == [f'{{"text":"{n}"}}'.encode() for n in range(20)]
    assert all(head.startswith(b"HTTP/1.1 200 OK\r\n") for head, _body in answers)


async def test_an_answer_before_connection_close_arrives_before_the_end() -> None:
    everything = await ask(  # read up to the server's close
        b"GET /echo/bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", _read_all
    )

    assert everything.startswith(b"HTTP/1.1 200 OK\r\n")
    assert everything.endswith(b'\r\n\r\n{"text":"bye"}')


async def test_a_streamed_megabyte_arrives_whole_never_held_past_the_limit(
    held: list[int],
) -> None:
    everything = await ask(
        b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", _read_all
    )

    head, _, chunked = everything.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    body, rest = b"", chunked
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2 :]
    assert body == b"".join(bytes([65 + i % 26]) * 16384 for i in range(64))
    assert held  # the answer went through the batching
    assert max(held) <= _FLUSH_AT + 16384 + 16  # one chunk and its framing past the limit


async def test_the_protocol_sends_its_connections_answers_through_the_batching(
    held: list[int],
) -> None:
    head, body = await ask(b"GET /echo/one HTTP/1.1\r\nHost: x\r\n\r\n", _read_answer)

    assert body == b'{"text":"one"}'
    assert len(head) + len(body) in held  # head and body held, then written together


async def test_an_abort_drops_the_connection_mid_answer_and_logs_no_error(
    uvicorn_errors: list[str],
) -> None:
    aborts.clear()
    # A request pipelined behind it: the abort acts on the answer it was offered to.
    everything = await ask(
        b"GET /abort HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/after HTTP/1.1\r\nHost: x\r\n\r\n",
        _read_all,
    )

    assert aborts == [True]
    assert everything.startswith(b"HTTP/1.1 200 OK\r\n")
    assert everything.endswith(b"half\r\n")  # the first chunk, and no end of the answer
    assert b"after" not in everything  # the connection went with the answer
    assert uvicorn_errors == []  # (not "ASGI callable returned without completing response")


async def test_an_abort_once_the_answer_is_complete_does_nothing() -> None:
    aborts.clear()
    async with serving(_app()) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"GET /late-abort HTTP/1.1\r\nHost: x\r\n\r\n")
            first = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 30)
            for _ in range(100):  # until the app has called it, after its answer
                if aborts:
                    break
                await asyncio.sleep(0.01)
            # The connection still serves the next request.
            writer.write(b"GET /echo/after HTTP/1.1\r\nHost: x\r\n\r\n")
            _head, after = await asyncio.wait_for(_read_answer(reader), 30)
        finally:
            writer.close()
            await writer.wait_closed()

    assert aborts == [True]  # offered, and called: too late to drop anything
    assert b"half" in first
    assert after == b'{"text":"after"}'


async def test_requests_leave_no_reference_cycles_for_the_collector() -> None:
    """Each request's objects go when its answer is done, by reference counting: cycles would
    be left for the garbage collector, whose passes over them took a fifth of the loop's time
    under load (bench/README.md)."""
    async with serving(_app()) as url:
        host, port = url.removeprefix("http://").split(":")
        with requests_left_for_the_collector() as left:
            for connection in range(3):
                reader, writer = await asyncio.open_connection(host, int(port))
                for n in range(10):  # kept alive between requests
                    writer.write(f"GET /echo/{connection}-{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    _head, body = await asyncio.wait_for(_read_answer(reader), 30)
                    assert body == f'{{"text":"{connection}-{n}"}}'.encode()
                writer.close()
                await writer.wait_closed()

    assert left == []


def test_answers_are_batched_under_uvloop_too(held: list[int]) -> None:
    """`kafkaloop serve` runs uvloop, whose transports do not derive from asyncio's."""
    import uvloop

    head, body = uvloop.run(ask(b"GET /echo/uv HTTP/1.1\r\nHost: x\r\n\r\n", _read_answer))

    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b'{"text":"uv"}'
    assert len(head) + len(body) in held  # head and body written together
