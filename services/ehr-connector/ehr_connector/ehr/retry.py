"""The EHR client's retry policy: which answers are tried again, how long to wait between
tries, and the client-wide pace a rate-limiting EHR sets.

* transient failures are retried with full-jitter exponential back-off (tenacity): timeouts,
  connection errors, 408, 429 and 5xx; a `Retry-After` is honoured when it is short
  (`ehr_retry_after_max_s`), a longer one ends the call at once so that the wait happens
  in Kafka rather than in a held transaction;
* a create without a condition is not idempotent: it is retried only when the request
  certainly had no effect (connection refused, 429, 503);
* a 429 paces the whole client, not only the call that got it (`RetryAfterGate`).

Kept apart from the HTTP client (`fhir_client`) so that the policy can be read, tested and
changed on its own: the client only asks `RetryPolicy.attempts(...)` for its tries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from ehr_connector.ehr.errors import EhrUnavailable
from ehr_connector.ehr.metrics import EHR_RETRIES
from ehr_connector.ehr.port import FhirJson
from ehr_connector.settings import Settings
from servicekit.logging import get_logger

log = get_logger(__name__)


class Disposition(StrEnum):
    """What an HTTP status means for the caller."""

    OK = "ok"
    TRANSIENT = "transient"
    CONFLICT = "conflict"
    NOT_FOUND = "not_found"
    GONE = "gone"
    UNAUTHORISED = "unauthorised"
    PERMANENT = "permanent"


def classify_status(status: int) -> Disposition:
    """Classify an EHR HTTP status: which are retried, which re-read, which are final."""
    if status < 400:
        return Disposition.OK
    if status in (408, 429) or status >= 500:
        return Disposition.TRANSIENT
    if status in (409, 412):
        return Disposition.CONFLICT
    if status == 404:
        return Disposition.NOT_FOUND
    if status == 410:
        return Disposition.GONE
    if status == 401:
        return Disposition.UNAUTHORISED
    return Disposition.PERMANENT


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), if any."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class TransientFailure(Exception):
    """A retryable HTTP answer (408, 429, 5xx), raised inside the retry loop."""

    def __init__(self, status: int, retry_after: float | None, outcome: FhirJson | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after
        self.outcome = outcome


def is_retryable(exc: BaseException, *, idempotent: bool, retry_after_max_s: float) -> bool:
    """Whether one failed try may be tried again (see the module docstring)."""
    if isinstance(exc, TransientFailure):
        if exc.retry_after is not None and exc.retry_after > retry_after_max_s:
            return False
        return idempotent or exc.status in (429, 503)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return True  # the request never reached the EHR
    if isinstance(exc, httpx.TimeoutException | httpx.TransportError):
        return idempotent
    return False


class RetryAfterGate:
    """The client-wide pace a rate-limiting EHR sets with 429 + Retry-After.

    `hold(seconds, write=...)` closes the gate until that long from now (a later deadline
    wins) for every request; `passage(interaction, write=...)` waits until it is open. For
    `serial_s` beyond a 429 the kind of request it refused goes one at a time, so none of
    that kind is in flight when the next 429 comes. A refused write serialises writes
    only: reads (back-fill pages, slot sync, notifications read back) are not what
    the EHR limited and would halve the writes' pace in one queue with them; a refused
    read serialises both (a limit on reads is usually a limit on everything)."""

    def __init__(self, serial_s: float, max_wait_s: float) -> None:
        self.serial_s = serial_s
        self.max_wait_s = max_wait_s
        self._open_at = 0.0  # monotonic
        self._serial_until = {True: 0.0, False: 0.0}  # monotonic, by write or not
        self._one_at_a_time = {True: asyncio.Lock(), False: asyncio.Lock()}

    def hold(self, seconds: float, *, write: bool = True) -> None:
        """A 429 (to a write, or to a read) said: not before `seconds` from now."""
        now = time.monotonic()
        self._open_at = max(self._open_at, now + seconds)
        until = now + seconds + self.serial_s
        for kind in (True,) if write else (True, False):
            self._serial_until[kind] = max(self._serial_until[kind], until)

    def wait_s(self) -> float:
        """Seconds until the gate opens (0 when open)."""
        return max(0.0, self._open_at - time.monotonic())

    @contextlib.asynccontextmanager
    async def passage(self, interaction: str, *, write: bool = True) -> AsyncIterator[None]:
        """Hold this while sending one request and reading its status."""
        if time.monotonic() >= self._serial_until[write]:
            await self._wait(interaction)
            yield
            return
        async with self._one_at_a_time[write]:
            await self._wait(interaction)
            yield

    async def _wait(self, interaction: str) -> None:
        # A loop: while one request waited, another's 429 may have moved the deadline.
        while (remaining := self.wait_s()) > 0:
            if remaining > self.max_wait_s:
                raise EhrUnavailable(
                    f"the EHR asked to wait {remaining:.1f}s (Retry-After)",
                    status=429,
                    interaction=interaction,
                )
            await asyncio.sleep(remaining)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many tries a call gets and how long it waits between them."""

    attempts_max: int
    base_s: float
    max_s: float
    retry_after_max_s: float

    @classmethod
    def of(cls, settings: Settings) -> RetryPolicy:
        return cls(
            attempts_max=max(1, settings.ehr_retry_attempts),
            base_s=settings.ehr_retry_base_s,
            max_s=settings.ehr_retry_max_s,
            retry_after_max_s=settings.ehr_retry_after_max_s,
        )

    def attempts(self, interaction: str, *, idempotent: bool) -> AsyncRetrying:
        """The tries of one call (`async for attempt in ...: with attempt: ...`); the last
        failure is raised as it was."""
        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts_max),
            wait=self.wait_s,
            retry=retry_if_exception(
                lambda exc: is_retryable(
                    exc, idempotent=idempotent, retry_after_max_s=self.retry_after_max_s
                )
            ),
            before_sleep=lambda state: _count_retry(interaction, state),
            reraise=True,
        )

    def wait_s(self, state: RetryCallState) -> float:
        """Seconds before the next try: jittered back-off, or what the EHR asked for."""
        backoff = wait_random_exponential(multiplier=self.base_s, max=self.max_s)(state)
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, TransientFailure) and exc.status == 429:
            # The gate already holds every request until the Retry-After expires; waiting
            # longer (back-off on top) would leave the allowed rate unused.
            return 0.0 if exc.retry_after is not None else float(backoff)
        if isinstance(exc, TransientFailure) and exc.retry_after is not None:
            return min(max(exc.retry_after, backoff), self.retry_after_max_s)
        return float(backoff)


def _count_retry(interaction: str, state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    cause = f"http_{exc.status}" if isinstance(exc, TransientFailure) else type(exc).__name__
    EHR_RETRIES.labels(interaction, cause).inc()
    log.info(
        "ehr.call_retry",
        interaction=interaction,
        attempt=state.attempt_number,
        cause=cause,
        wait_s=round(state.upcoming_sleep, 3),
    )
