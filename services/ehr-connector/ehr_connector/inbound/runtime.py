"""The inbound side of one running connector: its parts, background tasks and webhook.

`Inbound` is built at start-up (`lifecycle.start`) around the service's database, outbox
and EHR client, and kept on `service.state["inbound"]` for the routes. Its background
tasks: ensuring the Subscriptions (once the service answers HTTP, since the EHR's
handshake must reach it, then periodically), the heartbeat monitor, the back-fill worker,
the canary, and pruning of old bookkeeping rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from ehr_connector.ehr.errors import EhrError
from ehr_connector.ehr.port import EhrPort
from ehr_connector.inbound import store
from ehr_connector.inbound.backfill import BackfillWorker
from ehr_connector.inbound.canary import Canary
from ehr_connector.inbound.health import ProcessingHealth, failure_reason
from ehr_connector.inbound.metrics import (
    HEARTBEAT_MISSED,
    NOTIFICATIONS,
    NOTIFICATIONS_REJECTED,
    set_subscription_status,
)
from ehr_connector.inbound.notifications import (
    MalformedNotification,
    Notification,
    load_json,
    parse_notification,
)
from ehr_connector.inbound.processor import Processor
from ehr_connector.inbound.recovery import Recovery
from ehr_connector.inbound.signature import (
    SIGNATURE_HEADER,
    JwksCache,
    NotificationVerifier,
    SignatureRejected,
)
from ehr_connector.inbound.slot_sync import SlotSync
from ehr_connector.inbound.subscriptions import SubscriptionManager
from ehr_connector.settings import Settings
from servicekit.db import Database
from servicekit.errors import DependencyUnavailable
from servicekit.logging import get_logger
from servicekit.outbox import Outbox

log = get_logger(__name__)
INSTANCE_HEADER = "X-Connector-Instance"
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


class Inbound:
    """Subscriptions, notifications, recovery, back-fill and canary of one connector."""

    def __init__(self, settings: Settings, db: Database, outbox: Outbox, ehr: EhrPort) -> None:
        self.settings = settings
        self.db = db
        self.ehr = ehr
        verify: bool | str = settings.ehr_ca_file or settings.ehr_verify_tls
        self.http = httpx.AsyncClient(verify=verify, timeout=10.0)
        self.verifier = NotificationVerifier(
            JwksCache(self.http, self._jwks_url),
            endpoint=settings.inbound_webhook_url,
            max_age_s=settings.inbound_signature_max_age_s,
        )
        self.processor = Processor(settings, db, outbox, ehr)
        self.manager = SubscriptionManager(settings, db, ehr)
        self.health = ProcessingHealth()
        self.recovery = Recovery(settings, db, ehr, self.processor, self.manager, self.health)
        self.backfill = BackfillWorker(settings, db, outbox, ehr)
        self.canary = Canary(settings, db, ehr)
        self.slot_sync = SlotSync(settings, db, outbox, ehr)
        self.started_at = datetime.now(UTC)
        # Identifies this process on its own webhook route (see `_wait_until_serving`).
        self.instance_id = secrets.token_hex(8)
        self.missing_heartbeats: list[str] = []
        self.ensure_problem: str | None = "not yet ensured"
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background tasks (nothing here blocks the service's start-up)."""
        self._spawn(self._prune_loop(), "inbound-prune")
        self._spawn(self.backfill.run(), "inbound-backfill")
        if self.settings.inbound_enabled:
            self._spawn(self._subscriptions_loop(), "inbound-subscriptions")
            self._spawn(self._monitor_loop(), "inbound-heartbeats")
        else:
            self.ensure_problem = None
        if self.settings.slot_sync_enabled:
            self._spawn(self.slot_sync.run(), "inbound-slot-sync")
        if self.settings.canary_enabled:
            await self.canary.link_patient()
            self._spawn(self.canary.run(), "inbound-canary")

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))  # type: ignore[arg-type]

    async def stop(self) -> None:
        """Stop every background task, then close the JWKS client."""
        self._stopping.set()
        self.backfill.stop()
        self.slot_sync.stop()
        self.canary.stop()
        await self.recovery.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.http.aclose()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; False when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return not self._stopping.is_set()

    async def _wait_until_serving(self) -> bool:
        """Wait until this process answers HTTP on its own port; False when stopping.

        The handshake the EHR sends on a new (or re-requested) Subscription must find us
        listening, and the lifespan start-up runs before the server accepts connections.
        An app run without a server (in-process tests) never manages Subscriptions, and
        another process on the same port (a local stack) is not mistaken for this one.
        """
        url = f"http://{self.settings.http_host}:{self.settings.http_port}/fhir/notifications"
        attempts = 0
        while not self._stopping.is_set():
            try:
                response = await self.http.get(url, timeout=1.0)
                if response.headers.get(INSTANCE_HEADER) == self.instance_id:
                    return True
            except httpx.HTTPError:
                pass
            attempts += 1
            if attempts == 50:
                log.warning("inbound.webhook_not_serving", port=self.settings.http_port)
            await self._sleep(0.2)
        return False

    async def _subscriptions_loop(self) -> None:
        if not await self._wait_until_serving():
            return
        delay = 1.0
        while not self._stopping.is_set():
            try:
                await self.ensure_and_catch_up()
                delay = self.settings.inbound_ensure_interval_s
            except asyncio.CancelledError:
                raise
            except (EhrError, DependencyUnavailable, httpx.HTTPError) as exc:
                self.ensure_problem = f"EHR unavailable ({type(exc).__name__})"
                log.warning("inbound.ensure_failed", error=type(exc).__name__)
                delay = min(max(delay * 2, 1.0), 60.0)
            except Exception as exc:
                self.ensure_problem = f"failed ({type(exc).__name__})"
                log.error("inbound.ensure_failed", error=type(exc).__name__)
                delay = min(max(delay * 2, 1.0), 60.0)
            if not await self._sleep(delay):
                return

    async def ensure_and_catch_up(self) -> list[Any]:
        """Ensure the Subscriptions, then recover whatever happened while we were away."""
        results = await self.manager.ensure()
        failed = sorted(r.topic.rsplit("/", 1)[-1] for r in results if r.action == "failed")
        self.ensure_problem = f"refused by the EHR: {', '.join(failed)}" if failed else None
        for result in results:
            if result.subscription_id is None:
                continue
            status = await self.manager.status(result.subscription_id)
            async with self.db.sessions() as session:
                row = await store.subscription_by_id(session, result.subscription_id)
                behind = (
                    row is not None
                    and status is not None
                    and (status.events_since_start or 0) > row.highest_event_number
                )
            if behind:
                self.recovery.schedule(result.subscription_id)
        return results

    async def _monitor_loop(self) -> None:
        reconciled_at = datetime.now(UTC)
        while await self._sleep(self.settings.inbound_monitor_interval_s):
            try:
                profile = await self.manager.profile()
                if not profile.sends_heartbeats:
                    # No heartbeats to miss: a periodic _lastUpdated search per Subscription
                    # finds what no notification brought (trailing gaps included).
                    now = datetime.now(UTC)
                    interval = timedelta(seconds=self.settings.inbound_reconcile_interval_s)
                    if now - reconciled_at >= interval:
                        reconciled_at = now
                        await self.recovery.reconcile_all()
                    continue
                silent = await self.recovery.check_heartbeats(self.started_at)
                self.missing_heartbeats = [row.topic for row in silent]
                for row in silent:
                    await self.recovery.after_silence(row)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("inbound.monitor_failed", error=type(exc).__name__)

    async def _prune_loop(self) -> None:
        while True:
            try:
                now = datetime.now(UTC)
                async with self.db.transaction() as session:
                    await store.prune_jti(
                        session,
                        now - timedelta(seconds=4 * self.settings.inbound_signature_max_age_s),
                    )
                    await store.prune_versions(
                        session, now - timedelta(hours=self.settings.inbound_retention_hours)
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("inbound.prune_failed", error=type(exc).__name__)
            if not await self._sleep(600):
                return

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

    # -- readiness ------------------------------------------------------------------------

    async def readiness(self) -> str | None:
        """Failing while notifications could not be processed and are not yet made good
        (the service is not ready); a warning when Subscriptions are not in order (it
        stays ready)."""
        problems: list[str] = []
        if self.settings.inbound_enabled and self.ensure_problem:
            problems.append(f"subscriptions {self.ensure_problem}")
        if self.missing_heartbeats:
            problems.append("heartbeat missed: " + ", ".join(sorted(self.missing_heartbeats)))
        try:
            async with self.db.sessions() as session:
                rows = await store.subscriptions(session)
        except Exception:
            # The database check of /readyz reports the database itself.
            rows = []
        failing = self.health.problem({r.subscription_id: r.topic for r in rows})
        inactive = [r.topic.rsplit("/", 1)[-1] for r in rows if r.status not in ("active",)]
        if inactive:
            problems.append("not active: " + ", ".join(sorted(inactive)))
        if failing:
            return "; ".join([failing, *problems])
        return f"warning: {'; '.join(problems)}" if problems else None

    # -- the webhook ----------------------------------------------------------------------

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
        mode = self.notification_auth()
        if mode == "mtls" and not self._mtls_ok(headers):
            return self._reject(401, "no_client_certificate", "A verified client is required.")
        if mode == "signature":
            try:
                signature = await self.verifier.verify(headers.get(SIGNATURE_HEADER.lower()), body)
            except SignatureRejected as exc:
                if exc.reason == "jwks_unavailable":
                    return self._reject(503, exc.reason, exc.detail)
                return self._reject(401, exc.reason, exc.detail)
            ids.update(kid=signature.kid, jti=signature.jti)
            async with self.db.transaction() as session:
                fresh = await store.remember_jti(session, signature.jti, datetime.now(UTC))
            if not fresh:
                return self._reject(401, "replay", "This signature was already used.", **ids)
        try:
            notification = parse_notification(load_json(body))
        except MalformedNotification as exc:
            return self._reject(400, "malformed", str(exc), **ids)
        ids["subscription_id"] = notification.subscription_id
        async with self.db.sessions() as session:
            row = await store.subscription_by_id(session, notification.subscription_id)
            topic = row.topic if row is not None else None
        if topic is None:
            return self._reject(404, "unknown_subscription", "Unknown Subscription.", **ids)
        if notification.status.topic and notification.status.topic.split("|")[0] != topic:
            return self._reject(400, "wrong_topic", "The topic is not this Subscription's.", **ids)
        if notification.type not in ("handshake", "heartbeat", "event-notification"):
            return self._reject(400, "not_a_notification", "Not a notification type.", **ids)
        NOTIFICATIONS.labels(notification.type).inc()
        try:
            return await self._handle(notification)
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
        await self._touch(subscription_id, None, None)
        self.recovery.schedule_search(subscription_id)
        return WebhookAnswer(204, "Search scheduled.")

    async def _handle(self, notification: Notification) -> WebhookAnswer:
        subscription_id = notification.subscription_id
        kind = notification.type
        status = "active" if kind == "handshake" else notification.status.status
        since = notification.status.events_since_start if kind != "event-notification" else None
        row = await self._touch(subscription_id, status, since)
        if row is None:
            return WebhookAnswer(404, "Unknown Subscription.")
        _topic, highest = row
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
            subscription_id, notification.events, live=True
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
        if numbers and await self._has_gap(subscription_id, max(numbers)):
            self.recovery.schedule(subscription_id)
        return WebhookAnswer(204, "Notification processed.")

    async def _touch(
        self, subscription_id: str, status: str | None, events_since_start: int | None
    ) -> tuple[str, int] | None:
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            row = await store.subscription_by_id(session, subscription_id, lock=True)
            if row is None:
                return None
            row.last_notification_at = now
            row.heartbeat_missed_since = None
            if status:
                row.status = status
            if events_since_start is not None:
                row.events_since_start = max(row.events_since_start, events_since_start)
            row.updated_at = now
            topic, highest = row.topic, row.highest_event_number
        HEARTBEAT_MISSED.labels(topic).set(0)
        if topic in self.missing_heartbeats:
            self.missing_heartbeats = [t for t in self.missing_heartbeats if t != topic]
        if status:
            set_subscription_status(topic, status)
        return topic, highest

    async def _has_gap(self, subscription_id: str, upto: int) -> bool:
        async with self.db.sessions() as session:
            row = await store.subscription_by_id(session, subscription_id)
            if row is None:
                return False
            return await store.has_gap(session, row, upto)
