"""Fault injection: make the sandbox misbehave like a struggling vendor EHR.

`POST /sandbox/faults` stores a `FaultConfig` on `app.state.faults`; the middleware here
applies its HTTP faults to `/fhir` requests, in the order a real outage would show them: a
down window (503 with Retry-After), rate limiting (429 with Retry-After, token bucket),
latency, then random 500/503 errors. The `notification_*` fields are read by the
subscriptions module when it delivers notifications.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from ehr_sandbox.outcomes import FhirError

FHIR_PREFIX = "/fhir"


class RateLimit(BaseModel):
    """A token bucket: `rate` requests per second (bursts up to max(1, rate))."""

    model_config = ConfigDict(extra="forbid", strict=True)

    rate: float = Field(gt=0, le=100_000)
    retry_after_s: int = Field(default=1, ge=0, le=3600)


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


class FaultState:
    """Runtime state of the active faults: the down window and the token bucket."""

    def __init__(self) -> None:
        self.down_until = 0.0
        self._tokens = 0.0
        self._refilled = 0.0
        self._random = random.Random()

    def apply(self, config: FaultConfig) -> None:
        """Start the windows of a newly set configuration."""
        now = time.monotonic()
        self.down_until = now + config.down_for_s if config.down_for_s > 0 else 0.0
        self._tokens = max(1.0, config.rate_limit.rate) if config.rate_limit else 0.0
        self._refilled = now

    def down_remaining(self) -> float:
        """Seconds left in the down window (0 when up)."""
        return max(0.0, self.down_until - time.monotonic())

    def take_token(self, limit: RateLimit) -> bool:
        """Whether a request may pass the rate limit now (consumes a token if so)."""
        now = time.monotonic()
        capacity = max(1.0, limit.rate)
        self._tokens = min(capacity, self._tokens + (now - self._refilled) * limit.rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def roll(self, probability: float) -> bool:
        """True with `probability`."""
        return probability > 0 and self._random.random() < probability


def _fault_error(config: FaultConfig, state: FaultState) -> FhirError | None:
    remaining = state.down_remaining()
    if remaining > 0:
        return FhirError(
            503,
            "The EHR is down for maintenance",
            code="transient",
            headers={"Retry-After": str(math.ceil(remaining))},
        )
    if config.rate_limit is not None and not state.take_token(config.rate_limit):
        return FhirError(
            429,
            "Too many requests",
            code="throttled",
            headers={"Retry-After": str(config.rate_limit.retry_after_s)},
        )
    return None


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
        error = _fault_error(config, fault_state)
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
