"""A dependency-free ASGI app that plays a service for the supervisor tests.

Run by uvicorn in a child process (`fakeapp:create_app`, with this folder on PYTHONPATH).
Its behaviour comes from the environment:
  SERVICE_NAME      printed in every line
  FAKE_READY_AFTER  seconds after start-up before /readyz answers 200 (503 until then)
  FAKE_CRASH        "1": print a line and fail in create_app, as a broken service would
  FAKE_STOP_DELAY   seconds the lifespan shutdown takes
  FAKE_EXIT_AFTER   seconds after start-up when the process dies (exit code 4)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


_SHOWN = (
    "HTTP_PORT",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_ENABLE_IDEMPOTENCE",
    "KAFKA_INTERACTIVE_FETCH_MAX_WAIT_MS",
    "DATABASE_URL",
    "LOG_FORMAT",
)


def _say(event: str) -> None:
    print(f"{event} {os.environ.get('SERVICE_NAME', '?')} {time.time():.6f}", flush=True)


def create_app() -> App:
    """The ASGI app; fails at once when FAKE_CRASH=1."""
    if os.environ.get("FAKE_CRASH") == "1":
        print("fatal: cannot connect to the database", file=sys.stderr, flush=True)
        raise SystemExit(3)
    ready_after = float(os.environ.get("FAKE_READY_AFTER", "0"))
    stop_delay = float(os.environ.get("FAKE_STOP_DELAY", "0"))
    exit_after = os.environ.get("FAKE_EXIT_AFTER")
    started: list[float] = []
    background: set[asyncio.Task[None]] = set()

    async def die_later(delay: float) -> None:
        await asyncio.sleep(delay)
        _say("dying")
        os._exit(4)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    started.append(time.monotonic())
                    _say("startup")
                    shown = [f"{key}={os.environ.get(key, '')}" for key in _SHOWN]
                    print("settings", *shown, flush=True)
                    if exit_after is not None:
                        background.add(asyncio.create_task(die_later(float(exit_after))))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    _say("shutdown-begin")
                    await asyncio.sleep(stop_delay)
                    _say("shutdown-end")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        ready = bool(started) and time.monotonic() - started[0] >= ready_after
        if path == "/readyz":
            status, body = (200, b"ready") if ready else (503, b"starting")
        elif path == "/healthz":
            status, body = 200, b"alive"
        elif path == "/metrics":
            status, body = 200, b"fake_up 1\n"
        elif path == "/docs":
            status, body = 200, b"<html><body>API docs</body></html>"
        else:
            status, body = 404, b"not found"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app
