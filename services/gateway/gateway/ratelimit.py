"""Rate limits of the patients' API, per client IP and per bearer token (429 with
Retry-After), checked before anything else runs: no body is read, no token verified and
no JWKS fetched for a request over its limit.

Token buckets: each key may burst up to `burst` requests and refills at `rate` per second.
The key of a token is a hash of the bearer string (verifying it first would let floods of
forged tokens cost a signature check each). Buckets live in this process (a replica limits
its own share); the table is bounded, the least recently seen key is forgotten first (a
forgotten key starts full again, which only ever errs towards letting a client through).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from servicekit.limits import SECURITY_EVENTS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """Token buckets by key; `take` says how long to wait (0 = allowed)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> float:
        """Take one request from `key`'s bucket: 0.0 if allowed, else seconds to wait."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(tokens=float(self.burst), at=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


class PatientWrites:
    """Per-patient limit on writes, checked once the token says who the patient is: a
    patient (or whoever holds their tokens) cannot flood the clinic's systems with
    bookings, messages or triage sessions from many tokens or addresses at once."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.buckets = TokenBuckets(per_minute / 60.0, burst) if per_minute > 0 else None

    def wait(self, patient_id: str) -> int:
        """0 when a write of `patient_id` may go ahead, else the seconds to wait."""
        if self.buckets is None:
            return 0
        wait = self.buckets.take(patient_id)
        return max(1, math.ceil(wait)) if wait else 0


@dataclass(frozen=True)
class RateLimits:
    """Configured limits; a rate of 0 switches that limit off."""

    ip_rate: float
    ip_burst: int
    token_rate: float
    token_burst: int
    forwarded_hops: int = 0
    prefixes: tuple[str, ...] = ("/v1/",)


class RateLimitMiddleware:
    """429 problem+json with Retry-After once a client IP or a token is over its limit."""

    def __init__(self, app: ASGIApp, *, limits: RateLimits, service: str = "gateway") -> None:
        self.app = app
        self.limits = limits
        self.service = service
        self.by_ip = TokenBuckets(limits.ip_rate, limits.ip_burst) if limits.ip_rate else None
        self.by_token = (
            TokenBuckets(limits.token_rate, limits.token_burst) if limits.token_rate else None
        )

    def _client_ip(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        hops = self.limits.forwarded_hops
        if hops > 0 and b"x-forwarded-for" in headers:
            # The address the nearest trusted proxy saw: `hops` entries from the right.
            chain = [p.strip() for p in headers[b"x-forwarded-for"].decode("latin-1").split(",")]
            if len(chain) >= hops:
                return chain[-hops][:64]
        client = scope.get("client")
        return str(client[0]) if client else "unknown"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(self.limits.prefixes):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        wait = 0.0
        if self.by_ip is not None:
            wait = self.by_ip.take("ip:" + self._client_ip(scope, headers))
            limited = "ip"
        if not wait and self.by_token is not None:
            auth = headers.get(b"authorization", b"")
            if auth[:7].lower() == b"bearer ":
                digest = hashlib.sha256(auth[7:].strip()).hexdigest()[:32]
                wait = self.by_token.take("token:" + digest)
                limited = "token"
        if not wait:
            await self.app(scope, receive, send)
            return
        SECURITY_EVENTS.labels(self.service, f"rate_limited_{limited}").inc()
        retry_after = max(1, math.ceil(wait))
        body = json.dumps(
            {
                "type": "about:blank",
                "title": "Too Many Requests",
                "status": 429,
                "detail": f"Too many requests for this {limited}; retry after {retry_after} s.",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry_after).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
