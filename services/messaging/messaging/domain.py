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


# Routing of what a patient writes: a request about a prescription goes to the pool that
# handles refills; everything else to the patient's care team. Matching is on whole words
# of the subject only (the body is the patient's free text and is not inspected).
PRESCRIPTIONS_POOL = "prescriptions"
_PRESCRIPTION_WORDS = frozenset({"refill", "refills", "prescription", "prescriptions", "renewal"})
SUBJECT_MAX = 200
BODY_MAX = 10_000
FALLBACK_SUBJECT = "Message from the patient"


def route_patient_message(subject: str) -> str:
    """The pool that receives a new thread the patient starts (default: the care team)."""
    words = {w.strip(".,:;!?()'\"").lower() for w in subject.split()}
    if words & _PRESCRIPTION_WORDS:
        return PRESCRIPTIONS_POOL
    return DEFAULT_POOL


def reply_subject(thread_subject: str | None) -> str:
    """The subject a reply carries: its thread's (a clinician-started thread has none)."""
    return (thread_subject or FALLBACK_SUBJECT)[:SUBJECT_MAX]
