"""Small ASGI helpers shared by the middlewares: a complete JSON answer, a message replayed."""

from __future__ import annotations

import json

from starlette.types import Message, Receive, Send


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
