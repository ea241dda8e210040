"""Small ASGI helpers shared by the middlewares: a complete JSON answer in one call."""

from __future__ import annotations

import json

from starlette.types import Send


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
