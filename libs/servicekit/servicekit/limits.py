"""Bounded inputs for every service: request bodies limited while they stream in (before
authentication or parsing, chunked uploads included), JSON nesting limited before a parser
recurses, and the security-event counter the services share.

`BodyLimitMiddleware` is pure ASGI, so it sees the body as the server receives it:
- a declared `Content-Length` above the limit is refused at once (413), nothing read;
- otherwise the body is counted chunk by chunk, and the request fails with 413 the moment
  the count passes the limit (a chunked upload never grows the process past the limit);
- a JSON body (`application/json`, `application/*+json`) is buffered (it is bounded) and
  its nesting depth checked in one linear pass: deeper than the limit is a 400, where
  Python's recursive JSON parser would otherwise raise RecursionError (a 500).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import Counter
from starlette.exceptions import HTTPException

SECURITY_EVENTS = Counter(
    "security_events_total",
    "Security-relevant refusals (failed tokens, rate-limit hits, oversized inputs, ...)",
    ["service", "event"],
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


# A JSON `\u0000` escape, not preceded by an escaped backslash (`\\u0000` is the text
# "\u0000", which is fine).
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def has_nul_escape(body: bytes) -> bool:
    """Whether a JSON body has a string with a NUL character in it."""
    return b"\\u0000" in body and _NUL_ESCAPE.search(body) is not None


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays/objects in a JSON text (strings ignored); linear."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(_STRING.sub(b'""', body)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def _problem(send: Send, status: int, title: str, detail: str) -> None:
    body = json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                # No `Connection: close`: closing with the upload still arriving makes the
                # kernel reset the connection, and the client loses this answer. The server
                # discards the rest of the body without keeping it.
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(HTTPException):
    """Raised from `receive` mid-stream; an HTTPException so the app's problem+json
    handler answers 413 (FastAPI passes HTTPExceptions from body reading through)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit} bytes.")


class BodyLimitMiddleware:
    """413 for bodies over `max_body_bytes`, 400 for JSON deeper than `max_json_depth`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_json_depth: int,
        service: str = "service",
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _problem(send, 400, "Bad Request", "Content-Length is not a number.")
                return
            if length > self.max_body_bytes:
                await self._too_large(send)
                return
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if _is_json(content_type) and scope.get("method") in ("POST", "PUT", "PATCH"):
            await self._buffered_json(scope, receive, send)
            return
        await self._streamed(scope, receive, send)

    async def _too_large(self, send: Send) -> None:
        SECURITY_EVENTS.labels(self.service, "body_too_large").inc()
        await _problem(
            send,
            413,
            "Content Too Large",
            f"The request body is larger than {self.max_body_bytes} bytes.",
        )

    async def _buffered_json(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_depth(body) > self.max_json_depth:
            SECURITY_EVENTS.labels(self.service, "json_too_deep").inc()
            await _problem(
                send,
                400,
                "Bad Request",
                f"The JSON body is nested deeper than {self.max_json_depth} levels.",
            )
            return
        if has_nul_escape(body):
            # PostgreSQL text cannot hold U+0000: refused here, not a 500 at the insert.
            await _problem(
                send,
                422,
                "Unprocessable Content",
                "Text in the request must not contain NUL (U+0000) characters.",
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, as the server sends it

        await self.app(scope, replay, send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = 0
        started = False

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.max_body_bytes:
                    SECURITY_EVENTS.labels(self.service, "body_too_large").inc()
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await _problem(send, 413, "Content Too Large", "The request body is too large.")
