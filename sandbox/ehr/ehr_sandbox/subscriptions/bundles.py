"""Notification bundles in the Subscriptions Backport IG's shapes.

Every notification is a `history` Bundle whose first entry is the subscription status:
an R4 `Parameters` (profile `backport-subscription-status-r4`) by default, or an R4B
`SubscriptionStatus` when the sandbox runs with `SANDBOX_NOTIFICATION_FORMAT=r4b`. The
status entry's `request` is `GET <base>/Subscription/<id>/$status` with response 200.

Payload content follows the IG's Payload Types page:
- `empty`: no `focus`, no `additional-context`, no `topic`, and no entry besides the status;
- `id-only`: `focus`/`additional-context` references, and one entry per resource with
  `fullUrl`, `request` and `response` but no `resource`;
- `full-resource`: the same entries with the resource inlined (the focus as it was at the
  event; additional context, e.g. a lab report's Observations, as it is now).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from ehr_sandbox.subscriptions.model import PayloadContent

NotificationType = Literal[
    "handshake", "heartbeat", "event-notification", "query-status", "query-event"
]
NotificationFormat = Literal["r4", "r4b"]

STATUS_PROFILE_R4 = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    "backport-subscription-status-r4"
)
NOTIFICATION_PROFILE_R4 = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    "backport-subscription-notification-r4"
)
NOTIFICATION_PROFILE_R4B = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    "backport-subscription-notification"
)
SUBSCRIPTION_ERROR_SYSTEM = "http://terminology.hl7.org/CodeSystem/subscription-error"

_METHOD = {"create": "POST", "update": "PUT", "delete": "DELETE"}
_RESPONSE = {"create": "201", "update": "200", "delete": "204"}


def instant(moment: datetime) -> str:
    """A FHIR instant in UTC with millisecond precision."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ContextResource:
    """An additional-context resource of an event: its reference and, if found, its body."""

    reference: str
    resource: dict[str, Any] | None


@dataclass(frozen=True)
class EventView:
    """One event as a notification shows it."""

    number: int
    occurred_at: datetime
    interaction: str
    focus_type: str
    focus_id: str
    focus_version: str | None
    focus: dict[str, Any] | None
    context: tuple[ContextResource, ...] = ()


@dataclass(frozen=True)
class StatusInfo:
    """What the status part of a notification says about the subscription."""

    subscription_id: str
    topic: str
    status: str
    events_since_start: int
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _status_parameters_r4(
    fhir_base: str,
    info: StatusInfo,
    kind: NotificationType,
    events: Sequence[EventView],
    content: PayloadContent,
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {
            "name": "subscription",
            "valueReference": {"reference": f"{fhir_base}/Subscription/{info.subscription_id}"},
        }
    ]
    # The IG: topic SHOULD NOT be present with `empty` payloads.
    if content != "empty":
        parameters.append({"name": "topic", "valueCanonical": info.topic})
    parameters += [
        {"name": "status", "valueCode": info.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(info.events_since_start)},
    ]
    for event in events:
        parts: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(event.number)},
            {"name": "timestamp", "valueInstant": instant(event.occurred_at)},
        ]
        if content != "empty":
            parts.append(
                {
                    "name": "focus",
                    "valueReference": {
                        "reference": f"{fhir_base}/{event.focus_type}/{event.focus_id}"
                    },
                }
            )
            parts += [
                {
                    "name": "additional-context",
                    "valueReference": {"reference": f"{fhir_base}/{ctx.reference}"},
                }
                for ctx in event.context
            ]
        parameters.append({"name": "notification-event", "part": parts})
    if info.error:
        parameters.append({"name": "error", "valueCodeableConcept": _error_concept(info.error)})
    return {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [STATUS_PROFILE_R4]},
        "parameter": parameters,
    }


def _status_resource_r4b(
    fhir_base: str,
    info: StatusInfo,
    kind: NotificationType,
    events: Sequence[EventView],
    content: PayloadContent,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "resourceType": "SubscriptionStatus",
        "id": str(uuid.uuid4()),
        "status": info.status,
        "type": kind,
        "eventsSinceSubscriptionStart": str(info.events_since_start),
    }
    notification_events: list[dict[str, Any]] = []
    for event in events:
        item: dict[str, Any] = {
            "eventNumber": str(event.number),
            "timestamp": instant(event.occurred_at),
        }
        if content != "empty":
            item["focus"] = {"reference": f"{fhir_base}/{event.focus_type}/{event.focus_id}"}
            if event.context:
                item["additionalContext"] = [
                    {"reference": f"{fhir_base}/{ctx.reference}"} for ctx in event.context
                ]
        notification_events.append(item)
    if notification_events:
        status["notificationEvent"] = notification_events
    status["subscription"] = {"reference": f"{fhir_base}/Subscription/{info.subscription_id}"}
    if content != "empty":
        status["topic"] = info.topic
    if info.error:
        status["error"] = [_error_concept(info.error)]
    return status


def _error_concept(text: str) -> dict[str, Any]:
    return {
        "coding": [
            {"system": SUBSCRIPTION_ERROR_SYSTEM, "code": "no-response", "display": "No Response"}
        ],
        "text": text,
    }


def status_resource(
    fhir_base: str,
    info: StatusInfo,
    kind: NotificationType,
    events: Sequence[EventView],
    content: PayloadContent,
    fmt: NotificationFormat,
) -> dict[str, Any]:
    """The subscription status resource (R4 Parameters or R4B SubscriptionStatus)."""
    if fmt == "r4b":
        return _status_resource_r4b(fhir_base, info, kind, events, content)
    return _status_parameters_r4(fhir_base, info, kind, events, content)


def _status_entry(fhir_base: str, info: StatusInfo, resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:{resource['id']}",
        "resource": resource,
        "request": {
            "method": "GET",
            "url": f"{fhir_base}/Subscription/{info.subscription_id}/$status",
        },
        "response": {"status": "200"},
    }


def _focus_entry(fhir_base: str, event: EventView, content: PayloadContent) -> dict[str, Any]:
    ref = f"{event.focus_type}/{event.focus_id}"
    url = event.focus_type if event.interaction == "create" else ref
    entry: dict[str, Any] = {"fullUrl": f"{fhir_base}/{ref}"}
    if content == "full-resource" and event.focus is not None and event.interaction != "delete":
        entry["resource"] = event.focus
    entry["request"] = {"method": _METHOD.get(event.interaction, "PUT"), "url": url}
    response: dict[str, Any] = {"status": _RESPONSE.get(event.interaction, "200")}
    if event.focus_version:
        response["etag"] = f'W/"{event.focus_version}"'
    entry["response"] = response
    return entry


def _context_entry(fhir_base: str, ctx: ContextResource, content: PayloadContent) -> dict[str, Any]:
    entry: dict[str, Any] = {"fullUrl": f"{fhir_base}/{ctx.reference}"}
    if content == "full-resource" and ctx.resource is not None:
        entry["resource"] = ctx.resource
    entry["request"] = {"method": "GET", "url": ctx.reference}
    entry["response"] = {
        "status": "200" if ctx.resource is not None or content != "full-resource" else "404"
    }
    return entry


def notification_bundle(
    *,
    fhir_base: str,
    info: StatusInfo,
    kind: NotificationType,
    events: Sequence[EventView],
    content: PayloadContent,
    fmt: NotificationFormat,
) -> dict[str, Any]:
    """A notification (or `$events` answer): a history Bundle, status first."""
    status = status_resource(fhir_base, info, kind, events, content, fmt)
    entries = [_status_entry(fhir_base, info, status)]
    if content != "empty":
        for event in events:
            entries.append(_focus_entry(fhir_base, event, content))
            entries += [_context_entry(fhir_base, ctx, content) for ctx in event.context]
    profile = NOTIFICATION_PROFILE_R4B if fmt == "r4b" else NOTIFICATION_PROFILE_R4
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [profile]},
        "type": "history",
        "timestamp": instant(datetime.now(UTC)),
        "entry": entries,
    }


def status_search_bundle(
    fhir_base: str, statuses: Sequence[dict[str, Any]], self_url: str
) -> dict[str, Any]:
    """The `$status` answer: a searchset Bundle with one status resource per Subscription."""
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "searchset",
        "timestamp": instant(datetime.now(UTC)),
        "total": len(statuses),
        "link": [{"relation": "self", "url": self_url}],
        "entry": [
            {
                "fullUrl": f"urn:uuid:{status['id']}",
                "resource": status,
                "search": {"mode": "match"},
            }
            for status in statuses
        ],
    }
