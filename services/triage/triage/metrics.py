"""Prometheus metrics of triage: completed assessments by urgency and recommended pool."""

from __future__ import annotations

from prometheus_client import Counter

ASSESSMENTS = Counter(
    "triage_assessments_total",
    "Completed triage assessments, by urgency and the pool they recommend",
    ["urgency", "pool"],
)
