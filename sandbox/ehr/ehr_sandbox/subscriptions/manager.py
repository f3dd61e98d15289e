"""The subscription engine: from committed writes to events, and Subscription lifecycle.

`SubscriptionManager` listens on the change feed: a write to a Subscription (re)configures
that Subscription's delivery `Channel`. A write of a topic's focus type that fires the
topic becomes, for every Subscription on that topic whose `patient` filter it passes, an
event with the Subscription's next number, stored in the write's own transaction
(`Store.stage`): the write and its events commit together or not at all. Once committed,
the channels with new events are woken; delivery happens on each channel's own task,
never on the FHIR request's path.

Status changes (`requested` → `active`/`error`, `off` when `end` passes) are written
through the store like any update, so they are versioned and visible via REST; the
manager recognises its own writes by the version it expects them to get.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection

from ehr_sandbox.fhir.changes import ResourceChange
from ehr_sandbox.fhir.outcomes import FhirError
from ehr_sandbox.search import SearchRequest, parse_search
from ehr_sandbox.store import Store
from ehr_sandbox.subscriptions.delivery import Channel, ChannelDeps, FaultSettings, sign_with
from ehr_sandbox.subscriptions.eventlog import EventLog, NewEvent, append_in
from ehr_sandbox.subscriptions.model import (
    SubscriptionConfig,
    SubscriptionInvalid,
    parse_subscription,
)
from ehr_sandbox.subscriptions.settings import SubscriptionSettings
from ehr_sandbox.subscriptions.topics import TOPICS, Topic, topic_basic_resource, topics_for
from servicekit.logging import get_logger

log = get_logger(__name__)

# Statuses in which a Subscription accumulates events (delivered once it is active, or
# fetched with $events); an `off` Subscription generates none.
_COLLECTING = frozenset({"requested", "active", "error"})
_STATUS_WRITE_ATTEMPTS = 5
_PAGE = 200


def _without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("meta", "text")}


class SubscriptionManager:
    """Channels of every Subscription, event matching, and status writes."""

    def __init__(self, app: FastAPI, settings: SubscriptionSettings) -> None:
        self.app = app
        self.settings = settings
        self.store: Store = app.state.store
        self.fhir_base: str = app.state.settings.fhir_base
        self.log = EventLog(self.store.engine.execution_options(ehr_write=True))
        self.channels: dict[str, Channel] = {}
        self._expected_versions: set[tuple[str, str]] = set()
        self._http: httpx.AsyncClient | None = None
        self._unsubscribe: Any = None
        self._unstage: Callable[[], None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._deps: ChannelDeps | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Create tables, publish the topics, resume every Subscription, start listening."""
        await self.log.create_tables()
        await self._publish_topics()
        self._http = httpx.AsyncClient(
            follow_redirects=False,
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
        )
        self._deps = ChannelDeps(
            log=self.log,
            http=self._http,
            sign=sign_with(self._signing_key),
            settings=self.settings,
            fhir_base=self.fhir_base,
            fmt=lambda: self.settings.notification_format,
            faults=self._faults,
            load_context=self.load_context,
            write_status=self.write_status,
        )
        self._unsubscribe = self.app.state.change_feed.subscribe(self.on_change)
        self._unstage = self.store.stage(self.record_events)
        await self._resume()
        self._prune_task = asyncio.create_task(self._prune_loop(), name="subscription-prune")

    async def stop(self) -> None:
        """Stop listening and every channel; close the HTTP client."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._unstage is not None:
            self._unstage()
            self._unstage = None
        if self._prune_task is not None:
            self._prune_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prune_task
        for channel in list(self.channels.values()):
            await channel.stop()
        self.channels.clear()
        if self._http is not None:
            await self._http.aclose()

    def _signing_key(self) -> Any:
        from ehr_sandbox.auth.state import get_auth_service

        return get_auth_service(self.app).keys.current

    def _faults(self) -> FaultSettings | None:
        faults: FaultSettings | None = getattr(self.app.state, "faults", None)
        return faults

    async def _publish_topics(self) -> None:
        for topic in TOPICS:
            resource = topic_basic_resource(topic)
            try:
                current = (await self.store.read("Basic", topic.id)).content
            except FhirError:
                current = None
            if current is None or _without_meta(current) != _without_meta(resource):
                await self.store.update("Basic", topic.id, resource)

    async def _resume(self) -> None:
        offset = 0
        while True:
            page = await self.store.search(
                SearchRequest("Subscription", count=_PAGE, offset=offset)
            )
            for stored in page.matches:
                try:
                    config = parse_subscription(stored.content)
                except SubscriptionInvalid:
                    log.warning("subscription_not_resumed", subscription_id=stored.id)
                    continue
                self._open(config)
            offset += _PAGE
            if offset >= page.total:
                return

    def _open(self, config: SubscriptionConfig) -> Channel:
        assert self._deps is not None
        channel = Channel(config, self._deps)
        self.channels[config.id] = channel
        channel.start()
        return channel

    async def _close(self, subscription_id: str) -> None:
        channel = self.channels.pop(subscription_id, None)
        if channel is not None:
            await channel.stop()

    async def _prune_loop(self) -> None:
        retention = timedelta(hours=self.settings.event_retention_hours)
        while True:
            try:
                removed = await self.log.prune(retention)
                if removed:
                    log.info("subscription_events_pruned", count=removed)
            except Exception:
                log.exception("subscription_prune_failed")
            await asyncio.sleep(self.settings.prune_interval_s)

    # -- status writes --------------------------------------------------------------------

    async def write_status(self, subscription_id: str, status: str, error: str | None) -> None:
        """Set a Subscription's status (and R4 `error` text) with a versioned update."""
        for _attempt in range(_STATUS_WRITE_ATTEMPTS):
            try:
                stored = await self.store.read("Subscription", subscription_id)
            except FhirError:
                return  # deleted meanwhile: nothing to record
            resource = dict(stored.content)
            if resource.get("status") == status and resource.get("error") == error:
                return
            resource["status"] = status
            if error:
                resource["error"] = error
            else:
                resource.pop("error", None)
            # The write gets the next version (compare-and-set on If-Match); note it first,
            # since the change may reach our listener before `update` returns.
            expected = (subscription_id, str(stored.version + 1))
            self._expected_versions.add(expected)
            try:
                await self.store.update(
                    "Subscription", subscription_id, resource, if_match=stored.version
                )
            except FhirError as exc:
                self._expected_versions.discard(expected)
                if exc.status in (409, 412):
                    continue  # a client wrote in between: read again and retry
                raise
            log.info("subscription_status", subscription_id=subscription_id, status=status)
            return

    # -- the change feed ------------------------------------------------------------------

    async def on_change(self, change: ResourceChange) -> None:
        """Change-feed listener: the lifecycle of Subscriptions."""
        if change.resource_type == "Subscription":
            await self._subscription_changed(change)

    async def record_events(
        self, conn: AsyncConnection, change: ResourceChange
    ) -> Callable[[], None] | None:
        """Staged in every write's transaction: the events its change causes; returns
        what wakes their channels once it is committed."""
        if not self.channels:
            return None
        topics = topics_for(change.resource_type)
        woken: list[Channel] = []
        for topic in topics:
            if topic.fires(change.interaction, change.resource, change.previous):
                woken += await self._record(conn, topic, change)
        if not woken:
            return None

        def wake() -> None:
            for channel in woken:
                channel.wake()

        return wake

    async def _subscription_changed(self, change: ResourceChange) -> None:
        sub_id = change.id
        own = (sub_id, change.version_id) in self._expected_versions
        self._expected_versions.discard((sub_id, change.version_id))
        if change.interaction == "delete":
            await self._close(sub_id)
            await self.log.forget(sub_id)
            return
        try:
            config = parse_subscription(change.resource)
        except SubscriptionInvalid as exc:
            # Only reachable for resources stored around the validating routes (e.g. the
            # seed): such a Subscription cannot be served, so say so in its status.
            await self._close(sub_id)
            if change.resource.get("status") not in ("error", "off"):
                await self.write_status(sub_id, "error", str(exc)[:500])
            return
        channel = self.channels.get(sub_id)
        if own and channel is not None:
            # Our own status write: keep the channel's (possibly newer) in-memory status.
            channel.reconfigure(replace(config, status=channel.status))
            return
        if channel is None:
            if config.status not in ("requested", "off"):
                # A new Subscription starts `requested`; the handshake decides the rest.
                # Written before the channel starts, so its handshake result lands last.
                await self.write_status(sub_id, "requested", None)
                self._open(replace(config, status="requested"))
                return
            self._open(config)
            return
        if config.status in (channel.status, "requested", "off"):
            channel.reconfigure(config)
            return
        # A client cannot make a Subscription active (or error) itself: that is a request
        # to (re)activate, which goes through a new handshake.
        await self.log.reset_failures(sub_id)
        await self.write_status(sub_id, "requested", None)
        channel.reconfigure(replace(config, status="requested"))

    async def _record(
        self, conn: AsyncConnection, topic: Topic, change: ResourceChange
    ) -> list[Channel]:
        resource = change.resource
        patients = topic.patients(resource)
        if topic.resource_type == "Slot":
            patients = await self._slot_patients(change.id)
        context = topic.additional_context(resource) if change.interaction != "delete" else []
        recorded: list[Channel] = []
        for channel in list(self.channels.values()):
            config = channel.config
            if config.topic.id != topic.id or channel.status not in _COLLECTING:
                continue
            if not config.matches_patients(patients):
                continue
            number = await append_in(
                conn,
                config.id,
                NewEvent(
                    topic=topic.canonical,
                    occurred_at=change.occurred_at,
                    interaction=change.interaction,
                    focus_type=change.resource_type,
                    focus_id=change.id,
                    focus_version=change.version_id,
                    focus=resource,
                    context=context,
                ),
            )
            log.info(
                "subscription_event",
                subscription_id=config.id,
                event_number=number,
                topic=topic.id,
            )
            recorded.append(channel)
        return recorded

    async def _slot_patients(self, slot_id: str) -> set[str]:
        # A Slot belongs to no patient; its `patient` filter matches the patients of the
        # Appointments booked into it.
        filtered = any(
            c.config.topic.id == "slot-change" and c.config.filters for c in self.channels.values()
        )
        if not filtered:
            return set()
        request = parse_search(
            "Appointment",
            [("slot", f"Slot/{slot_id}")],
            fhir_base=self.fhir_base,
            default_count=50,
            max_count=50,
            strict=True,
        )
        appointment_topic = topics_for("Appointment")[0]
        patients: set[str] = set()
        for stored in (await self.store.search(request)).matches:
            patients |= appointment_topic.patients(stored.content)
        return patients

    async def load_context(self, reference: str) -> dict[str, Any] | None:
        """The current content of `Type/id`, or None if it is gone."""
        res_type, _, res_id = reference.partition("/")
        try:
            return dict((await self.store.read(res_type, res_id)).content)
        except FhirError:
            return None
