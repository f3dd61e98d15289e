"""Care-team routing rules."""

from __future__ import annotations

from contracts.triage import Urgency
from messaging.domain import DEFAULT_POOL, route_triage


def test_urgent_outcomes_go_to_the_urgent_pool_whatever_was_recommended() -> None:
    assert route_triage(Urgency.EMERGENCY, "care-team") == "urgent-nurses"
    assert route_triage(Urgency.URGENT, None) == "urgent-nurses"


def test_routine_outcomes_follow_the_recommendation() -> None:
    assert route_triage(Urgency.ROUTINE, "obstetrics") == "obstetrics"
    assert route_triage(Urgency.SELF_CARE, None) == DEFAULT_POOL
