"""From subscription events (or resources a recovery search found) to published events.

For each change the processor reads what it needs with the connector's own credentials
(the focus as it was at the event, its related resources), decides an outcome (published,
duplicate, echo, unlinked, rejected, skipped, gone) and then, in ONE transaction, records
the processed event numbers and resource versions and adds the events to the outbox. The
EHR is only read before that transaction opens, so no database transaction waits on HTTP.

Duplicates are caught twice: before reading (cheap) and again inside the transaction under
the Subscription row's lock, where the primary keys of the processed tables settle a race
between a live notification and a recovery of the same event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.base import Payload
from contracts.message import MessageReceivedV1
from ehr_connector import store as connector_store
from ehr_connector.ehr.errors import EhrGone, EhrNotFound, EhrRejected
from ehr_connector.ehr.port import EhrPort
from ehr_connector.ehr.written import WrittenVersions
from ehr_connector.inbound import store
from ehr_connector.inbound.domain.fhir_values import (
    FHIR_ID,
    Ref,
    Resource,
    has_tag,
    meta_version,
)
from ehr_connector.inbound.domain.mapping import MAPPERS, Mapper, slot_subject
from ehr_connector.inbound.domain.mapping.appointment import schedule_of
from ehr_connector.inbound.domain.mapping.common import MappingContext, Rejected, Skipped
from ehr_connector.inbound.domain.notifications import (
    MalformedNotification,
    NotificationEvent,
    parse_notification,
)
from ehr_connector.inbound.domain.rules import (
    RECORDED_AS_REJECTION,
    SETTLING,
    EchoVerdict,
    Outcome,
    echo_verdict,
)
from ehr_connector.inbound.metrics import (
    DUPLICATES,
    EVENTS,
    MAPPING_REJECTED,
    SUBSCRIPTION_LAST_EVENT,
    UNLINKED,
)
from ehr_connector.inbound.tables import InboundSubscription
from ehr_connector.outbound.domain.identifiers import APPOINTMENT_ID
from ehr_connector.outbound.domain.tags import ORIGIN_TAG_CODE, ORIGIN_TAG_SYSTEM
from ehr_connector.settings import Settings
from servicekit.db import Database
from servicekit.logging import get_logger
from servicekit.outbox import Outbox

log = get_logger(__name__)

# Reference data (who performed, which schedule) changes rarely: cached for a few minutes.
_CACHED_TYPES = frozenset(
    {"Practitioner", "PractitionerRole", "Organization", "CareTeam", "Schedule", "Medication"}
)
_COMMIT_ATTEMPTS = 5


@dataclass
class Change:
    """One change to decide: a numbered event of a Subscription, or a resource a
    recovery search found (no number)."""

    focus: Ref
    number: int | None = None
    version: str | None = None
    resource: Resource | None = None
    deleted: bool = False
    context: dict[str, Resource] = field(default_factory=dict)
    timestamp: datetime | None = None


# (session, resource type, change, outbox event id) of each event published.
PublishHook = Callable[[AsyncSession, str, Change, str], Awaitable[None]]


@dataclass
class Decision:
    """The outcome of one change and what to write for it."""

    change: Change
    outcome: Outcome
    resource_type: str
    version: str | None = None
    payloads: list[tuple[Payload, str]] = field(default_factory=list)
    reason: str | None = None

    @property
    def ref(self) -> str:
        """`Type/id` of the focus."""
        return self.change.focus.key


@dataclass
class Summary:
    """How a batch of changes ended, for the caller's logs and metrics."""

    outcomes: dict[str, int] = field(default_factory=dict)
    published_event_ids: list[str] = field(default_factory=list)
    # As the commit left the Subscription: its watermark and the numbers above it with an
    # outcome (those of the watermark's window). None: nothing was committed.
    watermark: int | None = None
    recorded_above: frozenset[int] = frozenset()

    def count(self, outcome: Outcome) -> None:
        """Count one change with this outcome."""
        self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1

    def has_gap(self, upto: int) -> bool | None:
        """Whether a number up to `upto` still has no outcome; None when not known here
        (nothing committed, or `upto` beyond the window the commit read)."""
        if self.watermark is None:
            return None
        if upto <= self.watermark:
            return False
        if upto > self.watermark + store.WATERMARK_WINDOW:
            return None
        return any(n not in self.recorded_above for n in range(self.watermark + 1, upto + 1))


@dataclass
class _Recorded:
    """What one commit found recorded already, updated as it records more."""

    numbers: set[int]
    versions: set[tuple[str, str, str]]
    # The numbers above the watermark stored before this commit (all of its window).
    stored: set[int] = field(default_factory=set)
    # The numbers' outcomes this commit records (`store.record_outcomes`).
    outcomes: list[store.Processed] = field(default_factory=list)


def _version_key(decision: Decision) -> tuple[str, str, str] | None:
    """(type, id, version) of the decided resource version, when it has one."""
    if decision.version is None:
        return None
    return (decision.resource_type, decision.change.focus.id, decision.version)


class Processor:
    """Turns changes into outbox events, exactly once per event number and version."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        outbox: Outbox,
        ehr: EhrPort,
        *,
        on_publish: Sequence[PublishHook] = (),
        written: WrittenVersions | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        self.ehr = ehr
        # Told of every event published, inside the transaction that adds it to the outbox
        # (the canary ties its run to its report's event there: `Canary.note_published`).
        self.on_publish = tuple(on_publish)
        # The versions our EHR client wrote lately: their notifications are echoes, known
        # without reading the resource back (`_own_echoes`).
        self.written = written if written is not None else WrittenVersions()
        self._cache: dict[str, tuple[float, Resource | None]] = {}
        self._reads = asyncio.Semaphore(max(1, settings.inbound_read_concurrency))
        # Focus types this EHR refused an `_include` search for (`_read_focus`).
        self._no_include: set[str] = set()

    # -- entry points ---------------------------------------------------------------------

    async def process_events(
        self,
        subscription_id: str,
        events: Sequence[NotificationEvent],
        *,
        live: bool,
        done: set[int] | None = None,
    ) -> Summary:
        """Process a notification's (or a `$events` answer's) events of one Subscription;
        `done`: which of their numbers the caller already found processed (the commit
        checks again under the Subscription's lock, so a stale answer only costs work)."""
        summary = Summary()
        if done is None:
            async with self.db.sessions() as session:
                row = await store.subscription_by_id(session, subscription_id)
                if row is None:
                    raise LookupError(subscription_id)
                done = await store.processed_numbers(session, row, (e.number for e in events))
        todo: list[NotificationEvent] = []
        for event in sorted(events, key=lambda e: e.number):
            if event.number in done or any(t.number == event.number for t in todo):
                DUPLICATES.labels("event_number").inc()
                summary.count(Outcome.DUPLICATE)
                continue
            todo.append(event)
        if not todo:
            return summary
        todo = await self._with_focus(subscription_id, todo)
        echoes = self._own_echoes(todo)
        changes = await asyncio.gather(
            *(self._change(subscription_id, e) for e in todo if e.number not in echoes)
        )
        decided = iter(await asyncio.gather(*(self._decide(c) for c in changes)))
        # In event order, as before: the commit records them one after the other.
        decisions = [echoes.get(e.number) or next(decided) for e in todo]
        await self._commit(subscription_id, decisions, summary, live=live)
        return summary

    async def process_resources(
        self, subscription_id: str, resources: Sequence[Resource], close_through: int | None
    ) -> Summary:
        """Process resources a `_lastUpdated` search found (current versions, no event
        numbers), then count every event number up to `close_through` as processed."""
        summary = Summary()
        changes = []
        for resource in resources:
            ref = Ref(str(resource.get("resourceType")), str(resource.get("id")))
            version, last_updated = meta_version(resource)
            changes.append(
                Change(focus=ref, version=version, resource=resource, timestamp=last_updated)
            )
        decisions = list(await asyncio.gather(*(self._decide(c) for c in changes)))
        await self._commit(
            subscription_id, decisions, summary, live=False, close_through=close_through
        )
        return summary

    # -- reading --------------------------------------------------------------------------

    async def _with_focus(
        self, subscription_id: str, events: list[NotificationEvent]
    ) -> list[NotificationEvent]:
        """Events of an `empty` payload carry no focus: fetch them again as id-only."""
        missing = [e.number for e in events if e.focus is None]
        if not missing:
            return events
        bundle = await self.ehr.subscription_events(
            subscription_id, since=min(missing), until=max(missing), content="id-only"
        )
        try:
            fetched = {e.number: e for e in parse_notification(bundle).events}
        except MalformedNotification as exc:
            raise EhrRejected(f"$events answered an unreadable Bundle: {exc}") from exc
        return [fetched.get(e.number, e) if e.focus is None else e for e in events]

    def _own_echoes(self, events: Sequence[NotificationEvent]) -> dict[int, Decision]:
        """Events naming a version our client wrote, decided as echoes without the EHR
        read `_change` would make (a booking's Appointment and Slot come back as four
        notifications: four reads for nothing). The write log decides the others."""
        echoes: dict[int, Decision] = {}
        for event in events:
            focus, version = event.focus, event.focus_version
            if (
                focus is None
                or not version
                or event.interaction == "delete"
                or focus.type not in MAPPERS
                or (focus.type, focus.id, version) not in self.written
            ):
                continue
            change = Change(
                focus=focus, number=event.number, version=version, timestamp=event.timestamp
            )
            echoes[event.number] = Decision(change, Outcome.ECHO, focus.type, version)
        return echoes

    async def _change(self, subscription_id: str, event: NotificationEvent) -> Change:
        if event.focus is None:
            # Still none after asking $events again: the EHR no longer has the event.
            return Change(focus=Ref("Resource", "unknown"), number=event.number, deleted=True)
        change = Change(
            focus=event.focus,
            number=event.number,
            version=event.focus_version,
            context=dict(event.context_resources),
            timestamp=event.timestamp,
        )
        if event.interaction == "delete":
            change.deleted = True
            return change
        inline = event.focus_resource
        if inline is not None and (
            event.focus_version is None or meta_version(inline)[0] == event.focus_version
        ):
            change.resource = inline
            return change
        try:
            resource, version_id, included = await self._read_focus(event.focus)
        except EhrGone:
            change.deleted = True
            return change
        except EhrNotFound:
            return change
        change.resource = resource
        change.context.update(included)
        if event.focus_version and version_id != event.focus_version:
            # The resource changed again since the event: take it as it was at the event,
            # so each version becomes its own event (else the newer one is used).
            at_event = await self._version_at_event(subscription_id, event)
            if at_event is not None:
                change.resource = at_event
        return change

    async def _read_focus(self, ref: Ref) -> tuple[Resource, str | None, dict[str, Resource]]:
        """The focus's current version, with what its mapping needs that the EHR includes in
        the same search (a report's results: one round trip where a read and a search were
        two, on the way to the patient). A plain read when the EHR finds nothing that way
        (the read tells a deleted resource from a missing one) or refuses the search."""
        mapper = MAPPERS.get(ref.type)
        if mapper is not None and mapper.includes and ref.type not in self._no_include:
            params = [("_id", ref.id)] + [("_include", value) for value in mapper.includes]
            try:
                async with self._reads:
                    page = await self.ehr.search(ref.type, params)
            except EhrRejected as exc:
                log.info("inbound.include_refused", resource_type=ref.type, status=exc.status)
                if exc.status in (400, 404, 422, 501):
                    self._no_include.add(ref.type)  # this server cannot: read from now on
            else:
                for match in page.matches:
                    if match.get("resourceType") == ref.type and match.get("id") == ref.id:
                        return match, meta_version(match)[0], _by_reference(page.included)
        async with self._reads:
            current = await self.ehr.read(ref.type, ref.id)
        return current.resource, current.version_id, {}

    async def _version_at_event(
        self, subscription_id: str, event: NotificationEvent
    ) -> Resource | None:
        try:
            async with self._reads:
                bundle = await self.ehr.subscription_events(
                    subscription_id, since=event.number, until=event.number, content="full-resource"
                )
            events = parse_notification(bundle).events
        except (EhrRejected, MalformedNotification):
            return None
        for candidate in events:
            if candidate.number == event.number and candidate.focus_resource is not None:
                return candidate.focus_resource
        return None

    async def _related(
        self, refs: Sequence[Ref], context: dict[str, Resource]
    ) -> dict[str, Resource]:
        found: dict[str, Resource] = {}
        unread: dict[str, list[Ref]] = {}
        for ref in refs:
            if ref.key in found:
                continue
            if ref.key in context:
                found[ref.key] = context[ref.key]
                continue
            cached = self._cache.get(ref.key)
            if cached is not None and cached[0] > time.monotonic():
                if cached[1] is not None:
                    found[ref.key] = cached[1]
                continue
            if all(r.key != ref.key for r in unread.get(ref.type, [])):
                unread.setdefault(ref.type, []).append(ref)

        async def one(ref: Ref) -> None:
            resource = await self._read_related(ref)
            if resource is not None:
                found[ref.key] = resource

        singles: list[Ref] = []
        for resource_type, group in unread.items():
            if len(group) < 2:
                singles += group
                continue
            # A report's results (a panel: up to a dozen Observations) in one search rather
            # than a read each: one request and one authorisation on both sides, not twelve.
            many = await self._read_many(resource_type, group)
            found.update(many)
            singles += [ref for ref in group if ref.key not in many]
        # What the search did not return (not found, not ours to read, or a server that
        # cannot search by _id) is read one by one: the read says which it is.
        await asyncio.gather(*(one(ref) for ref in singles))
        return found

    async def _read_many(self, resource_type: str, refs: Sequence[Ref]) -> dict[str, Resource]:
        """Current versions of several resources of one type (`_id` with an OR-list)."""
        ids = [ref.id for ref in refs if FHIR_ID.match(ref.id)]
        if len(ids) < 2:
            return {}
        try:
            async with self._reads:
                page = await self.ehr.search(resource_type, {"_id": ",".join(ids)}, count=len(ids))
        except EhrRejected as exc:
            log.info(
                "inbound.related_search_refused", resource_type=resource_type, status=exc.status
            )
            return {}
        wanted = set(ids)
        found: dict[str, Resource] = {}
        for resource in page.matches:
            fhir_id = resource.get("id")
            if resource.get("resourceType") == resource_type and fhir_id in wanted:
                found[f"{resource_type}/{fhir_id}"] = resource
        if resource_type in _CACHED_TYPES:
            for key, resource in found.items():
                self._remember(key, resource)
        return found

    async def _read_related(self, ref: Ref) -> Resource | None:
        cached = self._cache.get(ref.key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            async with self._reads:
                resource: Resource | None = (await self.ehr.read(ref.type, ref.id)).resource
        except (EhrNotFound, EhrGone):
            resource = None
        except EhrRejected as exc:
            # Not readable with our scopes: the mapping decides whether it can do without.
            log.info("inbound.related_unreadable", resource_type=ref.type, status=exc.status)
            resource = None
        if ref.type in _CACHED_TYPES:
            self._remember(ref.key, resource)
        return resource

    def _remember(self, key: str, resource: Resource | None) -> None:
        if len(self._cache) > 5000:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + self.settings.inbound_reference_cache_s, resource)

    # -- deciding -------------------------------------------------------------------------

    async def _echo_verdict(
        self, session: AsyncSession, tagged: bool, ref: Ref, version: str | None
    ) -> EchoVerdict:
        logged = version is not None and await connector_store.is_own_write(
            session, ref.type, ref.id, version
        )
        known = (
            tagged and not logged and await store.resource_written_by_us(session, ref.type, ref.id)
        )
        return echo_verdict(tagged=tagged, logged_version=logged, resource_in_log=known)

    async def _echo(self, tagged: bool, ref: Ref, version: str | None, first: EchoVerdict) -> bool:
        """Whether the change is our own write coming back; `first`: the verdict already
        read. An unsure one (tagged by us, the version not logged yet) is asked again."""
        verdict = first
        deadline = time.monotonic() + self.settings.inbound_echo_recheck_s
        while verdict is EchoVerdict.UNSURE:
            if time.monotonic() >= deadline:
                # Our own write would have logged its version by now: the tag was carried
                # forward by someone else's change, which the patient must hear about.
                return False
            await asyncio.sleep(0.2)
            async with self.db.reads() as session:
                verdict = await self._echo_verdict(session, tagged, ref, version)
        return verdict is EchoVerdict.OURS

    async def _decide(self, change: Change) -> Decision:
        focus = change.focus
        if change.deleted or change.resource is None:
            reason = (
                f"{focus.key} was deleted; a deletion carries no content to publish."
                if change.deleted
                else f"{focus.key} could not be read (not found)."
            )
            return Decision(change, Outcome.GONE, focus.type, change.version, reason=reason)
        resource = change.resource
        version = meta_version(resource)[0] or change.version
        decision = Decision(change, Outcome.SKIPPED, focus.type, version)
        mapper = MAPPERS.get(focus.type)
        tagged = has_tag(resource, ORIGIN_TAG_SYSTEM, ORIGIN_TAG_CODE)
        # The checks share one autocommit session: a round trip each, where a session per
        # check (BEGIN, query, ROLLBACK) made them most of the connector's time per event.
        async with self.db.reads() as session:
            if version is not None and await store.versions_seen(
                session, [(focus.type, focus.id, version)]
            ):
                decision.outcome = Outcome.DUPLICATE
                return decision
            if mapper is None:
                decision.outcome, decision.reason = (
                    Outcome.REJECTED,
                    f"No mapping for {focus.type}.",
                )
                return decision
            echo = await self._echo_verdict(session, tagged, focus, version)
            subjects = (
                await self._subjects(session, mapper, resource)
                if echo is EchoVerdict.NOT_OURS
                else None
            )
        if echo is not EchoVerdict.NOT_OURS:
            if await self._echo(tagged, focus, version, echo):
                decision.outcome = Outcome.ECHO
                return decision
            async with self.db.reads() as session:
                subjects = await self._subjects(session, mapper, resource)
        if subjects is None:
            decision.outcome = Outcome.UNLINKED
            return decision
        related = await self._related(mapper.needs(resource), change.context)
        for patient_id, subject in subjects:
            ctx = MappingContext(
                patient_id=patient_id,
                related=related,
                appointment_identifier_system=APPOINTMENT_ID,
                deleted=change.deleted,
            )
            result = mapper.map(resource, ctx)
            if isinstance(result, Rejected):
                decision.outcome, decision.reason = Outcome.REJECTED, result.reason
                decision.payloads = []
                return decision
            if isinstance(result, Skipped):
                decision.outcome, decision.reason = Outcome.SKIPPED, result.reason
                return decision
            if isinstance(result, MessageReceivedV1):
                result = await self._with_our_thread(result)
            decision.payloads.append((result, subject))
        decision.outcome = Outcome.PUBLISHED
        return decision

    async def _with_our_thread(self, message: MessageReceivedV1) -> MessageReceivedV1:
        """A clinician's answer in a thread the connector filed names our thread id, so it
        lands in the patient's thread even before messaging has learnt the EHR ids
        (`message.synced` travels on another topic)."""
        if message.thread_id is not None:
            return message
        async with self.db.reads() as session:
            for fhir_id in (message.thread_fhir_id, message.in_reply_to_fhir_id):
                thread_id = (
                    await connector_store.our_id_for(session, "thread", fhir_id)
                    if fhir_id
                    else None
                )
                if thread_id is not None:
                    return message.model_copy(update={"thread_id": thread_id})
        return message

    async def _subjects(
        self, session: AsyncSession, mapper: Mapper, resource: Resource
    ) -> list[tuple[str, str]] | None:
        """(patient id for the payload, message key) per event to publish; None when the
        change concerns no linked patient."""
        if mapper.patients is None:
            schedule = schedule_of(resource) or "unknown"
            # A slot belongs to no patient: keyed by its schedule, for order per schedule.
            return [(slot_subject(schedule), slot_subject(schedule))]
        fhir_ids = mapper.patients(resource)
        linked = await connector_store.patient_ids_of(session, fhir_ids)
        if not linked:
            return None
        return [(linked[f], linked[f]) for f in fhir_ids if f in linked]

    # -- committing -----------------------------------------------------------------------

    async def _commit(
        self,
        subscription_id: str,
        decisions: list[Decision],
        summary: Summary,
        *,
        live: bool,
        close_through: int | None = None,
    ) -> None:
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            attempt_summary = Summary()
            try:
                await self._commit_once(
                    subscription_id, decisions, attempt_summary, close_through=close_through
                )
            except IntegrityError:
                # A concurrent delivery of the same event won: the next try sees its rows.
                if attempt == _COMMIT_ATTEMPTS:
                    raise
                continue
            for key, value in attempt_summary.outcomes.items():
                summary.outcomes[key] = summary.outcomes.get(key, 0) + value
            summary.published_event_ids += attempt_summary.published_event_ids
            summary.watermark = attempt_summary.watermark
            summary.recorded_above = attempt_summary.recorded_above
            break
        _report(subscription_id, decisions)

    async def _commit_once(
        self,
        subscription_id: str,
        decisions: list[Decision],
        summary: Summary,
        *,
        close_through: int | None,
    ) -> None:
        """One transaction under the Subscription row's lock: each decision recorded (or
        found a duplicate), the gap up to `close_through` closed, the watermark advanced."""
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            row = await store.subscription_by_id(session, subscription_id, lock=True)
            if row is None:
                raise LookupError(subscription_id)
            recorded = await self._recorded(session, row, decisions)
            for decision in decisions:
                await self._record(session, row, decision, recorded, summary, now)
            if close_through is not None:
                await self._close_through(session, row, recorded, close_through)
            await store.record_outcomes(session, row, recorded.outcomes, recorded.stored, now)
            summary.watermark = row.last_event_number
            summary.recorded_above = frozenset(
                n
                for n in recorded.stored | {o.number for o in recorded.outcomes}
                if n > row.last_event_number
            )
            # With the row's other changes: one UPDATE at the commit.
            row.updated_at = now
            SUBSCRIPTION_LAST_EVENT.labels(row.topic).set(row.last_event_number)

    async def _recorded(
        self, session: AsyncSession, row: InboundSubscription, decisions: list[Decision]
    ) -> _Recorded:
        """Which of the decisions' event numbers and resource versions are recorded already
        (read under the row's lock, so a concurrent delivery's are seen or conflict)."""
        numbers = [d.change.number for d in decisions if d.change.number is not None]
        # An empty version id is never looked up (it is still recorded below).
        keys = [key for d in decisions if (key := _version_key(d)) is not None and key[2]]
        stored = await store.processed_above_watermark(session, row, numbers)
        return _Recorded(
            numbers={n for n in numbers if n <= row.last_event_number} | stored,
            versions=await store.versions_seen(session, keys),
            stored=stored,
        )

    async def _record(
        self,
        session: AsyncSession,
        row: InboundSubscription,
        decision: Decision,
        recorded: _Recorded,
        summary: Summary,
        now: datetime,
    ) -> None:
        """Record one decision: a duplicate by number or settled version changes nothing;
        otherwise its events go to the outbox and its version, rejection and number are
        recorded."""
        number = decision.change.number
        if number is not None and number in recorded.numbers:
            decision.outcome = Outcome.DUPLICATE
            summary.count(Outcome.DUPLICATE)
            return
        await self._settle_version(session, decision, recorded, summary, now)
        if decision.outcome in RECORDED_AS_REJECTION:
            await store.add_rejection(
                session,
                subscription_id=row.subscription_id,
                event_number=number,
                resource_ref=decision.ref,
                version_id=decision.version,
                reason=decision.reason or decision.outcome.value,
                now=now,
            )
        if number is not None:
            recorded.outcomes.append(store.Processed(number, decision.outcome.value, decision.ref))
            recorded.numbers.add(number)
            row.highest_event_number = max(row.highest_event_number, number)
        stamp = decision.change.timestamp
        if stamp is not None and (row.last_event_at is None or stamp > row.last_event_at):
            row.last_event_at = stamp
        summary.count(decision.outcome)

    async def _settle_version(
        self,
        session: AsyncSession,
        decision: Decision,
        recorded: _Recorded,
        summary: Summary,
        now: datetime,
    ) -> None:
        """A resource version already settled makes the decision a duplicate; otherwise a
        published decision's events go to the outbox and a settling outcome is recorded
        for its version."""
        key = _version_key(decision)
        if key is not None and key in recorded.versions and decision.outcome in SETTLING:
            decision.outcome = Outcome.DUPLICATE
        if decision.outcome is Outcome.PUBLISHED:
            await self._publish(session, decision, summary)
        if key is not None and decision.outcome in SETTLING:
            await store.add_version(session, *key, decision.outcome.value, now)
            recorded.versions.add(key)

    async def _publish(self, session: AsyncSession, decision: Decision, summary: Summary) -> None:
        """Add the decision's events to the outbox, and tell the publish hooks (in the same
        transaction, so that what they record commits or rolls back with the events)."""
        for payload, subject in decision.payloads:
            event_id = self.outbox.add(
                session, payload, subject=subject, priority=self.settings.inbound_live_priority
            )
            summary.published_event_ids.append(event_id)
            for hook in self.on_publish:
                await hook(session, decision.resource_type, decision.change, event_id)

    async def _close_through(
        self,
        session: AsyncSession,
        row: InboundSubscription,
        recorded: _Recorded,
        close_through: int,
    ) -> None:
        """Mark the numbers still missing up to `close_through` as recovered by a search
        (the recovery read the resources themselves)."""
        for number in await store.missing_numbers(
            session, row, close_through, limit=close_through - row.last_event_number
        ):
            if number not in recorded.numbers:
                outcome = Outcome.RECOVERED_BY_SEARCH.value
                recorded.outcomes.append(store.Processed(number, outcome, None))
                recorded.numbers.add(number)
        row.highest_event_number = max(row.highest_event_number, close_through)


def _by_reference(resources: Sequence[Resource]) -> dict[str, Resource]:
    """Resources keyed `Type/id`, as references name them."""
    keyed: dict[str, Resource] = {}
    for resource in resources:
        resource_type, fhir_id = resource.get("resourceType"), resource.get("id")
        if isinstance(resource_type, str) and isinstance(fhir_id, str):
            keyed[f"{resource_type}/{fhir_id}"] = resource
    return keyed


def _report(subscription_id: str, decisions: list[Decision]) -> None:
    """Count the committed decisions' outcomes and log the rejected ones (no PHI: ids)."""
    for decision in decisions:
        EVENTS.labels(decision.resource_type, decision.outcome.value).inc()
        if decision.outcome is Outcome.REJECTED:
            MAPPING_REJECTED.labels(decision.resource_type).inc()
        elif decision.outcome is Outcome.UNLINKED:
            UNLINKED.labels(decision.resource_type).inc()
        elif decision.outcome is Outcome.DUPLICATE:
            DUPLICATES.labels("resource_version").inc()
    for decision in decisions:
        if decision.outcome in RECORDED_AS_REJECTION:
            log.warning(
                "inbound.change_rejected",
                subscription_id=subscription_id,
                event_number=decision.change.number,
                resource_ref=decision.ref,
                version=decision.version,
                outcome=decision.outcome.value,
                why=decision.reason,
            )
