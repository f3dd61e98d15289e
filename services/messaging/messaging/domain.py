"""Care-team routing rules, free of I/O."""

from __future__ import annotations

from contracts.triage import Urgency

DEFAULT_POOL = "care-team"

# Where a triage summary goes: the most urgent work goes to the pool that can act on it
# now; self-care advice needs no clinician queue but is kept with the care team.
_URGENCY_POOL = {
    Urgency.EMERGENCY: "urgent-nurses",
    Urgency.URGENT: "urgent-nurses",
    Urgency.ROUTINE: DEFAULT_POOL,
    Urgency.SELF_CARE: DEFAULT_POOL,
}


def route_triage(urgency: Urgency, recommended_pool: str | None) -> str:
    """The pool that receives a triage summary: urgency first, then the recommendation."""
    if urgency in (Urgency.EMERGENCY, Urgency.URGENT):
        return _URGENCY_POOL[urgency]
    return recommended_pool or _URGENCY_POOL[urgency]
