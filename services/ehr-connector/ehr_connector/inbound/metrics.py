"""Prometheus metrics of the inbound side (exported on the service's `/metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

NOTIFICATIONS = Counter(
    "inbound_notifications_total",
    "Notifications accepted from the EHR, by notification type",
    ["type"],
)
NOTIFICATIONS_REJECTED = Counter(
    "inbound_notifications_rejected_total",
    "Notifications refused (security events and malformed bodies), by reason",
    ["reason"],
)
NOTIFICATIONS_FAILED = Counter(
    "inbound_notifications_failed_total",
    "Notifications (or gap recoveries) that could not be processed, by reason "
    "(database_unavailable, ehr_unavailable, internal_error); the EHR delivers them again",
    ["reason"],
)
EVENTS = Counter(
    "inbound_events_total",
    "Subscription events handled, by outcome "
    "(published, duplicate, echo, unlinked, rejected, skipped, gone)",
    ["resource_type", "outcome"],
)
DUPLICATES = Counter(
    "inbound_duplicates_total",
    "Events or resource versions received again and skipped",
    ["kind"],
)
UNLINKED = Counter(
    "inbound_unlinked_patient_total",
    "Changes about a patient not linked to the portal (nothing published)",
    ["resource_type"],
)
MAPPING_REJECTED = Counter(
    "inbound_mapping_rejected_total",
    "Resources that could not be mapped to an event (recorded with the reason)",
    ["resource_type"],
)
GAPS_DETECTED = Counter(
    "inbound_gaps_detected_total",
    "Gaps in event numbers (a jump, or a heartbeat ahead of what was seen)",
    ["topic"],
)
GAPS_RECOVERED = Counter(
    "inbound_gaps_recovered_total",
    "Gap recoveries completed, by method ($events or a _lastUpdated search)",
    ["topic", "method"],
)
EVENTS_RECOVERED = Counter(
    "inbound_events_recovered_total",
    "Missing events processed by gap recovery",
    ["topic"],
)
HEARTBEAT_MISSED = Gauge(
    "inbound_heartbeat_missing",
    "1 while no notification came within the allowed multiple of the heartbeat period",
    ["topic"],
)
HEARTBEAT_MISSED_TOTAL = Counter(
    "inbound_heartbeats_missed_total",
    "Episodes of missed heartbeats (silence beyond the allowed multiple of the period)",
    ["topic"],
)
SUBSCRIPTION_STATUS = Gauge(
    "inbound_subscription_status",
    "1 for the status each topic's Subscription last had on the EHR",
    ["topic", "status"],
)
SUBSCRIPTION_LAST_EVENT = Gauge(
    "inbound_subscription_last_event_number",
    "Highest event number processed without a gap",
    ["topic"],
)
SUBSCRIPTION_REACTIVATIONS = Counter(
    "inbound_subscription_reactivations_total",
    "Subscriptions created, or re-activated from error or off",
    ["topic", "action"],
)
BACKFILL_ENTRIES = Counter("backfill_entries_total", "History entries published by back-fills", [])
BACKFILL_BATCHES = Counter(
    "backfill_batches_total", "record.imported batches published by back-fills", []
)
BACKFILLS = Gauge("backfills", "Back-fills by state", ["state"])
BACKFILL_YIELDED = Counter(
    "backfill_yielded_seconds_total",
    "Seconds back-fills rested between pages for live notifications (beyond the interval)",
    [],
)
BACKFILL_FAILURES = Counter(
    "backfill_page_failures_total", "Back-fill pages that failed and will be retried", []
)
NOTIFICATION_DELAY = Histogram(
    "inbound_notification_delay_seconds",
    "From an event's time at the EHR (its notificationEvent timestamp) to the connector "
    "receiving its notification: the EHR's share of the way to the patient (a redelivery "
    "counts its whole wait; a clock ahead of ours counts 0)",
    ["topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)
CANARY_LATENCY = Histogram(
    "canary_latency_seconds",
    "From the canary's EHR write (meta.lastUpdated) to lab.resulted published",
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300),
)
CANARY_LAST_SUCCESS = Gauge(
    "canary_last_success_timestamp_seconds",
    "Unix time of the last canary whose lab.resulted was published",
)
CANARY_FAILURES = Counter(
    "canary_failures_total", "Canary runs that failed or timed out, by stage", ["stage"]
)

SUBSCRIPTION_STATUSES = ("requested", "active", "error", "off", "missing")


def set_subscription_status(topic: str, status: str) -> None:
    """Set the status gauge of a topic: 1 for `status`, 0 for the others."""
    for candidate in SUBSCRIPTION_STATUSES:
        SUBSCRIPTION_STATUS.labels(topic, candidate).set(1 if candidate == status else 0)
