"""The connector's Subscriptions on the EHR: ensure one per topic, re-activate, ask status.

`ensure` makes the EHR hold exactly one active Subscription per configured topic pointing
at our webhook: it adopts ones the EHR already has for our endpoint (a restart with an
empty database), creates missing ones, updates ones whose channel differs from settings,
re-activates ones in `error` or `off`, and switches off extra copies for the same topic.

A new Subscription is created `off` and only then requested: so its id is stored before
the EHR's handshake arrives, and the handshake finds a known Subscription.

Real servers differ (see `ehr_connector.ehr.profile`): topic-based Subscriptions carry a
`backport-filter-criteria` per topic (HAPI refuses to activate one without); the search that
finds our own Subscriptions bypasses server caches (HAPI serves a repeated search from a
cache for about a minute, so a retry would otherwise create another copy); every topic is
tried and reported on its own; Subscriptions we own (our tag, our endpoint) for topics no
longer configured are switched off; an EHR without `$status` is simply not asked, and one
that sends no handshake has its Subscription's status read back instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ehr_connector.ehr.errors import (
    EhrConflict,
    EhrError,
    EhrGone,
    EhrNotFound,
    EhrRejected,
    EhrUnavailable,
)
from ehr_connector.ehr.port import EhrPort, Versioned
from ehr_connector.ehr.profile import EhrProfile, detect
from ehr_connector.inbound import store
from ehr_connector.inbound.domain.fhir_values import Resource, as_list
from ehr_connector.inbound.domain.notifications import (
    MalformedNotification,
    SubscriptionStatus,
    status_resources,
)
from ehr_connector.inbound.metrics import SUBSCRIPTION_REACTIVATIONS, set_subscription_status
from ehr_connector.inbound.tables import InboundSubscription
from ehr_connector.settings import Settings
from servicekit.db import Database
from servicekit.logging import get_logger

log = get_logger(__name__)

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
_HEARTBEAT = BACKPORT + "backport-heartbeat-period"
_TIMEOUT = BACKPORT + "backport-timeout"
_MAX_COUNT = BACKPORT + "backport-max-count"
_CONTENT = BACKPORT + "backport-payload-content"
_FILTER = BACKPORT + "backport-filter-criteria"
_STATUS_WRITE_ATTEMPTS = 3
# Marks the Subscriptions this connector manages (R4 Subscription has no identifier).
OWNER_TAG = {
    "system": "http://portal.example.org/fhir/CodeSystem/subscription-owner",
    "code": "ehr-connector",
}
# Reading back a Subscription's status when the EHR sends no handshake: bounded back-off.
_ACTIVATION_READS = (0.2, 0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class EnsureResult:
    """What `ensure` did for one topic."""

    topic: str
    subscription_id: str | None
    action: str
    status: str | None
    error: str | None = None


def _channel_extension(resource: Resource, url: str) -> Any:
    channel = resource.get("channel")
    if not isinstance(channel, dict):
        return None
    for extension in as_list(channel.get("extension")):
        if isinstance(extension, dict) and extension.get("url") == url:
            for key, value in extension.items():
                if key.startswith("value"):
                    return value
    return None


def payload_content(resource: Resource) -> str | None:
    """The backport payload content of a Subscription (`id-only`, `full-resource`...)."""
    channel = resource.get("channel")
    payload = channel.get("_payload") if isinstance(channel, dict) else None
    for extension in as_list(payload.get("extension") if isinstance(payload, dict) else None):
        if isinstance(extension, dict) and extension.get("url") == _CONTENT:
            value = extension.get("valueCode")
            return value if isinstance(value, str) else None
    return None


def filter_criteria(resource: Resource) -> list[str]:
    """The `backport-filter-criteria` values of a Subscription's `criteria`."""
    element = resource.get("_criteria")
    extensions = as_list(element.get("extension") if isinstance(element, dict) else None)
    return [
        str(e.get("valueString"))
        for e in extensions
        if isinstance(e, dict) and e.get("url") == _FILTER
    ]


def owned(resource: Resource) -> bool:
    """Whether a Subscription carries the connector's owner tag."""
    meta = resource.get("meta")
    tags = as_list(meta.get("tag") if isinstance(meta, dict) else None)
    return any(
        isinstance(t, dict)
        and t.get("system") == OWNER_TAG["system"]
        and t.get("code") == OWNER_TAG["code"]
        for t in tags
    )


def endpoint_of(resource: Resource) -> str | None:
    """`channel.endpoint` of a Subscription."""
    channel = resource.get("channel")
    endpoint = channel.get("endpoint") if isinstance(channel, dict) else None
    return endpoint if isinstance(endpoint, str) else None


class SubscriptionManager:
    """Keeps the EHR's Subscriptions as settings describe them; records them in our table."""

    def __init__(self, settings: Settings, db: Database, ehr: EhrPort) -> None:
        self.settings = settings
        self.db = db
        self.ehr = ehr
        self._lock = asyncio.Lock()
        self._profile: EhrProfile | None = None

    async def profile(self) -> EhrProfile:
        """The EHR's profile (its CapabilityStatement read once, then settings)."""
        if self._profile is None:
            self._profile = detect(await self.ehr.capabilities(), self.settings)
            log.info("inbound.ehr_profile", **self._profile.describe())
        return self._profile

    async def targets(self) -> dict[str, str]:
        """Focus type → what its Subscription's `criteria` holds: the topic canonical, or
        (criteria style, for servers without topics) a classic R4 search criteria."""
        return self._targets_of(await self.profile())

    def known_targets(self) -> dict[str, str] | None:
        """`targets()` without asking the EHR: None until its profile has been read."""
        return None if self._profile is None else self._targets_of(self._profile)

    def _targets_of(self, profile: EhrProfile) -> dict[str, str]:
        if profile.subscription_style == "criteria":
            return {
                t: self.settings.inbound_criteria.get(t, f"{t}?")
                for t in self.settings.inbound_topics
            }
        return dict(self.settings.inbound_topics)

    def criteria_endpoint(self, resource_type: str) -> str:
        """Where a classic Subscription's empty notification goes: the type is in the path,
        since an empty POST names neither the Subscription nor the resource."""
        return f"{self.settings.inbound_webhook_url.rstrip('/')}/criteria/{resource_type}"

    def desired_criteria(self, criteria: str, resource_type: str, status: str) -> Resource:
        """A classic R4 Subscription: rest-hook with no payload (the EHR only says that
        something matching changed; the connector searches by `_lastUpdated`)."""
        s = self.settings
        return {
            "resourceType": "Subscription",
            "meta": {"tag": [dict(OWNER_TAG)]},
            "status": status,
            "reason": f"Patient portal: {resource_type} changes for linked patients",
            "criteria": criteria,
            "channel": {
                "type": "rest-hook",
                "endpoint": self.criteria_endpoint(resource_type),
                "header": [f"Authorization: Bearer {s.inbound_webhook_token}"],
            },
        }

    def _matches_criteria(self, resource: Resource, resource_type: str) -> bool:
        channel = resource.get("channel")
        if not isinstance(channel, dict):
            return False
        return (
            owned(resource)
            and channel.get("type") == "rest-hook"
            and endpoint_of(resource) == self.criteria_endpoint(resource_type)
            and as_list(channel.get("header"))
            == [f"Authorization: Bearer {self.settings.inbound_webhook_token}"]
            and channel.get("payload") in (None, "")
        )

    async def _desired(self, topic: str, resource_type: str, status: str) -> Resource:
        if (await self.profile()).subscription_style == "criteria":
            return self.desired_criteria(topic, resource_type, status)
        return self.desired(topic, resource_type, status)

    async def _matches(self, resource: Resource, resource_type: str) -> bool:
        if (await self.profile()).subscription_style == "criteria":
            return self._matches_criteria(resource, resource_type)
        return self.matches_settings(resource, resource_type)

    def filter_for(self, resource_type: str) -> str:
        """The topic's `backport-filter-criteria`: configured, else server-wide."""
        return self.settings.inbound_filter_criteria.get(resource_type, f"{resource_type}?")

    # -- the desired shape ----------------------------------------------------------------

    def desired(self, topic: str, resource_type: str, status: str) -> Resource:
        """The Subscription we want for `topic` (backport profile, rest-hook to us)."""
        s = self.settings
        return {
            "resourceType": "Subscription",
            "meta": {"profile": [BACKPORT + "backport-subscription"], "tag": [dict(OWNER_TAG)]},
            "status": status,
            "reason": f"Patient portal: {resource_type} changes for linked patients",
            "criteria": topic,
            "_criteria": {
                "extension": [{"url": _FILTER, "valueString": self.filter_for(resource_type)}]
            },
            "channel": {
                "type": "rest-hook",
                "endpoint": s.inbound_webhook_url,
                "header": [f"Authorization: Bearer {s.inbound_webhook_token}"],
                "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": _CONTENT, "valueCode": s.inbound_payload}]},
                "extension": [
                    {"url": _HEARTBEAT, "valueUnsignedInt": s.inbound_heartbeat_period_s},
                    {"url": _TIMEOUT, "valueUnsignedInt": s.inbound_notification_timeout_s},
                    {"url": _MAX_COUNT, "valuePositiveInt": s.inbound_max_count},
                ],
            },
        }

    def matches_settings(self, resource: Resource, resource_type: str) -> bool:
        """Whether an EHR Subscription's filter and channel are what settings ask for."""
        s = self.settings
        channel = resource.get("channel")
        if not isinstance(channel, dict):
            return False
        return (
            filter_criteria(resource) == [self.filter_for(resource_type)]
            and owned(resource)
            and channel.get("type") == "rest-hook"
            and endpoint_of(resource) == s.inbound_webhook_url
            and as_list(channel.get("header"))
            == [f"Authorization: Bearer {s.inbound_webhook_token}"]
            and payload_content(resource) == s.inbound_payload
            and _channel_extension(resource, _HEARTBEAT) == s.inbound_heartbeat_period_s
            and _channel_extension(resource, _TIMEOUT) == s.inbound_notification_timeout_s
            and _channel_extension(resource, _MAX_COUNT) == s.inbound_max_count
        )

    # -- ensure ---------------------------------------------------------------------------

    async def ensure(self) -> list[EnsureResult]:
        """Make the EHR hold one active Subscription per topic; record them."""
        async with self._lock:
            ours = await self._ehr_subscriptions()
            results = []
            for resource_type, topic in sorted((await self.targets()).items()):
                try:
                    results.append(await self._ensure_topic(topic, resource_type, ours))
                except EhrUnavailable:
                    # The EHR is down (or the circuit open): the caller backs off and retries.
                    raise
                except EhrError as exc:
                    # One topic the EHR refuses (unknown topic, bad filter) must not keep
                    # the others from being ensured; each is reported on its own.
                    log.warning(
                        "inbound.subscription_ensure_failed",
                        topic=topic,
                        error=type(exc).__name__,
                        status=getattr(exc, "status", None),
                    )
                    results.append(EnsureResult(topic, None, "failed", None, _reason(exc)))
            results += await self._clean_orphans(ours)
            return results

    async def _clean_orphans(self, ours: Sequence[Resource]) -> list[EnsureResult]:
        """Switch off Subscriptions we own for topics that are no longer configured."""
        topics = set((await self.targets()).values())
        cleaned: list[EnsureResult] = []
        for resource in ours:
            if not owned(resource) or resource.get("criteria") in topics:
                continue
            if resource.get("status") == "off":
                continue
            try:
                await self._switch_off(resource)
            except EhrUnavailable:
                raise
            except EhrError as exc:
                cleaned.append(
                    EnsureResult(
                        str(resource.get("criteria")),
                        str(resource.get("id")),
                        "failed",
                        str(resource.get("status")),
                        _reason(exc),
                    )
                )
                continue
            cleaned.append(
                EnsureResult(str(resource.get("criteria")), str(resource.get("id")), "off", "off")
            )
        return cleaned

    async def _ehr_subscriptions(self) -> list[Resource]:
        """Subscriptions on the EHR that deliver to our endpoint (or, classic ones, below it)."""
        found: list[Resource] = []
        webhook = self.settings.inbound_webhook_url
        criteria_style = (await self.profile()).subscription_style == "criteria"
        # `url` is a uri search: exact match, so the classic endpoints (one per type) are
        # found by `url:below`.
        params = [("url:below" if criteria_style else "url", webhook)]
        async for page in self.ehr.pages("Subscription", params, count=100):
            found += [
                r
                for r in page.matches
                if endpoint_of(r) == webhook
                or (criteria_style and (endpoint_of(r) or "").startswith(webhook + "/criteria/"))
            ]
        return found

    async def _ensure_topic(
        self, topic: str, resource_type: str, ours: Sequence[Resource]
    ) -> EnsureResult:
        async with self.db.sessions() as session:
            row = await store.subscription_for_topic(session, topic)
            known_id = row.subscription_id if row is not None else None
        candidates = [r for r in ours if r.get("criteria") == topic]
        chosen = next((r for r in candidates if r.get("id") == known_id), None)
        action = "ok"
        if chosen is None and candidates:
            # Prefer a working one; ties broken by id so replicas agree.
            candidates.sort(key=lambda r: (r.get("status") != "active", str(r.get("id"))))
            chosen = candidates[0]
            action = "adopted"
        for extra in candidates:
            if chosen is not None and extra.get("id") != chosen.get("id"):
                await self._switch_off(extra)
        if chosen is None:
            return await self._create(topic, resource_type)
        subscription_id = str(chosen["id"])
        if action == "adopted":
            # What an earlier database processed is unknown: start from the EHR's count (the
            # back-fill and the _lastUpdated recovery are the tools for older history).
            current = await self._ehr_status(subscription_id)
            start_at = current.events_since_start if current is not None else None
            await self._record(
                topic, resource_type, subscription_id, str(chosen.get("status")), start_at or 0
            )
        status = str(chosen.get("status"))
        if not await self._matches(chosen, resource_type):
            await self._request(
                chosen, await self._desired(topic, resource_type, "requested"), subscription_id
            )
            action, status = "updated", "requested"
        elif status in ("error", "off"):
            await self._request(chosen, {**chosen, "status": "requested"}, subscription_id)
            SUBSCRIPTION_REACTIVATIONS.labels(topic, "reactivated").inc()
            action, status = "reactivated", "requested"
        if status == "requested":
            status = await self._settled(subscription_id)
        else:
            await self._set_status(subscription_id, status)
        log.info(
            "inbound.subscription_ensured",
            topic=topic,
            subscription_id=subscription_id,
            action=action,
            status=status,
        )
        return EnsureResult(topic, subscription_id, action, status)

    async def _create(self, topic: str, resource_type: str) -> EnsureResult:
        created = await self.ehr.create(await self._desired(topic, resource_type, "off"))
        subscription_id = created.id
        # Recorded (as requested: it is about to be) before the EHR is asked to activate it,
        # so that the handshake finds its row.
        await self._record(topic, resource_type, subscription_id, "requested")
        await self._put(created.resource, {**created.resource, "status": "requested"})
        status = await self._settled(subscription_id)
        SUBSCRIPTION_REACTIVATIONS.labels(topic, "created").inc()
        log.info("inbound.subscription_created", topic=topic, subscription_id=subscription_id)
        return EnsureResult(topic, subscription_id, "created", status)

    async def _request(self, current: Resource, wanted: Resource, subscription_id: str) -> None:
        """Ask the EHR to (re)activate a Subscription, recording `requested` first: the
        handshake the request triggers may be handled before the update returns, and its
        `active` must not be overwritten."""
        await self._set_status(subscription_id, "requested")
        await self._put(current, wanted)

    async def _settled(self, subscription_id: str) -> str:
        """The status of a Subscription just requested: with a handshake, what the webhook
        has recorded (it changes the row itself when the handshake comes; writing here
        could overwrite it); without one, the EHR's, read back and recorded."""
        if (await self.profile()).sends_handshake:
            async with self.db.sessions() as session:
                row = await store.subscription_by_id(session, subscription_id)
                return row.status if row is not None else "requested"
        status = await self._read_back(subscription_id, "requested")
        await self._set_status(subscription_id, status)
        return status

    async def _read_back(self, subscription_id: str, status: str) -> str:
        """The status the EHR gave a requested Subscription, when no handshake will say.

        With a handshake the webhook learns of the activation; without one (HAPI), the
        Subscription is read a few times with growing pauses until it leaves `requested`.
        """
        if (await self.profile()).sends_handshake:
            return status
        for pause in _ACTIVATION_READS:
            await asyncio.sleep(pause)
            current = await self.ehr.read("Subscription", subscription_id)
            status = str(current.resource.get("status"))
            if status != "requested":
                break
        return status

    async def _record(
        self,
        topic: str,
        resource_type: str,
        subscription_id: str,
        status: str,
        start_at: int = 0,
    ) -> None:
        """Store (or replace) the topic's Subscription row; a new id starts at `start_at`."""
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            row = await store.subscription_for_topic(session, topic)
            if row is None:
                session.add(
                    InboundSubscription(
                        topic=topic,
                        subscription_id=subscription_id,
                        resource_type=resource_type,
                        status=status,
                        payload=self.settings.inbound_payload,
                        heartbeat_period_s=self.settings.inbound_heartbeat_period_s,
                        last_event_number=start_at,
                        highest_event_number=start_at,
                        events_since_start=start_at,
                        created_at=now,
                        updated_at=now,
                    )
                )
                return
            if row.subscription_id != subscription_id:
                await store.forget_subscription_events(session, row.subscription_id)
                row.subscription_id = subscription_id
                row.last_event_number = row.highest_event_number = start_at
                row.events_since_start = start_at
                row.last_notification_at = row.last_event_at = None
                row.heartbeat_missed_since = None
                row.created_at = now
            row.resource_type = resource_type
            row.status = status
            row.payload = self.settings.inbound_payload
            row.heartbeat_period_s = self.settings.inbound_heartbeat_period_s
            row.updated_at = now

    async def _put(self, current: Resource, wanted: Resource) -> Versioned:
        """Update a Subscription from the version we read, re-reading on a conflict."""
        subscription_id = str(current["id"])
        body = {**wanted, "id": subscription_id}
        version = str((current.get("meta") or {}).get("versionId") or "") or None
        for attempt in range(1, _STATUS_WRITE_ATTEMPTS + 1):
            try:
                return await self.ehr.update(body, if_match=version)
            except EhrConflict:
                if attempt == _STATUS_WRITE_ATTEMPTS:
                    raise
                fresh = await self.ehr.read("Subscription", subscription_id)
                version = fresh.version_id or None
                if wanted.get("criteria") == fresh.resource.get("criteria"):
                    body = {**fresh.resource, **wanted, "id": subscription_id}
        raise AssertionError("unreachable")

    async def _switch_off(self, resource: Resource) -> None:
        if resource.get("status") == "off":
            return
        await self._put(resource, {**resource, "status": "off"})
        log.info("inbound.subscription_extra_off", subscription_id=resource.get("id"))

    async def _set_status(self, subscription_id: str, status: str) -> None:
        async with self.db.transaction() as session:
            row = await store.subscription_by_id(session, subscription_id)
            if row is not None:
                row.status = status
                row.updated_at = datetime.now(UTC)
                set_subscription_status(row.topic, status)

    # -- status and re-activation ---------------------------------------------------------

    async def status(self, subscription_id: str) -> SubscriptionStatus | None:
        """The EHR's `$status` of a Subscription (None if the EHR no longer has it); what it
        says is recorded on our row."""
        found = await self._ehr_status(subscription_id)
        if found is not None:
            await self.note_status(subscription_id, found.status, found.events_since_start)
        return found

    async def _ehr_status(self, subscription_id: str) -> SubscriptionStatus | None:
        if not (await self.profile()).has_status:
            return None
        try:
            bundle = await self.ehr.subscription_status(subscription_id)
        except (EhrNotFound, EhrGone):
            return None
        except EhrRejected as exc:
            # Advertised but refused (or the override is wrong): no status, not a failure.
            log.warning("inbound.status_operation_refused", status=exc.status)
            return None
        try:
            statuses = status_resources(bundle)
        except MalformedNotification:
            return None
        return next((s for s in statuses if s.subscription_id == subscription_id), None)

    async def note_status(
        self, subscription_id: str, status: str | None, events_since_start: int | None
    ) -> InboundSubscription | None:
        """Record what the EHR says about a Subscription; returns the updated row."""
        async with self.db.transaction() as session:
            row = await store.subscription_by_id(session, subscription_id, lock=True)
            if row is None:
                return None
            if status:
                row.status = status
                set_subscription_status(row.topic, status)
            if events_since_start is not None:
                row.events_since_start = max(row.events_since_start, events_since_start)
            row.updated_at = datetime.now(UTC)
            session.expunge(row)
            return row

    async def reactivate(self, subscription_id: str) -> bool:
        """Request a Subscription in `error` (or `off`) again; False if it is gone."""
        try:
            current = await self.ehr.read("Subscription", subscription_id)
        except (EhrNotFound, EhrGone):
            return False
        if current.resource.get("status") in ("active", "requested"):
            return True
        await self._request(
            current.resource, {**current.resource, "status": "requested"}, subscription_id
        )
        async with self.db.sessions() as session:
            row = await store.subscription_by_id(session, subscription_id)
            topic = row.topic if row is not None else "unknown"
        SUBSCRIPTION_REACTIVATIONS.labels(topic, "reactivated").inc()
        log.info("inbound.subscription_reactivated", subscription_id=subscription_id)
        return True


def _reason(exc: EhrError) -> str:
    """A short, PHI-free reason for an ops answer: the error type and HTTP status."""
    status = getattr(exc, "status", None)
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")
