"""The circuit breaker's state machine, on a clock the test moves."""

from __future__ import annotations

import pytest

from ehr_connector.ehr.breaker import BreakerState, CircuitBreaker
from ehr_connector.ehr.errors import CircuitOpen
from servicekit.errors import DependencyUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def changes() -> list[tuple[BreakerState, BreakerState]]:
    return []


@pytest.fixture
def breaker(clock: Clock, changes: list[tuple[BreakerState, BreakerState]]) -> CircuitBreaker:
    return CircuitBreaker(
        failure_threshold=3,
        reset_after_s=10,
        clock=clock,
        on_change=lambda old, new: changes.append((old, new)),
    )


def _fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.allow()
        breaker.record_failure()


def test_opens_after_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    _fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    _fail(breaker, 1)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen) as caught:
        breaker.allow()
    # What the consumer loop needs to leave the event in Kafka.
    assert isinstance(caught.value, DependencyUnavailable)


def test_a_success_resets_the_failure_count(breaker: CircuitBreaker) -> None:
    _fail(breaker, 2)
    breaker.allow()
    breaker.record_success()
    _fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 2


def test_half_opens_after_cool_down_and_admits_exactly_one_trial(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    _fail(breaker, 3)
    clock.now += 9.9
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in() == pytest.approx(0.1)
    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.allow()  # the trial
    with pytest.raises(CircuitOpen, match="trial call is in flight"):
        breaker.allow()


def test_successful_trial_closes(
    breaker: CircuitBreaker, clock: Clock, changes: list[tuple[BreakerState, BreakerState]]
) -> None:
    _fail(breaker, 3)
    clock.now += 10
    breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    breaker.allow()
    assert changes == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_failed_trial_reopens_for_a_full_cool_down(breaker: CircuitBreaker, clock: Clock) -> None:
    _fail(breaker, 3)
    clock.now += 10
    breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in() == pytest.approx(10)


def test_a_trial_without_verdict_frees_the_slot_for_another(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    _fail(breaker, 3)
    clock.now += 10
    breaker.allow()
    breaker.release()  # e.g. the call was cancelled
    breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN


def test_threshold_must_be_positive(clock: Clock) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CircuitBreaker(failure_threshold=0, reset_after_s=1, clock=clock)
