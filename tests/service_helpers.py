"""Running the reference service for tests: in this process (uvicorn), or as `kafkaloop serve`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from kafkaloop.broker import free_port
from kafkaloop.service import create_app
from kafkaloop.settings import ServiceSettings
from kafkaloop.write_batching import WriteBatchingProtocol


def service_settings(bootstrap: str, topic: str, **overrides: Any) -> ServiceSettings:
    return ServiceSettings(
        bootstrap_servers=bootstrap, items_topic=topic, topic_partitions=1, **overrides
    )


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free loopback port in this event loop; yield its URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        ws="websockets-sansio",
        http=WriteBatchingProtocol,  # as `kafkaloop serve` runs the service
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 60
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the service stopped during start-up")
        if time.monotonic() > deadline:
            raise TimeoutError("the service did not start within 60s")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def service(
    bootstrap: str, topic: str, **overrides: Any
) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """The reference service on a fresh topic, and an httpx client for it."""
    async with (
        serving(create_app(service_settings(bootstrap, topic, **overrides))) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield url, client


@contextlib.contextmanager
def serve_process(
    bootstrap: str, topic: str, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`kafkaloop serve` as a child process (for signals); yields it and its URL."""
    port = free_port()
    environment = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKALOOP_ITEMS_TOPIC": topic,
        "KAFKALOOP_TOPIC_PARTITIONS": "1",
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "kafkaloop", "serve", "--port", str(port), "--log-level", "warning"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                raise RuntimeError(f"kafkaloop serve did not start:\n{out}")
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


@contextlib.contextmanager
def requests_left_for_the_collector() -> Iterator[list[Any]]:
    """The requests the garbage collector would have to free, of those made in the block:
    uvicorn's request cycles, ASGI scopes and starlette Requests found in reference cycles
    (filled in when the block ends). Requests that leave none are freed as they finish."""
    gc.collect()
    debug, before = gc.get_debug(), len(gc.garbage)
    left: list[Any] = []
    gc.set_debug(debug | gc.DEBUG_SAVEALL)  # what the collector would free stays in gc.garbage
    try:
        yield left
        gc.collect()
        left += [o for o in gc.garbage[before:] if _is_a_request(o)]
    finally:
        gc.set_debug(debug)
        del gc.garbage[before:]


def _is_a_request(o: object) -> bool:
    if isinstance(o, RequestResponseCycle | Request):
        return True
    return isinstance(o, dict) and o.get("type") == "http" and "headers" in o  # a scope
