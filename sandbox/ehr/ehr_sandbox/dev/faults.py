"""Fault injection: make the sandbox misbehave like a struggling vendor EHR.

`POST /sandbox/faults` stores a `FaultConfig` on `app.state.faults`; the middleware here
applies its HTTP faults to `/fhir` requests, in the order a real outage would show them: a
down window (503 with Retry-After), rate limiting (429 with Retry-After, token bucket),
latency, then random 500/503 errors. The `notification_*` fields are read by the
subscriptions module when it delivers notifications.

The rate limit also keeps a ledger per client (`FaultState.clients`, shown by
`GET /sandbox/faults`): every request in the limit's scope is counted, and one that
arrives after a 429 was sent to the same client and before that 429's Retry-After
expired is counted as early. A request arriving within `in_flight_grace_ms` of the 429
having been sent is counted apart, as in flight: a client with several requests open at
once sent those before it could read the 429 (the server cannot tell them from a hasty
retry, so the grace is short and the count is shown). Whether a client honours
Retry-After is thus measured here, by the server, never taken from the client's word.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from ehr_sandbox.fhir.outcomes import FhirError

FHIR_PREFIX = "/fhir"


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
EARLY_KEPT = 20  # early requests whose delay the ledger keeps


class RateLimit(BaseModel):
    """A token bucket: `rate` requests per second (bursts up to `burst`, by default
    max(1, rate)); a refused request gets 429 with `Retry-After` in delta-seconds or as
    an HTTP date (RFC 9110 allows both; clients must understand both)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    rate: float = Field(gt=0, le=100_000)
    retry_after_s: int = Field(default=1, ge=0, le=3600)
    burst: float | None = Field(default=None, ge=1, le=100_000)
    writes_only: bool = Field(
        default=False, description="Limit only writes (POST/PUT/PATCH/DELETE); reads pass"
    )
    retry_after_form: Literal["seconds", "http-date"] = "seconds"
    in_flight_grace_ms: int = Field(
        default=20, ge=0, le=1000, description="See the module docstring: in flight vs early"
    )

    def capacity(self) -> float:
        """The bucket's size."""
        return self.burst if self.burst is not None else max(1.0, self.rate)

    def covers(self, method: str) -> bool:
        """Whether a request with `method` is subject to the limit."""
        return not self.writes_only or method.upper() in WRITE_METHODS


class FaultConfig(BaseModel):
    """The faults to inject. Every field defaults to "off"."""

    model_config = ConfigDict(extra="forbid", strict=True)

    latency_ms: int = Field(default=0, ge=0, le=60_000)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    error_status: Literal[500, 503] = 503
    rate_limit: RateLimit | None = None
    down_for_s: float = Field(default=0.0, ge=0.0, le=86_400.0)
    notification_drop_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    notification_duplicate_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    notification_reorder: bool = False


@dataclass
class ClientLedger:
    """What one client did under the rate limit (times: Unix seconds, this machine)."""

    requests: int = 0  # in the limit's scope
    passed: int = 0
    throttled: int = 0  # answered 429
    after_throttle: int = 0  # requests that came after this client's first 429 was sent
    early: int = 0  # ... of which before the Retry-After of a sent 429 had expired
    in_flight: int = 0  # ... of which within the grace after that 429 was sent
    # How long after the 429 was sent the first early ones came (ms): just past the grace
    # reads as a request already in flight, delayed by load; hundreds as one that did not
    # wait.
    early_after_ms: list[float] = field(default_factory=list)
    not_before: float = 0.0  # the latest Retry-After sent to this client (fully sent)
    sent_at: float = 0.0  # when the 429 that set `not_before` was sent
    throttle_sent: bool = False
    first_throttled: float | None = None
    passed_since_first_throttle: int = 0
    first_passed: float | None = None
    last_passed: float | None = None

    def view(self) -> dict[str, Any]:
        """The ledger as JSON, with the two figures a benchmark wants: the rate achieved
        from the first 429 (the bucket empty: the allowed rate is the refill rate) to the
        last write that passed, and the share of post-429 requests that waited."""
        rate: float | None = None
        if self.first_throttled is not None and self.last_passed is not None:
            span = self.last_passed - self.first_throttled
            if span > 0:
                rate = round(self.passed_since_first_throttle / span, 3)
        overall: float | None = None
        if self.first_passed is not None and self.last_passed is not None:
            span = self.last_passed - self.first_passed
            if span > 0:
                overall = round((self.passed - 1) / span, 3)
        judged = self.after_throttle - self.in_flight
        compliance = round((judged - self.early) / judged, 4) if judged > 0 else None
        return {
            "requests": self.requests,
            "passed": self.passed,
            "throttled": self.throttled,
            "after_throttle": self.after_throttle,
            "early": self.early,
            "early_after_ms": list(self.early_after_ms),
            "in_flight": self.in_flight,
            "first_throttled_at": _rfc3339(self.first_throttled),
            "last_passed_at": _rfc3339(self.last_passed),
            "passed_since_first_throttle": self.passed_since_first_throttle,
            "rate_since_first_throttle_per_s": rate,
            "rate_per_s": overall,
            "retry_after_compliance": compliance,
        }


def _rfc3339(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat()


def client_of(scope: Scope, admin_token: str) -> str:
    """A label for the caller of a request: the `client_id` claim of its bearer token,
    "admin", a patient token's "patient", or "anonymous".

    The token is decoded here without verification: the label only files the request in
    the ledger (the request itself is authenticated later, by the FHIR routes), and
    verifying a signature twice per request would slow the very rate being measured."""
    auth = ""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            auth = value.decode("latin-1")
            break
    kind, _, token = auth.partition(" ")
    token = token.strip()
    if kind.lower() != "bearer" or not token:
        return "anonymous"
    if token == admin_token:
        return "admin"
    parts = token.split(".")
    if len(parts) != 3:
        return "unknown"
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, binascii.Error):
        return "unknown"
    if not isinstance(claims, dict):
        return "unknown"
    if claims.get("patient") is not None:
        return "patient"
    client = claims.get("client_id")
    return str(client)[:128] if client is not None else "unknown"


class FaultState:
    """Runtime state of the active faults: the down window, the token bucket and the
    per-client ledger of the rate limit."""

    def __init__(self) -> None:
        self.down_until = 0.0
        self._tokens = 0.0
        self._refilled = 0.0
        self._random = random.Random()
        self.clients: dict[str, ClientLedger] = {}

    def apply(self, config: FaultConfig) -> None:
        """Start the windows of a newly set configuration (and a new ledger)."""
        now = time.monotonic()
        self.down_until = now + config.down_for_s if config.down_for_s > 0 else 0.0
        self._tokens = config.rate_limit.capacity() if config.rate_limit else 0.0
        self._refilled = now
        self.clients = {}

    def down_remaining(self) -> float:
        """Seconds left in the down window (0 when up)."""
        return max(0.0, self.down_until - time.monotonic())

    def take_token(self, limit: RateLimit) -> bool:
        """Whether a request may pass the rate limit now (consumes a token if so)."""
        now = time.monotonic()
        capacity = limit.capacity()
        self._tokens = min(capacity, self._tokens + (now - self._refilled) * limit.rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def rate_limited(self, limit: RateLimit, client: str) -> float | None:
        """Apply the limit to one request of `client`: None when it may pass, else the
        Retry-After deadline (Unix seconds) it is refused with. Books the ledger."""
        now = time.time()
        ledger = self.clients.setdefault(client, ClientLedger())
        ledger.requests += 1
        if ledger.throttle_sent:
            ledger.after_throttle += 1
            if now < ledger.not_before:
                if now - ledger.sent_at < limit.in_flight_grace_ms / 1000:
                    ledger.in_flight += 1
                else:
                    ledger.early += 1
                    if len(ledger.early_after_ms) < EARLY_KEPT:
                        ledger.early_after_ms.append(round((now - ledger.sent_at) * 1000, 1))
        if self.take_token(limit):
            ledger.passed += 1
            if ledger.first_passed is None:
                ledger.first_passed = now
            ledger.last_passed = now
            if ledger.first_throttled is not None:
                ledger.passed_since_first_throttle += 1
            return None
        ledger.throttled += 1
        if ledger.first_throttled is None:
            ledger.first_throttled = now
        not_before = now + limit.retry_after_s
        if limit.retry_after_form == "http-date":
            # An HTTP date has whole seconds: round up, so the date is never sooner than
            # `retry_after_s` from now and the ledger judges by the instant it names.
            not_before = float(math.ceil(not_before))
        return not_before

    def throttle_sent(self, client: str, not_before: float) -> None:
        """A 429 until `not_before` has been sent to `client`: from now on its requests
        are judged against it."""
        ledger = self.clients.setdefault(client, ClientLedger())
        ledger.throttle_sent = True
        if not_before >= ledger.not_before:
            ledger.not_before = not_before
            ledger.sent_at = time.time()

    def roll(self, probability: float) -> bool:
        """True with `probability`."""
        return probability > 0 and self._random.random() < probability


def retry_after_header(limit: RateLimit, not_before: float) -> str:
    """The Retry-After value for a refusal until `not_before` (Unix seconds)."""
    if limit.retry_after_form == "http-date":
        return format_datetime(datetime.fromtimestamp(not_before, UTC), usegmt=True)
    return str(limit.retry_after_s)


def _fault_error(
    config: FaultConfig, state: FaultState, method: str, client: str
) -> tuple[FhirError | None, float | None]:
    """The fault to answer with, if any, and for a 429 its Retry-After deadline."""
    remaining = state.down_remaining()
    if remaining > 0:
        down = FhirError(
            503,
            "The EHR is down for maintenance",
            code="transient",
            headers={"Retry-After": str(math.ceil(remaining))},
        )
        return down, None
    limit = config.rate_limit
    if limit is not None and limit.covers(method):
        not_before = state.rate_limited(limit, client)
        if not_before is not None:
            throttled = FhirError(
                429,
                "Too many requests",
                code="throttled",
                headers={"Retry-After": retry_after_header(limit, not_before)},
            )
            return throttled, not_before
    return None, None


class FaultInjectionMiddleware:
    """ASGI middleware applying the app's `FaultConfig` to `/fhir` requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Inject the configured faults, then pass the request on."""
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (
            path == FHIR_PREFIX or path.startswith(FHIR_PREFIX + "/")
        ):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        config: FaultConfig = state.faults
        fault_state: FaultState = state.fault_state
        metrics = getattr(state, "metrics", None)
        client = (
            client_of(scope, state.settings.admin_token) if config.rate_limit is not None else ""
        )
        error, not_before = _fault_error(config, fault_state, scope.get("method", "GET"), client)
        if error is None and config.latency_ms > 0:
            await asyncio.sleep(config.latency_ms / 1000)
        if error is None and fault_state.roll(config.error_rate):
            status = config.error_status
            headers = {"Retry-After": "1"} if status == 503 else {}
            error = FhirError(
                status,
                "Injected server error",
                code="exception" if status == 500 else "transient",
                headers=headers,
            )
        if error is None:
            await self.app(scope, receive, send)
            return
        if metrics is not None:
            metrics.faults_injected.labels(status=str(error.status)).inc()
        await error.response()(scope, receive, send)
        if not_before is not None:
            fault_state.throttle_sent(client, not_before)
