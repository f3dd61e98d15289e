"""The CloudEvents 1.0 envelope in Kafka binary mode (ce_* headers, JSON value).

`build_headers` writes every header DESIGN.md requires; `parse_headers` checks them and
raises `EnvelopeError` naming the first missing or malformed one, so a consumer can
dead-letter a message with a reason an operator understands.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
REQUIRED = (
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_subject",
    "ce_time",
    "ce_dataschema",
    "content-type",
)
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_SOURCE = re.compile(r"^/services/[a-z][a-z0-9-]*$")
_DATASCHEMA = re.compile(r"^[a-z]+\.[a-z]+/v[1-9][0-9]*$")

KafkaHeaders = list[tuple[str, bytes]]


class EnvelopeError(ValueError):
    """A required header is missing or malformed."""

    def __init__(self, header: str, problem: str) -> None:
        super().__init__(f"header {header!r}: {problem}")
        self.header = header
        self.problem = problem


@dataclass(frozen=True)
class Envelope:
    """The parsed, validated CloudEvents attributes of one message."""

    id: str
    source: str
    type: str
    subject: str
    time: datetime
    dataschema: str
    correlation_id: str
    causation_id: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def version(self) -> int:
        """The payload version named by `ce_dataschema`."""
        return int(self.dataschema.rsplit("/v", 1)[1])


def build_headers(
    *,
    event_type: str,
    subject: str,
    source_service: str,
    dataschema: str,
    event_id: str | None = None,
    time: datetime,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> KafkaHeaders:
    """The Kafka headers of one event, in binary content mode."""
    if time.tzinfo is None:
        raise EnvelopeError("ce_time", "must carry a time zone")
    ce_id = event_id or str(uuid.uuid4())
    headers: dict[str, str] = {
        "ce_specversion": SPECVERSION,
        "ce_id": ce_id,
        "ce_source": f"/services/{source_service}",
        "ce_type": event_type,
        "ce_subject": subject,
        "ce_time": time.isoformat(),
        "ce_dataschema": dataschema,
        "content-type": CONTENT_TYPE,
        "correlationid": correlation_id or ce_id,
    }
    if causation_id:
        headers["causationid"] = causation_id
    if traceparent:
        headers["traceparent"] = traceparent
    if tracestate:
        headers["tracestate"] = tracestate
    # Validate what we are about to send with the same rules a consumer applies.
    parse_headers(headers)
    return [(k, v.encode()) for k, v in headers.items()]


def _as_text(headers: Mapping[str, str | bytes] | Iterable[tuple[str, bytes]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for key, raw in items:
        if isinstance(raw, bytes):
            try:
                out[key] = raw.decode()
            except UnicodeDecodeError as exc:
                raise EnvelopeError(key, "is not UTF-8") from exc
        else:
            out[key] = raw
    return out


_KNOWN = frozenset(REQUIRED) | {"correlationid", "causationid", "traceparent", "tracestate"}


@functools.lru_cache(maxsize=512)
def _check_kind(
    specversion: str, source: str, event_type: str, dataschema: str, content_type: str
) -> None:
    """The headers that say what kind of event it is (the same for every event a service
    publishes of a type): checked once per combination, not once per event (a consumer
    draining a backlog parses thousands a second). A failed check is not cached."""
    if specversion != SPECVERSION:
        raise EnvelopeError("ce_specversion", f"must be {SPECVERSION}, got {specversion!r}")
    if not _SOURCE.match(source):
        raise EnvelopeError("ce_source", "must look like /services/<name>")
    if not _DATASCHEMA.match(dataschema):
        raise EnvelopeError("ce_dataschema", "must look like <type>/v<N>")
    if dataschema.rsplit("/v", 1)[0] != event_type:
        raise EnvelopeError("ce_dataschema", "does not name the event type in ce_type")
    if content_type.split(";")[0].strip() != CONTENT_TYPE:
        raise EnvelopeError("content-type", f"must be {CONTENT_TYPE}")


def parse_headers(headers: Mapping[str, str | bytes] | Iterable[tuple[str, bytes]]) -> Envelope:
    """Validate and parse CloudEvents headers; raises `EnvelopeError` naming the header."""
    h = _as_text(headers)
    for name in REQUIRED:
        if not h.get(name):
            raise EnvelopeError(name, "is missing")
    _check_kind(
        h["ce_specversion"], h["ce_source"], h["ce_type"], h["ce_dataschema"], h["content-type"]
    )
    try:
        uuid.UUID(h["ce_id"])
    except ValueError as exc:
        raise EnvelopeError("ce_id", "must be a UUID") from exc
    try:
        time = datetime.fromisoformat(h["ce_time"])
    except ValueError as exc:
        raise EnvelopeError("ce_time", "must be an RFC 3339 timestamp") from exc
    if time.tzinfo is None:
        raise EnvelopeError("ce_time", "must carry a time zone")
    traceparent = h.get("traceparent")
    if traceparent is not None and not _TRACEPARENT.match(traceparent):
        raise EnvelopeError("traceparent", "is not a W3C traceparent")
    return Envelope(
        id=h["ce_id"],
        source=h["ce_source"],
        type=h["ce_type"],
        subject=h["ce_subject"],
        time=time,
        dataschema=h["ce_dataschema"],
        correlation_id=h.get("correlationid") or h["ce_id"],
        causation_id=h.get("causationid"),
        traceparent=traceparent,
        tracestate=h.get("tracestate"),
        extra={k: v for k, v in h.items() if k not in _KNOWN},
    )
