"""A circuit breaker for the EHR: stop calling a dead EHR, probe it now and then.

closed ── `failure_threshold` consecutive failures ──▶ open
open ── `reset_after_s` passed ──▶ half-open: exactly one trial call is let through
half-open ── trial succeeds ──▶ closed;  trial fails ──▶ open (cool-down starts again)

While open (or half-open with the trial in flight) `allow()` raises `CircuitOpen`, a
`DependencyUnavailable`: the consumer leaves the event in Kafka and retries later, so an
outage drains in order once the EHR is back. Single event loop, no locks needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

from ehr_connector.ehr.errors import CircuitOpen


class BreakerState(StrEnum):
    """The three states of the breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


StateListener = Callable[[BreakerState, BreakerState], None]


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a single half-open trial."""

    def __init__(
        self,
        *,
        failure_threshold: int,
        reset_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: StateListener | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker turns half-open once its cool-down passed)."""
        if self._state is BreakerState.OPEN and self.retry_in() == 0.0:
            self._set(BreakerState.HALF_OPEN)
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success."""
        return self._failures

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a trial call through (0 when not open)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.reset_after_s - self._clock())

    def allow(self) -> None:
        """Admit a call, or raise `CircuitOpen`. In half-open, admits one trial call."""
        state = self.state
        if state is BreakerState.CLOSED:
            return
        if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return
        if state is BreakerState.OPEN:
            raise CircuitOpen(f"EHR circuit open; next trial in {self.retry_in():.1f}s")
        raise CircuitOpen("EHR circuit half-open; a trial call is in flight")

    def record_success(self) -> None:
        """The EHR answered (any non-failure response): close the circuit."""
        self._failures = 0
        self._trial_in_flight = False
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        """A call failed in a way that says the EHR is unhealthy."""
        self._failures += 1
        was_trial = self._trial_in_flight
        self._trial_in_flight = False
        if (
            was_trial
            or self._state is BreakerState.HALF_OPEN
            or (self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold)
        ):
            self._open()

    def release(self) -> None:
        """A call ended without a verdict (cancelled): free the half-open trial slot."""
        self._trial_in_flight = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        previous, self._state = self._state, state
        if previous is not state and self._on_change is not None:
            self._on_change(previous, state)
