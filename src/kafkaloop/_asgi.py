"""Small ASGI helpers: a complete JSON answer, a message replayed, a connection dropped."""

from __future__ import annotations

import json

from starlette.types import Message, Receive, Scope, Send

ABORT = "kafkaloop.abort"
"""The ASGI extension through which an app drops its connection at once:
``scope["extensions"]["kafkaloop.abort"]["abort"]()``. kafkaloop's write-batching protocol
offers it (``kafkaloop.write_batching``)."""


def abort_connection(scope: Scope) -> bool:
    """Let go of the request's connection now, where the server offers ``kafkaloop.abort``
    (False where it does not): what the server still held to write is dropped, what the kernel
    already has still goes out, and the socket is closed. Nothing happens once the request's
    answer is complete.

    For a response that gives up on a client that stopped reading: it cannot end politely (its
    last write would wait like the others), and a close waits for the client to read what the
    server holds, for ever for one that never does.
    """
    abort = scope.get("extensions", {}).get(ABORT)
    if abort is None:
        return False
    abort["abort"]()
    return True


async def reply(
    send: Send, status: int, detail: str, error: str, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """Answer `status` with ``{"detail": ..., "error": ...}``, before the app said anything."""
    body = json.dumps({"detail": detail, "error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def replay(first: Message, receive: Receive) -> Receive:
    """`receive`, handing out `first` (already taken from it, or read in full) before the rest."""
    pending: Message | None = first

    async def replayed() -> Message:
        nonlocal pending
        if pending is None:
            return await receive()
        message, pending = pending, None
        return message

    return replayed
