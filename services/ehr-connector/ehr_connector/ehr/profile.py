"""What the connector knows about one EHR: detected from its CapabilityStatement, overridable.

EHRs differ in what they implement of the Subscriptions Backport IG and of SMART. The
connector asks `GET /metadata` once and fills what settings leave open:

- topic-based Subscriptions: advertised by the backport Subscription profile in
  `Subscription.supportedProfile` or the `capabilitystatement-subscriptiontopic-canonical`
  extension; otherwise classic criteria-based Subscriptions;
- `Subscription/$status` and `$events`: listed as operations of Subscription;
- handshakes and heartbeats: no CapabilityStatement element says so; an EHR that advertises
  the Backport IG is taken to send them (the IG asks for both), any other not.

Missing capabilities degrade with a stated cost (see the service README's table): no
`$status` means the connector trusts the event numbers it received and recovers trailing
gaps by a scheduled `_lastUpdated` search; no heartbeats means periodic reconciliation
instead of heartbeat alarms; no handshake means the connector reads the Subscription's
status back instead of waiting to be told.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ehr_connector.settings import Settings

BACKPORT_SUBSCRIPTION_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"
)
_TOPIC_CANONICAL_EXT = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    "capabilitystatement-subscriptiontopic-canonical"
)
_BACKPORT_SERVER = (
    "http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server"
)

SubscriptionStyle = Literal["backport-topic", "criteria"]


@dataclass(frozen=True)
class EhrProfile:
    """The EHR's capabilities as the connector uses them."""

    subscription_style: SubscriptionStyle
    has_status: bool
    has_events: bool
    sends_heartbeats: bool
    sends_handshake: bool

    def describe(self) -> dict[str, Any]:
        """For logs and the ops API."""
        return {
            "subscription_style": self.subscription_style,
            "status_operation": self.has_status,
            "events_operation": self.has_events,
            "heartbeats": self.sends_heartbeats,
            "handshake": self.sends_handshake,
        }


def _subscription_entry(capabilities: dict[str, Any]) -> dict[str, Any]:
    for rest in capabilities.get("rest") or []:
        if not isinstance(rest, dict):
            continue
        for resource in rest.get("resource") or []:
            if isinstance(resource, dict) and resource.get("type") == "Subscription":
                return resource
    return {}


def _rest_extensions(capabilities: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for rest in capabilities.get("rest") or []:
        if isinstance(rest, dict):
            found += [e for e in rest.get("extension") or [] if isinstance(e, dict)]
    return found


def _operations(entry: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for operation in entry.get("operation") or []:
        if not isinstance(operation, dict):
            continue
        name = str(operation.get("name") or "").lstrip("$")
        definition = str(operation.get("definition") or "")
        names.add(name)
        # Some servers name operations freely; the definition's canonical is unambiguous.
        if definition.endswith("backport-subscription-status"):
            names.add("status")
        if definition.endswith("backport-subscription-events"):
            names.add("events")
    return names


def advertises_backport(capabilities: dict[str, Any]) -> bool:
    """Whether the CapabilityStatement claims the Subscriptions Backport IG."""
    entry = _subscription_entry(capabilities)
    profiles = [str(p) for p in entry.get("supportedProfile") or []]
    instantiates = [str(i) for i in capabilities.get("instantiates") or []]
    return (
        BACKPORT_SUBSCRIPTION_PROFILE in profiles
        or any(i.split("|")[0] == _BACKPORT_SERVER for i in instantiates)
        or any(e.get("url") == _TOPIC_CANONICAL_EXT for e in _rest_extensions(capabilities))
    )


def detect(capabilities: dict[str, Any], settings: Settings) -> EhrProfile:
    """The profile of an EHR: its CapabilityStatement, then the settings' overrides."""
    backport = advertises_backport(capabilities)
    operations = _operations(_subscription_entry(capabilities))

    def pick(override: bool | None, detected: bool) -> bool:
        return detected if override is None else override

    style: SubscriptionStyle
    if settings.ehr_subscription_style == "auto":
        style = "backport-topic" if backport else "criteria"
    else:
        style = settings.ehr_subscription_style
    return EhrProfile(
        subscription_style=style,
        has_status=pick(settings.ehr_supports_status, "status" in operations),
        has_events=pick(settings.ehr_supports_events, "events" in operations),
        sends_heartbeats=pick(settings.ehr_sends_heartbeats, backport),
        sends_handshake=pick(settings.ehr_sends_handshake, backport),
    )
