"""Parsing of Subscription notification Bundles (Subscriptions R5 Backport IG on R4).

A notification is a `history` Bundle whose first entry is the subscription status, either
as an R4 `Parameters` (profile `backport-subscription-status-r4`) or as an R4B
`SubscriptionStatus`; the same shape answers `$events` (type `query-event`) and, inside a
searchset, `$status` (`query-status`). The entries after the status carry, for each event,
its focus and then its additional context: with `fullUrl`, `request` and `response` only
(`id-only`) or with the resource inlined (`full-resource`).

`parse_notification` turns such a Bundle into a `Notification` or raises
`MalformedNotification` with a reason safe to log and to return (it never echoes content).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ehr_connector.inbound.domain.fhir_values import (
    Ref,
    Resource,
    as_list,
    etag_version,
    parse_instant,
    parse_reference,
    reference_of,
)

NotificationType = Literal[
    "handshake", "heartbeat", "event-notification", "query-status", "query-event"
]
_TYPES: frozenset[str] = frozenset(
    {"handshake", "heartbeat", "event-notification", "query-status", "query-event"}
)
_BUNDLE_TYPES = frozenset({"history", "subscription-notification"})
MAX_EVENTS = 10_000


class MalformedNotification(ValueError):
    """The body is not a notification this endpoint can read (the message says why)."""


@dataclass(frozen=True)
class NotificationEvent:
    """One event of a notification: its number, focus and additional context."""

    number: int
    timestamp: datetime | None
    focus: Ref | None
    focus_version: str | None = None
    focus_resource: Resource | None = None
    interaction: str | None = None
    context: tuple[Ref, ...] = ()
    context_resources: dict[str, Resource] = field(default_factory=dict)


@dataclass(frozen=True)
class SubscriptionStatus:
    """The status part of a notification (or of a `$status` answer)."""

    subscription_id: str
    type: NotificationType
    status: str | None
    topic: str | None
    events_since_start: int | None
    events: tuple[NotificationEvent, ...]
    error: str | None = None


@dataclass(frozen=True)
class Notification:
    """A parsed notification Bundle."""

    status: SubscriptionStatus
    fmt: Literal["r4", "r4b"]

    @property
    def subscription_id(self) -> str:
        """The id of the Subscription the notification is about."""
        return self.status.subscription_id

    @property
    def type(self) -> NotificationType:
        """handshake, heartbeat, event-notification, query-status or query-event."""
        return self.status.type

    @property
    def events(self) -> tuple[NotificationEvent, ...]:
        """The events, in the order the Bundle lists them."""
        return self.status.events


def load_json(body: bytes) -> Any:
    """The body as JSON; `MalformedNotification` when it is not JSON."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedNotification("The body is not JSON.") from exc


def parse_notification(bundle: Any) -> Notification:
    """Parse a notification (or `$events`) Bundle; raises `MalformedNotification`."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise MalformedNotification("The body is not a FHIR Bundle.")
    if bundle.get("type") not in _BUNDLE_TYPES:
        raise MalformedNotification("A notification Bundle must be of type history.")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise MalformedNotification("The Bundle has no entries (the status must come first).")
    first = entries[0]
    resource = first.get("resource") if isinstance(first, dict) else None
    if not isinstance(resource, dict):
        raise MalformedNotification("The first entry carries no subscription status.")
    status, fmt = parse_status(resource)
    rest = [e for e in entries[1:] if isinstance(e, dict)]
    if len(rest) != len(entries) - 1:
        raise MalformedNotification("A Bundle entry is not an object.")
    events = _attach_entries(status.events, rest)
    return Notification(status=_replace_events(status, events), fmt=fmt)


def parse_status(resource: Resource) -> tuple[SubscriptionStatus, Literal["r4", "r4b"]]:
    """A status resource (R4 `Parameters` or R4B `SubscriptionStatus`) and its format."""
    kind = resource.get("resourceType")
    if kind == "Parameters":
        return _status_r4(resource), "r4"
    if kind == "SubscriptionStatus":
        return _status_r4b(resource), "r4b"
    raise MalformedNotification("The status must be a Parameters or a SubscriptionStatus.")


def _replace_events(
    status: SubscriptionStatus, events: tuple[NotificationEvent, ...]
) -> SubscriptionStatus:
    return SubscriptionStatus(
        subscription_id=status.subscription_id,
        type=status.type,
        status=status.status,
        topic=status.topic,
        events_since_start=status.events_since_start,
        events=events,
        error=status.error,
    )


def _number(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise MalformedNotification(f"{what} is not a number.")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    else:
        raise MalformedNotification(f"{what} is not a number.")
    if number < 0 or number > 2**63 - 1:
        raise MalformedNotification(f"{what} is out of range.")
    return number


def _subscription_id(reference: Any) -> str:
    ref = parse_reference(reference)
    if ref is None or ref.type != "Subscription":
        raise MalformedNotification("The status does not reference a Subscription.")
    return ref.id


def _kind(value: Any) -> NotificationType:
    if value not in _TYPES:
        raise MalformedNotification("The notification type is missing or unknown.")
    kind: NotificationType = value
    return kind


def _error_text(concepts: Any) -> str | None:
    for concept in as_list(concepts):
        if not isinstance(concept, dict):
            continue
        for coding in as_list(concept.get("coding")):
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                return str(coding["code"])
        if isinstance(concept.get("text"), str):
            return "error"
    return None


# -- R4: Parameters ------------------------------------------------------------------------


def _value(parameter: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in parameter:
            return parameter[name]
    return None


def _status_r4(resource: Resource) -> SubscriptionStatus:
    parameters = resource.get("parameter")
    if not isinstance(parameters, list):
        raise MalformedNotification("The status Parameters has no parameters.")
    values: dict[str, Any] = {}
    events: list[NotificationEvent] = []
    errors: list[Any] = []
    for parameter in parameters:
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise MalformedNotification("A status parameter has no name.")
        name = parameter["name"]
        if name == "subscription":
            value_ref = parameter.get("valueReference")
            values[name] = value_ref.get("reference") if isinstance(value_ref, dict) else None
        elif name == "topic":
            values[name] = _value(parameter, "valueCanonical", "valueUri")
        elif name in ("status", "type"):
            values[name] = parameter.get("valueCode")
        elif name == "events-since-subscription-start":
            values[name] = _value(
                parameter, "valueString", "valueInteger64", "valueUnsignedInt", "valueInteger"
            )
        elif name == "notification-event":
            events.append(_event_r4(parameter))
            if len(events) > MAX_EVENTS:
                raise MalformedNotification("Too many events in one notification.")
        elif name == "error":
            errors.append(parameter.get("valueCodeableConcept"))
    since = values.get("events-since-subscription-start")
    return SubscriptionStatus(
        subscription_id=_subscription_id(values.get("subscription")),
        type=_kind(values.get("type")),
        status=values.get("status") if isinstance(values.get("status"), str) else None,
        topic=values.get("topic") if isinstance(values.get("topic"), str) else None,
        events_since_start=None if since is None else _number(since, "events-since-start"),
        events=tuple(events),
        error=_error_text(errors),
    )


def _event_r4(parameter: dict[str, Any]) -> NotificationEvent:
    number: int | None = None
    timestamp: datetime | None = None
    focus: Ref | None = None
    context: list[Ref] = []
    for part in as_list(parameter.get("part")):
        if not isinstance(part, dict):
            raise MalformedNotification("A notification-event part is not an object.")
        name = part.get("name")
        if name == "event-number":
            number = _number(
                _value(part, "valueString", "valueInteger64", "valueUnsignedInt", "valueInteger"),
                "event-number",
            )
        elif name == "timestamp":
            timestamp = parse_instant(_value(part, "valueInstant", "valueDateTime"))
        elif name == "focus":
            focus = reference_of(part.get("valueReference"))
            if focus is None:
                raise MalformedNotification("An event focus is not a resource reference.")
        elif name == "additional-context":
            ref = reference_of(part.get("valueReference"))
            if ref is not None:
                context.append(ref)
    if number is None:
        raise MalformedNotification("An event has no event-number.")
    return NotificationEvent(
        number=number, timestamp=timestamp, focus=focus, context=tuple(context)
    )


# -- R4B: SubscriptionStatus -----------------------------------------------------------------


def _status_r4b(resource: Resource) -> SubscriptionStatus:
    events: list[NotificationEvent] = []
    for item in as_list(resource.get("notificationEvent")):
        if not isinstance(item, dict):
            raise MalformedNotification("A notificationEvent is not an object.")
        focus: Ref | None = None
        if "focus" in item:
            focus = reference_of(item.get("focus"))
            if focus is None:
                raise MalformedNotification("An event focus is not a resource reference.")
        context = [ref for ref in map(reference_of, as_list(item.get("additionalContext"))) if ref]
        events.append(
            NotificationEvent(
                number=_number(item.get("eventNumber"), "eventNumber"),
                timestamp=parse_instant(item.get("timestamp")),
                focus=focus,
                context=tuple(context),
            )
        )
        if len(events) > MAX_EVENTS:
            raise MalformedNotification("Too many events in one notification.")
    subscription = resource.get("subscription")
    since = resource.get("eventsSinceSubscriptionStart")
    topic = resource.get("topic")
    return SubscriptionStatus(
        subscription_id=_subscription_id(
            subscription.get("reference") if isinstance(subscription, dict) else None
        ),
        type=_kind(resource.get("type")),
        status=resource.get("status") if isinstance(resource.get("status"), str) else None,
        topic=topic if isinstance(topic, str) else None,
        events_since_start=(
            None if since is None else _number(since, "eventsSinceSubscriptionStart")
        ),
        events=tuple(events),
        error=_error_text(resource.get("error")),
    )


# -- entries ---------------------------------------------------------------------------------


@dataclass
class _Entry:
    ref: Ref | None
    resource: Resource | None
    version: str | None
    method: str | None
    used: bool = False


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _entry(raw: dict[str, Any]) -> _Entry:
    resource = raw.get("resource") if isinstance(raw.get("resource"), dict) else None
    ref = parse_reference(raw.get("fullUrl"))
    if ref is None and resource is not None:
        ref = parse_reference(f"{resource.get('resourceType')}/{resource.get('id')}")
    response = _object(raw.get("response"))
    request = _object(raw.get("request"))
    version = etag_version(response.get("etag"))
    if version is None and resource is not None:
        meta = resource.get("meta")
        if isinstance(meta, dict) and meta.get("versionId") not in (None, ""):
            version = str(meta["versionId"])
    method = request.get("method") if isinstance(request.get("method"), str) else None
    return _Entry(ref=ref, resource=resource, version=version, method=method)


def _take(entries: list[_Entry], start: int, ref: Ref) -> tuple[_Entry | None, int]:
    """The first unused entry for `ref` at or after `start` (else anywhere), and the cursor."""
    for index in range(start, len(entries)):
        entry = entries[index]
        if not entry.used and entry.ref is not None and entry.ref.key == ref.key:
            entry.used = True
            return entry, index + 1
    for entry in entries:
        if entry.ref is not None and entry.ref.key == ref.key:
            return entry, start
    return None, start


_INTERACTIONS = {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}


def _attach_entries(
    events: tuple[NotificationEvent, ...], raw_entries: list[dict[str, Any]]
) -> tuple[NotificationEvent, ...]:
    """Give each event its focus entry (version, interaction, resource) and its context.

    Entries come per event, focus first, in event order; two events about the same resource
    (two updates in one notification) have two focus entries with different ETags, so they
    are matched in order rather than by URL alone.
    """
    entries = [_entry(raw) for raw in raw_entries]
    cursor = 0
    attached: list[NotificationEvent] = []
    for event in events:
        if event.focus is None:
            attached.append(event)
            continue
        focus_entry, cursor = _take(entries, cursor, event.focus)
        context_resources: dict[str, Resource] = {}
        for ref in event.context:
            context_entry, cursor = _take(entries, cursor, ref)
            if context_entry is not None and context_entry.resource is not None:
                context_resources[ref.key] = context_entry.resource
        version = event.focus.version
        resource: Resource | None = None
        interaction: str | None = None
        if focus_entry is not None:
            version = focus_entry.version or version
            resource = focus_entry.resource
            interaction = _INTERACTIONS.get((focus_entry.method or "").upper())
        attached.append(
            NotificationEvent(
                number=event.number,
                timestamp=event.timestamp,
                focus=event.focus,
                focus_version=version,
                focus_resource=resource,
                interaction=interaction,
                context=event.context,
                context_resources=context_resources,
            )
        )
    return tuple(attached)


def status_resources(bundle: Any) -> list[SubscriptionStatus]:
    """The statuses of a `$status` answer (a searchset Bundle of status resources)."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise MalformedNotification("The $status answer is not a Bundle.")
    statuses: list[SubscriptionStatus] = []
    for entry in as_list(bundle.get("entry")):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") in (
            "Parameters",
            "SubscriptionStatus",
        ):
            statuses.append(parse_status(resource)[0])
    return statuses
