"""Delivery of one Subscription's notifications over its rest-hook channel.

One `Channel` task per Subscription sends, strictly in event-number order and never on a
FHIR request's path: the handshake when the subscription is `requested` (2xx makes it
`active`, anything else `error`), event notifications while it is `active` (at most
`backport-max-count` events each), and a heartbeat whenever `backport-heartbeat-period`
seconds pass without a notification. Each attempt is bounded by `backport-timeout`; a
failed one is retried with exponential back-off and jitter, and after
`SANDBOX_DELIVERY_MAX_FAILURES` consecutive failures the subscription goes to `error`
(its events stay retrievable with `$events`).

Every POST carries the client's `channel.header` entries and a fresh detached JWS of the
exact body bytes in `X-Signature` (see `signing.py`). Notification faults from
`app.state.faults` apply to event notifications: a dropped one counts as sent but is not
sent, a duplicated one is sent twice (each with its own signature), and with `reorder`
one notification is held back and sent right after the next (or after
`SANDBOX_REORDER_FLUSH_S` if no next one comes).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from ehr_sandbox.fhir.outcomes import dump_json
from ehr_sandbox.subscriptions.bundles import (
    ContextResource,
    EventView,
    NotificationFormat,
    NotificationType,
    StatusInfo,
    notification_bundle,
)
from ehr_sandbox.subscriptions.eventlog import EventLog, StoredEvent
from ehr_sandbox.subscriptions.model import PayloadContent, SubscriptionConfig
from ehr_sandbox.subscriptions.settings import SubscriptionSettings
from ehr_sandbox.subscriptions.signing import SIGNATURE_HEADER, sign_detached
from servicekit.logging import get_logger

log = get_logger(__name__)


class FaultSettings(Protocol):
    """The notification part of `app.state.faults`."""

    notification_drop_rate: float
    notification_duplicate_rate: float
    notification_reorder: bool


class Signer(Protocol):
    """Signs a body for an endpoint; returns the `X-Signature` value."""

    def __call__(self, body: bytes, endpoint: str) -> str: ...


ContextLoader = Callable[[str], Awaitable[dict[str, Any] | None]]
StatusWriter = Callable[[str, str, str | None], Awaitable[None]]


@dataclass
class ChannelDeps:
    """What every channel shares: storage, HTTP, signing, settings and hooks."""

    log: EventLog
    http: httpx.AsyncClient
    sign: Signer
    settings: SubscriptionSettings
    fhir_base: str
    fmt: Callable[[], NotificationFormat]
    faults: Callable[[], FaultSettings | None]
    load_context: ContextLoader
    write_status: StatusWriter


async def event_views(
    events: list[StoredEvent], content: PayloadContent, load: ContextLoader
) -> list[EventView]:
    """Stored events as notifications show them (context resources loaded if needed)."""
    views: list[EventView] = []
    for event in events:
        context: list[ContextResource] = []
        for ref in event.context:
            body = await load(ref) if content == "full-resource" else None
            context.append(ContextResource(reference=ref, resource=body))
        views.append(
            EventView(
                number=event.number,
                occurred_at=event.occurred_at,
                interaction=event.interaction,
                focus_type=event.focus_type,
                focus_id=event.focus_id,
                focus_version=event.focus_version,
                focus=event.focus,
                context=tuple(context),
            )
        )
    return views


class DeliveryFailed(Exception):
    """One delivery attempt that did not get a 2xx (the message says what happened)."""


class Channel:
    """The delivery task of one rest-hook Subscription."""

    def __init__(self, config: SubscriptionConfig, deps: ChannelDeps) -> None:
        self.config = config
        self.status = config.status
        self.deps = deps
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_sent = time.monotonic()
        self._held: tuple[bytes, float] | None = None
        self.attempts = 0

    # -- control ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the delivery task."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"subscription-{self.config.id}")

    async def stop(self) -> None:
        """Stop the delivery task (a notification in flight is abandoned)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        """Look for new events, or a new status/config, now."""
        self._wake.set()

    def reconfigure(self, config: SubscriptionConfig) -> None:
        """Use a new version of the Subscription (endpoint, headers, payload, ...)."""
        self.config = config
        self.status = config.status
        self.wake()

    # -- loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug or a database hiccup must not kill the channel for good.
                log.exception("subscription_channel_error", subscription_id=self.config.id)
                await asyncio.sleep(1.0)

    async def _step(self) -> None:
        if self._ended() and self.status != "off":
            await self._set_status("off", None)
            return
        if self.status == "requested":
            await self._handshake()
            return
        if self.status != "active":
            await self._wait(None)
            return
        state = await self.deps.log.state(self.config.id)
        limit = self.config.max_count or self.deps.settings.max_events_per_notification
        batch = await self.deps.log.pending(self.config.id, state.last_delivered, limit)
        if batch:
            # An event appended between the two reads is in the batch but not in `state`.
            since_start = max(state.events_since_start, batch[-1].number)
            await self._deliver_events(batch, since_start)
            return
        if self._held is not None:
            remaining = self._held[1] + self.deps.settings.reorder_flush_s - time.monotonic()
            if remaining <= 0:
                await self._flush_held()
                return
            await self._wait(remaining)
            return
        period = self.config.heartbeat_period_s
        if period is None:
            await self._wait(None)
            return
        remaining = self._last_sent + period - time.monotonic()
        if remaining > 0:
            await self._wait(remaining)
            return
        await self._heartbeat(state.events_since_start)

    async def _wait(self, delay: float | None) -> None:
        until_end = self._seconds_to_end()
        if until_end is not None and self.status != "off":
            # Wake up when `end` passes, to switch the Subscription off on time.
            delay = until_end if delay is None else min(delay, until_end)
            delay = max(delay, 0.0)
        try:
            if delay is None:
                await self._wake.wait()
            else:
                await asyncio.wait_for(self._wake.wait(), delay)
        except TimeoutError:
            return
        self._wake.clear()

    def _seconds_to_end(self) -> float | None:
        if self.config.end is None:
            return None
        try:
            end = datetime.fromisoformat(self.config.end.replace("Z", "+00:00"))
        except ValueError:
            return None
        if end.tzinfo is None:
            end = end.replace(tzinfo=UTC)
        return (end - datetime.now(UTC)).total_seconds()

    def _ended(self) -> bool:
        remaining = self._seconds_to_end()
        return remaining is not None and remaining <= 0

    # -- notifications ----------------------------------------------------------------

    def _body(
        self,
        kind: NotificationType,
        status: str,
        events_since_start: int,
        events: list[EventView],
    ) -> bytes:
        info = StatusInfo(
            subscription_id=self.config.id,
            topic=self.config.topic.canonical,
            status=status,
            events_since_start=events_since_start,
        )
        bundle = notification_bundle(
            fhir_base=self.deps.fhir_base,
            info=info,
            kind=kind,
            events=events,
            content=self.config.content,
            fmt=self.deps.fmt(),
        )
        return dump_json(bundle)

    async def _handshake(self) -> None:
        state = await self.deps.log.state(self.config.id)
        body = self._body("handshake", "requested", state.events_since_start, [])
        try:
            await self._post(body)
        except DeliveryFailed as exc:
            log.info("subscription_handshake_failed", subscription_id=self.config.id)
            await self._set_status("error", f"Handshake failed: {exc}")
            return
        await self.deps.log.reset_failures(self.config.id)
        self._last_sent = time.monotonic()
        await self._set_status("active", None)
        log.info("subscription_active", subscription_id=self.config.id)

    async def _heartbeat(self, events_since_start: int) -> None:
        body = self._body("heartbeat", "active", events_since_start, [])
        if await self._send_with_retries(body):
            self._last_sent = time.monotonic()

    async def _deliver_events(self, batch: list[StoredEvent], events_since_start: int) -> None:
        views = await event_views(batch, self.config.content, self.deps.load_context)
        body = self._body("event-notification", "active", events_since_start, views)
        last = batch[-1].number
        faults = self.deps.faults()
        if faults is not None and random.random() < faults.notification_drop_rate:
            # The fault: the server believes it sent the notification; the receiver never
            # sees it and must notice the gap in event numbers.
            log.info("notification_dropped_by_fault", subscription_id=self.config.id)
            await self.deps.log.mark_delivered(self.config.id, last)
            self._last_sent = time.monotonic()
            return
        if faults is not None and faults.notification_reorder and self._held is None:
            log.info("notification_held_by_fault", subscription_id=self.config.id)
            self._held = (body, time.monotonic())
            await self.deps.log.mark_delivered(self.config.id, last)
            return
        if not await self._send_with_retries(body):
            return
        await self.deps.log.mark_delivered(self.config.id, last)
        self._last_sent = time.monotonic()
        if faults is not None and random.random() < faults.notification_duplicate_rate:
            log.info("notification_duplicated_by_fault", subscription_id=self.config.id)
            await self._post_quietly(body)
        await self._flush_held()

    async def _flush_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            await self._post_quietly(held[0])
            self._last_sent = time.monotonic()

    async def _post_quietly(self, body: bytes) -> None:
        try:
            await self._post(body)
        except DeliveryFailed:
            # A fault-injected extra copy: its loss is part of the fault.
            log.info("fault_notification_lost", subscription_id=self.config.id)

    async def _send_with_retries(self, body: bytes) -> bool:
        settings = self.deps.settings
        while True:
            if self.status != "active":
                # Switched off or re-requested while we were backing off.
                return False
            try:
                await self._post(body)
            except DeliveryFailed as exc:
                failures = await self.deps.log.record_failure(self.config.id, str(exc))
                log.info(
                    "notification_attempt_failed",
                    subscription_id=self.config.id,
                    failures=failures,
                )
                if failures >= settings.delivery_max_failures:
                    await self._set_status(
                        "error", f"Delivery failed {failures} times in a row: {exc}"
                    )
                    return False
                delay = min(
                    settings.delivery_retry_base_s * 2 ** (failures - 1),
                    settings.delivery_retry_max_s,
                )
                # Full jitter on the upper half, so many retrying channels spread out.
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                continue
            await self.deps.log.reset_failures(self.config.id)
            return True

    async def _post(self, body: bytes) -> None:
        config = self.config
        headers = dict(config.headers)
        headers["Content-Type"] = "application/fhir+json"
        headers[SIGNATURE_HEADER] = self.deps.sign(body, config.endpoint)
        timeout = min(
            float(config.timeout_s or self.deps.settings.delivery_timeout_s),
            self.deps.settings.delivery_timeout_max_s,
        )
        self.attempts += 1
        try:
            response = await self.deps.http.post(
                config.endpoint, content=body, headers=headers, timeout=timeout
            )
        except httpx.TimeoutException as exc:
            raise DeliveryFailed(f"no response within {timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"connection failed ({type(exc).__name__})") from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryFailed(f"endpoint answered HTTP {response.status_code}")

    async def _set_status(self, status: str, error: str | None) -> None:
        self.status = status
        await self.deps.write_status(self.config.id, status, error)


def sign_with(key_provider: Callable[[], Any]) -> Signer:
    """A `Signer` using the sandbox's current signing key."""

    def sign(body: bytes, endpoint: str) -> str:
        return sign_detached(body, key_provider(), endpoint=endpoint)

    return sign
