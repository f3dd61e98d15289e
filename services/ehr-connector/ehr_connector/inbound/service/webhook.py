"""The EHR's way in: the notification webhook of one running connector.

`Webhook.accept` takes a Subscription notification (handshake, heartbeat, event
notification) as the EHR POSTed it: the channel token, then the signature, the mutual-TLS
verdict of the terminator in front, or the channel header alone (`inbound_notification_auth`),
then replay, shape and topic checks; an event notification is processed before the answer
(`Processor`), a missed event schedules recovery. `accept_ping` takes a classic (criteria)
Subscription's empty POST, which only makes the connector search. The routes are in
`inbound/api.py`; the background work in `inbound/service/runtime.py`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from ehr_connector.ehr.errors import EhrError
from ehr_connector.inbound import store
from ehr_connector.inbound.domain.notifications import (
    MalformedNotification,
    Notification,
    load_json,
    parse_notification,
)
from ehr_connector.inbound.metrics import (
    HEARTBEAT_MISSED,
    NOTIFICATION_DELAY,
    NOTIFICATIONS,
    NOTIFICATIONS_REJECTED,
    set_subscription_status,
)
from ehr_connector.inbound.service.health import ProcessingHealth, failure_reason
from ehr_connector.inbound.service.pacing import LiveTraffic
from ehr_connector.inbound.service.processor import Processor
from ehr_connector.inbound.service.recovery import Recovery
from ehr_connector.inbound.service.signature import (
    SIGNATURE_HEADER,
    JwksCache,
    NotificationVerifier,
    SignatureRejected,
    VerifiedSignature,
)
from ehr_connector.inbound.service.subscriptions import SubscriptionManager
from ehr_connector.inbound.tables import InboundSubscription
from ehr_connector.settings import Settings
from servicekit.db import Database
from servicekit.errors import DependencyUnavailable
from servicekit.logging import get_logger

log = get_logger(__name__)
security_log = get_logger("ehr_connector.security")


@dataclass(frozen=True)
class WebhookAnswer:
    """What the webhook answers: 204 with no body when accepted (any 2xx is what the
    Subscriptions specifications ask; HAPI parses a 200's body as a Bundle and re-delivers
    when it is not one, so there is no body at all), an OperationOutcome otherwise."""

    status: int
    diagnostics: str
    headers: Mapping[str, str] = field(default_factory=dict)

    def outcome(self) -> dict[str, Any]:
        """The answer as an OperationOutcome."""
        ok = self.status < 400
        return {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information" if ok else "error",
                    "code": "informational" if ok else _ISSUE_CODES.get(self.status, "exception"),
                    "diagnostics": self.diagnostics,
                }
            ],
        }


_ISSUE_CODES = {400: "invalid", 401: "security", 404: "not-found", 503: "transient"}


@dataclass(frozen=True)
class _Touched:
    """A Subscription as a notification left it (read under its lock)."""

    topic: str
    highest: int  # the highest event number processed before this notification
    status: str | None  # the status the notification set, if any


def _mark_heard(
    row: InboundSubscription, status: str | None, events_since_start: int | None
) -> _Touched:
    """Record on the (locked) row that the EHR was heard from."""
    now = datetime.now(UTC)
    row.last_notification_at = now
    row.heartbeat_missed_since = None
    if status:
        row.status = status
    if events_since_start is not None:
        row.events_since_start = max(row.events_since_start, events_since_start)
    row.updated_at = now
    return _Touched(row.topic, row.highest_event_number, status)


def _touch_row(row: InboundSubscription, notification: Notification) -> _Touched:
    kind = notification.type
    status = "active" if kind == "handshake" else notification.status.status
    since = notification.status.events_since_start if kind != "event-notification" else None
    return _mark_heard(row, status, since)


class Webhook:
    """Verifies and handles what the EHR POSTs to the connector."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        http: httpx.AsyncClient,
        *,
        processor: Processor,
        manager: SubscriptionManager,
        recovery: Recovery,
        health: ProcessingHealth,
        heard_from: Callable[[str], None],
        live: LiveTraffic | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.http = http
        self.processor = processor
        self.manager = manager
        self.recovery = recovery
        self.health = health
        # Told the topic of every Subscription heard from (its heartbeat is no longer missed).
        self._heard_from = heard_from
        # Told of every live event notification: a running back-fill yields to them.
        self.live = live or LiveTraffic()
        self.verifier = NotificationVerifier(
            JwksCache(http, self._jwks_url),
            endpoint=settings.inbound_webhook_url,
            max_age_s=settings.inbound_signature_max_age_s,
        )

    async def _jwks_url(self) -> str:
        if self.settings.inbound_jwks_url:
            return self.settings.inbound_jwks_url
        base = self.settings.ehr_base_url.rstrip("/")
        parts = httpx.URL(base)
        origin = f"{parts.scheme}://{parts.netloc.decode()}"
        # SMART discovery lives under the FHIR base; some servers answer only at the root.
        response = await self.http.get(f"{base}/.well-known/smart-configuration")
        if response.status_code == 404:
            response = await self.http.get(f"{origin}/.well-known/smart-configuration")
        response.raise_for_status()
        url = response.json().get("jwks_uri")
        if not isinstance(url, str) or not url:
            raise ValueError("the EHR's SMART configuration names no jwks_uri")
        return url

    def _reject(self, status: int, reason: str, diagnostics: str, **ids: Any) -> WebhookAnswer:
        NOTIFICATIONS_REJECTED.labels(reason).inc()
        # `rejection`, not `reason`: the PHI filter blanks any field named like free text.
        if status < 500:
            security_log.warning(
                "security.notification_rejected", rejection=reason, status=status, **ids
            )
        else:
            log.info("inbound.notification_deferred", rejection=reason, **ids)
        return WebhookAnswer(status, diagnostics)

    def _token_ok(self, authorization: str | None) -> bool:
        expected = f"Bearer {self.settings.inbound_webhook_token}"
        return authorization is not None and secrets.compare_digest(
            authorization.strip().encode(), expected.encode()
        )

    def notification_auth(self) -> str:
        """signature, channel-header or mtls (the channel token is required in every mode)."""
        mode = self.settings.inbound_notification_auth
        if mode == "signature" and not self.settings.inbound_require_signature:
            return "channel-header"
        return mode

    def _mtls_ok(self, headers: Mapping[str, str]) -> bool:
        # The TLS terminator in front of the connector verified the client certificate and
        # says so in headers it sets itself (and strips from what clients send).
        s = self.settings
        if headers.get(s.inbound_mtls_header.lower()) != "SUCCESS":
            return False
        subject = headers.get(s.inbound_mtls_subject_header.lower(), "")
        return not s.inbound_mtls_subject or secrets.compare_digest(
            subject.encode(), s.inbound_mtls_subject.encode()
        )

    async def accept(self, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
        """Verify, parse and handle one notification POSTed by the EHR."""
        if not self._token_ok(headers.get("authorization")):
            return self._reject(401, "bad_token", "The channel token is missing or wrong.")
        ids: dict[str, Any] = {}
        try:
            return await self._accept(headers, body, ids)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not the notification's fault (database away, EHR unreadable, or a bug): the
            # EHR delivers it again; readiness says so until the Subscription is in order.
            reason = failure_reason(exc)
            self.health.failed(ids.get("subscription_id"), reason)
            log.error(
                "inbound.notification_failed",
                subscription_id=ids.get("subscription_id"),
                failure=reason,
                error=type(exc).__name__,
            )
            return WebhookAnswer(
                503, "The notification could not be processed; retry.", {"Retry-After": "2"}
            )

    async def _accept(
        self, headers: Mapping[str, str], body: bytes, ids: dict[str, Any]
    ) -> WebhookAnswer:
        received = datetime.now(UTC)
        mode = self.notification_auth()
        if mode == "mtls" and not self._mtls_ok(headers):
            return self._reject(401, "no_client_certificate", "A verified client is required.")
        signature: VerifiedSignature | None = None
        if mode == "signature":
            try:
                signature = await self.verifier.verify(headers.get(SIGNATURE_HEADER.lower()), body)
            except SignatureRejected as exc:
                if exc.reason == "jwks_unavailable":
                    return self._reject(503, exc.reason, exc.detail)
                return self._reject(401, exc.reason, exc.detail)
            ids.update(kid=signature.kid, jti=signature.jti)
        try:
            notification = parse_notification(load_json(body))
        except MalformedNotification as exc:
            if signature is not None:
                # Remembered even so: the same signed body is refused as a replay.
                async with self.db.transaction() as session:
                    await store.remember_jti(session, signature.jti, datetime.now(UTC))
            return self._reject(400, "malformed", str(exc), **ids)
        ids["subscription_id"] = notification.subscription_id
        # The signature's id, the Subscription's checks, its "heard from" and which of the
        # events are done: one transaction (four, each a round trip or more, were a third of
        # the time from the EHR's POST to the event on Kafka).
        async with self.db.transaction() as session:
            if signature is not None and not await store.remember_jti(
                session, signature.jti, datetime.now(UTC)
            ):
                return self._reject(401, "replay", "This signature was already used.", **ids)
            row = await store.subscription_by_id(session, notification.subscription_id, lock=True)
            if row is None:
                return self._reject(404, "unknown_subscription", "Unknown Subscription.", **ids)
            if notification.status.topic and notification.status.topic.split("|")[0] != row.topic:
                return self._reject(
                    400, "wrong_topic", "The topic is not this Subscription's.", **ids
                )
            if notification.type not in ("handshake", "heartbeat", "event-notification"):
                return self._reject(400, "not_a_notification", "Not a notification type.", **ids)
            touched = _touch_row(row, notification)
            done: set[int] | None = None
            if notification.type == "event-notification":
                numbers = (e.number for e in notification.events)
                done = await store.processed_numbers(session, row, numbers)
        self._heard(touched)
        NOTIFICATIONS.labels(notification.type).inc()
        if notification.type == "event-notification":
            self.live.seen()
        for event in notification.events:
            if event.timestamp is not None:
                delay = (received - event.timestamp).total_seconds()
                NOTIFICATION_DELAY.labels(touched.topic).observe(max(0.0, delay))
        try:
            return await self._handle(notification, touched, done)
        except (DependencyUnavailable, EhrError) as exc:
            # Not the notification's fault: the EHR retries it later.
            self.health.failed(notification.subscription_id, failure_reason(exc))
            NOTIFICATIONS_REJECTED.labels("ehr_unavailable").inc()
            log.warning(
                "inbound.notification_deferred",
                subscription_id=notification.subscription_id,
                error=type(exc).__name__,
            )
            return WebhookAnswer(503, "The EHR could not be read; retry.", {"Retry-After": "2"})

    async def accept_ping(self, headers: Mapping[str, str], resource_type: str) -> WebhookAnswer:
        """A classic (criteria) Subscription's notification: an empty POST to the endpoint
        of its type. It carries no data, so nothing in it is trusted: it only makes the
        connector search that type with its own credentials (no signature is possible)."""
        if not self._token_ok(headers.get("authorization")):
            return self._reject(401, "bad_token", "The channel token is missing or wrong.")
        if self.notification_auth() == "mtls" and not self._mtls_ok(headers):
            return self._reject(401, "no_client_certificate", "A verified client is required.")
        topic = (await self.manager.targets()).get(resource_type)
        async with self.db.sessions() as session:
            row = await store.subscription_for_topic(session, topic) if topic else None
            subscription_id = row.subscription_id if row is not None else None
        if subscription_id is None:
            return self._reject(404, "unknown_subscription", "No Subscription for this type.")
        NOTIFICATIONS.labels("criteria-ping").inc()
        await self._touch(subscription_id)
        self.recovery.schedule_search(subscription_id)
        return WebhookAnswer(204, "Search scheduled.")

    async def _handle(
        self, notification: Notification, touched: _Touched, done: set[int] | None
    ) -> WebhookAnswer:
        subscription_id = notification.subscription_id
        kind = notification.type
        since = notification.status.events_since_start if kind != "event-notification" else None
        highest = touched.highest
        if kind == "handshake":
            self.health.processed(subscription_id)
            log.info("inbound.handshake", subscription_id=subscription_id)
            return WebhookAnswer(204, "Handshake accepted.")
        if kind == "heartbeat":
            if (since or 0) > highest:
                # Events were missed (perhaps ours failed): in order once recovered.
                self.recovery.schedule(subscription_id, grace=False)
            else:
                self.health.processed(subscription_id)
            return WebhookAnswer(204, "Heartbeat accepted.")
        summary = await self.processor.process_events(
            subscription_id, notification.events, live=True, done=done
        )
        self.health.processed(subscription_id)
        numbers = [e.number for e in notification.events]
        log.info(
            "inbound.notification_processed",
            subscription_id=subscription_id,
            first=min(numbers, default=None),
            last=max(numbers, default=None),
            outcomes=summary.outcomes,
        )
        if numbers:
            # The commit knows (no read after it, while the EHR waits for our answer to
            # send the next notification); a read only when nothing was committed.
            gap = summary.has_gap(max(numbers))
            if gap is None:
                gap = await self._has_gap(subscription_id, max(numbers))
            if gap:
                self.recovery.schedule(subscription_id)
        return WebhookAnswer(204, "Notification processed.")

    async def _touch(self, subscription_id: str) -> None:
        async with self.db.transaction() as session:
            row = await store.subscription_by_id(session, subscription_id, lock=True)
            if row is None:
                return
            touched = _mark_heard(row, None, None)
        self._heard(touched)

    def _heard(self, touched: _Touched) -> None:
        """After the commit: the Subscription's gauges and the heartbeat monitor."""
        HEARTBEAT_MISSED.labels(touched.topic).set(0)
        self._heard_from(touched.topic)
        if touched.status:
            set_subscription_status(touched.topic, touched.status)

    async def _has_gap(self, subscription_id: str, upto: int) -> bool:
        async with self.db.reads() as session:
            row = await store.subscription_by_id(session, subscription_id)
            if row is None:
                return False
            return await store.has_gap(session, row, upto)
