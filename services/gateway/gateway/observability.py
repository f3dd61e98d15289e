"""What the gateway measures and traces about real-time pushes to patients.

* `patient_notification_latency_seconds{kind}`: from the EHR's write (the event's source
  version `lastUpdated`) to the SSE frame leaving the gateway: the number a patient feels.
* `sse_connections`: open event streams; `sse_notifications_sent_total{kind}`.
* A `notification push` span per SSE frame, a child of the consumer span that stored the
  notification (so the EHR -> connector -> Kafka -> gateway trace ends at the push), with a
  link to the stream's request span: the stream loop polls the table, which breaks the
  parent chain between the request and what it sends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind
from prometheus_client import Counter, Gauge, Histogram

from servicekit.telemetry import context_from_headers, current_trace_headers, tracer

NOTIFICATION_LATENCY = Histogram(
    "patient_notification_latency_seconds",
    "From the EHR's write to the SSE push to the patient's open session, by kind",
    ["kind"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 900),
)
SSE_CONNECTIONS = Gauge("sse_connections", "Open Server-Sent Events streams of patients")
SSE_SENT = Counter(
    "sse_notifications_sent_total", "Notifications pushed over SSE, by kind", ["kind"]
)
# Security signals (alerts: bursts of failed tokens, cross-patient attempts).
AUTH_FAILURES = Counter(
    "gateway_auth_failures_total",
    "Requests refused for their token: invalid (401), not allowed (403), IdP down (503)",
    ["reason"],
)
FOREIGN_ID_READS = Counter(
    "gateway_foreign_id_reads_total",
    "Reads by id that the owning service did not find for the caller's patient (another "
    "patient's id and a made-up id look the same; a burst is someone probing)",
    ["resource"],
)
SCOPE_DENIALS = Counter(
    "gateway_scope_denials_total", "Requests beyond the token's SMART scopes", ["resource"]
)
_AUTH_REASONS = {401: "invalid_token", 403: "not_allowed", 503: "idp_unavailable"}


def auth_failed(status: int) -> None:
    """Count a refused token by what was wrong with it."""
    AUTH_FAILURES.labels(_AUTH_REASONS.get(status, str(status))).inc()


def ehr_write_time(data: Any) -> datetime | None:
    """When the EHR wrote what an event reports (its `source.last_updated`), if it says."""
    source = getattr(data, "source", None)
    written = getattr(source, "last_updated", None)
    return written if isinstance(written, datetime) else None


def current_traceparent() -> str | None:
    """The current span's `traceparent` (to store with a notification)."""
    return current_trace_headers().get("traceparent")


@contextmanager
def stream_open() -> Iterator[None]:
    """Count an open SSE stream for as long as the block runs."""
    SSE_CONNECTIONS.inc()
    try:
        yield
    finally:
        SSE_CONNECTIONS.dec()


def pushed(
    kind: str,
    traceparent: str | None,
    source_time: datetime | None,
    stream_span: trace.Span,
    *,
    live: bool,
) -> None:
    """Record one SSE frame sent: its span and, for a live push, the latency.

    `live` is false for frames replayed to a reconnecting stream: their age is the
    outage's, not the pipeline's, and would swamp the histogram.
    """
    SSE_SENT.labels(kind).inc()
    parent = context_from_headers({"traceparent": traceparent} if traceparent else {})
    links = (
        [Link(stream_span.get_span_context())] if stream_span.get_span_context().is_valid else []
    )
    span = tracer("gateway.sse").start_span(
        "notification push",
        context=parent,
        kind=SpanKind.PRODUCER,
        links=links,
        attributes={"portal.notification.kind": kind, "portal.notification.live": live},
    )
    span.end()
    if live and source_time is not None:
        at = source_time if source_time.tzinfo else source_time.replace(tzinfo=UTC)
        NOTIFICATION_LATENCY.labels(kind).observe(
            max(0.0, (datetime.now(UTC) - at).total_seconds())
        )
