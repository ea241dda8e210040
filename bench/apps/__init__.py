"""The web benchmark's other contenders: each a FastAPI app run by uvicorn as a process."""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from fastapi import FastAPI


def serve(
    app: FastAPI, description: str | None, http: str | type[asyncio.Protocol] = "auto"
) -> None:
    """Run `app` as the benchmark runs every app: one uvicorn worker, log level warning, no
    access log, at most 10 s to finish requests on shutdown; `http` as uvicorn takes it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        workers=1,
        timeout_graceful_shutdown=10,  # as `kafkaloop serve` bounds its drain
        http=http,
    )
