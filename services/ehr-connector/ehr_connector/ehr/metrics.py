"""Prometheus metrics of the EHR adapter (on the service's `/metrics`).

Labels carry interactions, resource types and statuses only: never ids or content.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from ehr_connector.ehr.breaker import BreakerState

EHR_CALL_SECONDS = Histogram(
    "ehr_call_seconds",
    "Latency of one HTTP exchange with the EHR, by interaction and outcome",
    ["interaction", "resource_type", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EHR_RETRIES = Counter(
    "ehr_call_retries_total",
    "EHR calls retried after a transient failure, by reason",
    ["interaction", "reason"],
)
EHR_BREAKER_STATE = Gauge(
    "ehr_circuit_breaker_state",
    "State of the EHR circuit breaker: 0 closed, 1 half-open, 2 open",
)
EHR_BREAKER_TRANSITIONS = Counter(
    "ehr_circuit_breaker_transitions_total", "Circuit breaker state changes", ["to"]
)
EHR_TOKEN_REQUESTS = Counter(
    "ehr_token_requests_total", "Access tokens requested from the EHR, by outcome", ["outcome"]
)

_STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def record_breaker_change(_previous: BreakerState, current: BreakerState) -> None:
    """Breaker listener: export the new state."""
    EHR_BREAKER_STATE.set(_STATE_VALUE[current])
    EHR_BREAKER_TRANSITIONS.labels(current.value).inc()
