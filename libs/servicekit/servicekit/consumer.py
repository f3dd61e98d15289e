"""The consumer loop every service uses: inbox, bounded retries, dead letters, parking.

FastStream's own ack policies either commit a failed message or redeliver it in a tight
loop, so subscribers here run with manual acks and this module decides:

* a message is handled inside one transaction together with its inbox row, so a
  redelivered event (same `ce_id`) has no second effect;
* transient failures are retried with exponential back-off and jitter, bounded; a
  `DependencyUnavailable` is waited out without limit (the message stays in Kafka);
* a message that cannot be parsed, raises `PermanentError`, or exhausts its retries is
  written as a dead letter and to `<topic>.dlq` (through the outbox, in one transaction);
* while a key (a patient) has an open dead letter, that key's later messages are parked
  in order instead of overtaking it; other keys keep flowing. Re-driving or discarding
  the dead letter releases them in order;
* the offset is committed only after the effect (or the dead letter, or the parking) is
  stored.

Messages come in batches: what the broker has fetched for a partition (up to a bound) is
handled in order inside ONE transaction — every event's inbox row, the handlers' effects
and their outbox rows — and the offsets are committed after it. The transaction per event
(and its commit, its inbox look-up, its dead-letter check) was the consumer's cost: ~10 ms
an event where the work itself takes a fraction of that. A batch that fails for any reason
but a `DependencyUnavailable` (waited out whole, nothing committed) is rolled back and its
events are handled again one transaction each, as above, so only the poison one is dead
lettered and the others are applied in order. A service may register a batch form of a
handler (`EventRouter.handles_batch`) where one statement for many events pays off.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pydantic import ValidationError
from sqlalchemy import (
    ARRAY,
    BindParameter,
    Select,
    String,
    Table,
    any_,
    bindparam,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.base import Payload
from contracts.envelope import Envelope, EnvelopeError, parse_headers
from contracts.registry import UnknownEventType, by_dataschema, dlq_topic, latest
from servicekit import sealing
from servicekit.bulk import insert_rows
from servicekit.crypto import Cipher
from servicekit.db import Database, hold_keys, unreachable_is_unavailable
from servicekit.errors import DependencyUnavailable, PermanentError, describe
from servicekit.flow_metrics import observe_event_age, observe_event_ages
from servicekit.logging import get_logger
from servicekit.metrics import (
    BATCH_SIZE,
    CONSUMED,
    DLQ_OPEN,
    DLQ_TOTAL,
    HANDLER_LATENCY,
    PARKED,
)
from servicekit.outbox import Outbox
from servicekit.settings import ServiceSettings
from servicekit.tables import DeadLetterRow, InboxRow, ParkedRow, headers_from_json, headers_to_json
from servicekit.telemetry import context_from_headers, tracer

log = get_logger(__name__)
P = TypeVar("P", bound=Payload)
# Made once: a tracer per message cost as much as the span (a proxy until the service
# installs its provider, then that provider's).
_TRACER = tracer("servicekit.consumer")
_INBOX = cast(Table, InboxRow.__table__)


@dataclass(frozen=True)
class Event(Generic[P]):
    """One consumed event: its envelope, its validated payload and where it came from."""

    envelope: Envelope
    data: P
    topic: str
    partition: int
    offset: int

    @property
    def patient_id(self) -> str:
        """The subject of every event is the internal patient id (the message key)."""
        return self.envelope.subject


@dataclass
class UnitOfWork:
    """What a handler gets: the transaction's session, a way to publish events in it, and
    the service's dependencies (`ServiceDefinition.deps`: None until the service started)."""

    session: AsyncSession
    outbox: Outbox
    event: Event[Any] | None = None
    deps: Any = None

    def publish(
        self,
        data: Payload,
        *,
        subject: str,
        priority: int = 0,
        cause: Event[Any] | None = None,
    ) -> str:
        """Add an event to the outbox, caused by the event being handled (a batch handler,
        which handles several, names the one that caused it)."""
        causing = cause or self.event
        return self.outbox.add(
            self.session,
            data,
            subject=subject,
            cause=causing.envelope if causing else None,
            priority=priority,
        )


D = TypeVar("D")


def running_deps(deps: object, kind: type[D]) -> D:
    """`deps` (a handler's `uow.deps` or `reads.deps`, a route's `service.deps`) as the
    `kind` its service's composition root builds. While the service starts or stops there
    is none: `DependencyUnavailable`, so the event waits in Kafka."""
    if not isinstance(deps, kind):
        raise DependencyUnavailable(f"{kind.__name__} is not running")
    return deps


Handler = Callable[[UnitOfWork, Event[Any]], Awaitable[None]]
BatchHandler = Callable[[UnitOfWork, list[Event[Any]]], Awaitable[None]]


@dataclass(frozen=True)
class BeforeCommit:
    """What an effect-first handler gets while it calls another system: no transaction,
    short read-only sessions, the service's outbox (which identifies the service) and its
    dependencies (`ServiceDefinition.deps`)."""

    db: Database
    outbox: Outbox
    event: Event[Any]
    deps: Any = None

    def reading(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        """A short session for reads; close it before calling out (no locks across I/O).
        Each statement commits on its own (`Database.reads`): never write through it."""
        return self.db.reads()


Record = Callable[[UnitOfWork], Awaitable[None]]
EffectHandler = Callable[[BeforeCommit, Event[Any]], Awaitable[Record]]


@dataclass(frozen=True)
class Subscription:
    """One consumer: a handler of one event type, with its own consumer group."""

    name: str
    event_type: str
    handler: Handler | EffectHandler
    model: type[Payload]
    description: str = ""
    # An effect-first handler calls out before its transaction and returns what to record.
    effect_first: bool = False
    # Same effect as `handler` on each event in turn, for a batch in one transaction.
    batch_handler: BatchHandler | None = None
    # A patient waits on this consumer's effect (their stream, their list, their booking in
    # the EHR): it fetches with KAFKA_INTERACTIVE_FETCH_MAX_WAIT_MS.
    interactive: bool = False
    # Consumers (and API paths) that read and then write the same rows of a key name one
    # scope: each transaction holds its events' keys in it first (`servicekit.db.hold_keys`),
    # so they take turns per key instead of writing over each other's uncommitted work.
    turns: str | None = None


@dataclass
class EventRouter:
    """Collects a service's handlers (`handlers.py`); the app factory subscribes them."""

    subscriptions: list[Subscription] = field(default_factory=list)

    def handles(
        self,
        event_type: str,
        *,
        name: str | None = None,
        interactive: bool = False,
        turns: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register `handler` for the newest version of `event_type`: it runs inside the
        transaction that records the event in the inbox. `interactive`: a patient waits on
        its effect (see `Subscription.interactive`). `turns`: a scope whose keys (the events'
        subjects) the transaction holds before the handler runs (`Subscription.turns`)."""

        def register(handler: Handler) -> Handler:
            consumer = name or handler.__name__
            self._add(event_type, consumer, handler, handler.__doc__, False, interactive, turns)
            return handler

        return register

    def effect_first(
        self, event_type: str, *, name: str | None = None, interactive: bool = False
    ) -> Callable[[EffectHandler], EffectHandler]:
        """Register a handler that calls another system (an EHR) for `event_type`: it runs
        with no transaction open and returns a `Record`, which the kit runs in one short
        transaction together with the inbox row. Its external effect must be idempotent (a
        duplicate found only at commit time has made the call again)."""

        def register(handler: EffectHandler) -> EffectHandler:
            consumer = name or handler.__name__
            self._add(event_type, consumer, handler, handler.__doc__, True, interactive)
            return handler

        return register

    def handles_batch(self, event_type: str) -> Callable[[BatchHandler], BatchHandler]:
        """Register the batch form of `event_type`'s handler (registered with `handles`
        first). Inside a batch's transaction the kit calls it once with the batch's events
        that are neither duplicates nor parked, in offset order; it must have the effect of
        the per-event handler called on each in turn, which still runs when a batch fails
        and its events are handled one transaction each."""

        def register(handler: BatchHandler) -> BatchHandler:
            for i, sub in enumerate(self.subscriptions):
                if sub.event_type == event_type:
                    if sub.effect_first:
                        raise ValueError(f"{event_type} has an effect-first handler")
                    self.subscriptions[i] = replace(sub, batch_handler=handler)
                    return handler
            raise ValueError(f"register the per-event handler of {event_type} first")

        return register

    def _add(
        self,
        event_type: str,
        consumer: str,
        handler: Handler | EffectHandler,
        doc: str | None,
        effect_first: bool,
        interactive: bool,
        turns: str | None = None,
    ) -> None:
        entry = latest(event_type)
        if any(s.event_type == event_type for s in self.subscriptions):
            raise ValueError(f"{event_type} already has a handler in this service")
        self.subscriptions.append(
            Subscription(
                name=consumer,
                event_type=event_type,
                handler=handler,
                model=entry.model,
                description=(doc or "").strip(),
                effect_first=effect_first,
                interactive=interactive,
                turns=turns,
            )
        )


@dataclass(frozen=True)
class RawMessage:
    """A Kafka record as the consumer loop needs it (also rebuilt from parked rows)."""

    topic: str
    partition: int
    offset: int
    key: str
    headers: list[tuple[str, bytes]]
    value: bytes


class Outcome:
    """How one message ended (metric label values)."""

    HANDLED = "handled"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"
    PARKED = "parked"


class _Failed(Exception):
    def __init__(self, error: str, kind: str, attempts: int) -> None:
        super().__init__(error)
        self.error = error
        self.kind = kind
        self.attempts = attempts


@dataclass
class _KeyLock:
    """A per-key lock and how many handlers hold or await it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class ConsumerRuntime:
    """Runs a service's subscriptions with the guarantees in this module's docstring."""

    def __init__(
        self,
        settings: ServiceSettings,
        db: Database,
        outbox: Outbox,
        router: EventRouter,
    ) -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        self.router = router
        # What the service's composition root built for its handlers (`Service.deps`).
        self.deps: Any = None
        self._locks: dict[tuple[str, str], _KeyLock] = {}
        self._by_topic = {settings.topic(s.event_type): s for s in router.subscriptions}
        self._by_name = {s.name: s for s in router.subscriptions}

    def subscription_for_topic(self, topic: str) -> Subscription:
        """The subscription consuming `topic` (one per topic per service)."""
        return self._by_topic[topic]

    @contextlib.asynccontextmanager
    async def _key_lock(self, consumer: str, key: str) -> AsyncIterator[None]:
        """Handle one key at a time; the entry goes when nobody holds or awaits it, so the
        map holds the keys in flight, not every patient ever seen."""
        slot = (consumer, key)
        entry = self._locks.get(slot)
        if entry is None:
            entry = self._locks[slot] = _KeyLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[slot]

    @contextlib.asynccontextmanager
    async def _key_locks(self, consumer: str, keys: set[str]) -> AsyncIterator[None]:
        """Hold the locks of several keys, taken in sorted order (two batches sharing keys
        cannot each hold one the other waits for)."""
        async with contextlib.AsyncExitStack() as stack:
            for key in sorted(keys):
                await stack.enter_async_context(self._key_lock(consumer, key))
            yield

    @property
    def keys_in_flight(self) -> int:
        """How many (consumer, key) locks exist: those held or awaited right now."""
        return len(self._locks)

    def consumer_id(self, sub: Subscription) -> str:
        """The inbox/dead-letter name of a subscription: its consumer group id."""
        return self.settings.group_id(sub.name)

    # -- parsing -------------------------------------------------------------------------

    def parse(self, sub: Subscription, msg: RawMessage) -> Event[Any]:
        """Validate envelope and payload; raises `PermanentError` with a clear reason."""
        try:
            envelope = parse_headers(msg.headers)
        except EnvelopeError as exc:
            raise PermanentError(f"bad envelope: {exc}") from exc
        if envelope.type != sub.event_type:
            raise PermanentError(f"ce_type {envelope.type!r} on topic of {sub.event_type!r}")
        try:
            model = by_dataschema(envelope.dataschema).model
        except UnknownEventType as exc:
            raise PermanentError(str(exc)) from exc
        try:
            data = model.model_validate_json(msg.value)
        except ValidationError as exc:
            raise PermanentError(f"invalid payload: {describe(exc)}") from exc
        return Event(
            envelope=envelope,
            data=data,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
        )

    # -- the loop ------------------------------------------------------------------------

    def _process_span(self, consumer: str, msg: RawMessage) -> trace.Span:
        """The span of one message's processing, in the trace of the event it carries."""
        return _TRACER.start_span(
            f"{msg.topic} process",
            context=context_from_headers(msg.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": msg.topic,
                "messaging.consumer.group.name": consumer,
                "messaging.kafka.offset": msg.offset,
                "messaging.destination.partition.id": str(msg.partition),
            },
        )

    async def consume_batch(self, sub: Subscription, msgs: list[RawMessage]) -> list[str]:
        """Handle messages as fetched (several partitions, each in offset order) to stored
        outcomes, returned in the same order. Each partition's messages are one batch: one
        transaction, or one per message when the batch fails. Partitions run concurrently
        (their keys are distinct, so order per key is unaffected). An effect-first
        subscription's messages are one transaction each, a key's one after another, and
        up to `consumer_effect_first_keys_at_once` keys of a partition at once (a
        sequential consumer held the EHR writes of every patient to one round trip each,
        below what a rate-limited EHR allows, and ten patients booking at once waited for
        each other's three EHR calls; the EHR client's gate keeps all calls within its
        Retry-After)."""
        groups: dict[tuple[str, int], list[int]] = {}
        for index, msg in enumerate(msgs):
            groups.setdefault((msg.topic, msg.partition), []).append(index)
        outcomes: list[str] = [""] * len(msgs)

        async def one_partition(indexes: list[int]) -> None:
            done = await self._consume_partition(sub, [msgs[i] for i in indexes])
            for i, outcome in zip(indexes, done, strict=True):
                outcomes[i] = outcome

        await asyncio.gather(*(one_partition(indexes) for indexes in groups.values()))
        return outcomes

    async def _consume_partition(self, sub: Subscription, msgs: list[RawMessage]) -> list[str]:
        if sub.effect_first:
            # An effect-first handler calls out per event: nothing to batch.
            return await self._consume_by_key(sub, msgs)
        # How well batching works (a consumer behind on its topic should see hundreds).
        BATCH_SIZE.labels(self.settings.service_name, sub.name).observe(len(msgs))
        if len(msgs) == 1:
            return [await self.consume(sub, msgs[0])]
        consumer = self.consumer_id(sub)
        started = time.perf_counter()
        spans = [self._process_span(consumer, msg) for msg in msgs]
        observe_event_ages(self.settings.service_name, sub.name, [msg.headers for msg in msgs])
        # The batch's own statements (inbox, dead-letter check, commit) in a span linked to
        # every event's; each event's handler runs in that event's span.
        batch_span = _TRACER.start_span(
            f"{msgs[0].topic} process batch",
            kind=SpanKind.CONSUMER,
            links=[trace.Link(span.get_span_context()) for span in spans],
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": msgs[0].topic,
                "messaging.consumer.group.name": consumer,
                "messaging.batch.message_count": len(msgs),
                "messaging.destination.partition.id": str(msgs[0].partition),
            },
        )
        try:
            with trace.use_span(batch_span, end_on_exit=False):
                async with self._key_locks(consumer, {msg.key for msg in msgs}):
                    outcomes = await self._batch_locked(sub, consumer, msgs, spans)
            for span, outcome in zip(spans, outcomes, strict=True):
                span.set_attribute("portal.outcome", outcome)
            return outcomes
        finally:
            # Each event took until its outcome was stored: the batch's time.
            elapsed = time.perf_counter() - started
            histogram = HANDLER_LATENCY.labels(self.settings.service_name, sub.name)
            for span in spans:
                span.end()
                histogram.observe(elapsed)
            batch_span.end()

    async def _consume_by_key(self, sub: Subscription, msgs: list[RawMessage]) -> list[str]:
        """One message at a time per key, in offset order; keys side by side, boundedly.
        The offsets are committed after the whole fetch, so a key that waits (an outage, a
        retry) holds back the commit, never another key's work."""
        by_key: dict[str, list[int]] = {}
        for index, msg in enumerate(msgs):
            by_key.setdefault(msg.key, []).append(index)
        outcomes: list[str] = [""] * len(msgs)
        slots = asyncio.Semaphore(self.settings.consumer_effect_first_keys_at_once)

        async def one_key(indexes: list[int]) -> None:
            async with slots:
                for i in indexes:
                    outcomes[i] = await self.consume(sub, msgs[i])

        await asyncio.gather(*(one_key(indexes) for indexes in by_key.values()))
        return outcomes

    async def _batch_locked(
        self, sub: Subscription, consumer: str, msgs: list[RawMessage], spans: list[trace.Span]
    ) -> list[str]:
        try:
            events = [self.parse(sub, msg) for msg in msgs]
        except PermanentError:
            events = None  # one is unparseable: one at a time dead-letters only that one
        waits = 0
        while events is not None:
            try:
                outcomes = await self._handle_batch_once(sub, consumer, msgs, events, spans)
            except asyncio.CancelledError:
                raise
            except DependencyUnavailable as exc:
                # Not the messages' fault: the batch waits (uncommitted) as one message would.
                waits += 1
                log.warning(
                    "consumer.dependency_unavailable",
                    consumer=consumer,
                    error=describe(exc),
                    waits=waits,
                    batch=len(msgs),
                )
                await asyncio.sleep(self._backoff(min(waits, 6)))
                continue
            except Exception as exc:
                log.info(
                    "consumer.batch_failed",
                    consumer=consumer,
                    partition=msgs[0].partition,
                    batch=len(msgs),
                    error=type(exc).__name__,
                )
                break
            for outcome in outcomes:
                self._count(sub, outcome)
            if Outcome.PARKED in outcomes:
                await self._refresh_gauges_quietly(sub)
            return outcomes
        # One transaction per message, as a single message is handled: retries, the dead
        # letter for the poison one only, parking behind it; the others apply in order.
        outcomes = []
        for msg, span in zip(msgs, spans, strict=True):
            with trace.use_span(span, end_on_exit=False):
                outcomes.append(await self._consume_locked(sub, consumer, msg))
        return outcomes

    async def _handle_batch_once(
        self,
        sub: Subscription,
        consumer: str,
        msgs: list[RawMessage],
        events: list[Event[Any]],
        spans: list[trace.Span],
    ) -> list[str]:
        """One attempt at a partition's batch in one transaction: messages of a key with an
        open dead letter are parked, events in the inbox skipped, the rest handled in order
        and recorded in the inbox. Raises what a handler raised (nothing is stored then)."""
        outcomes: list[str] = []
        handled: list[Event[Any]] = []
        parked: list[RawMessage] = []
        async with unreachable_is_unavailable(), self.db.transaction() as session:
            blocked = set(
                (
                    await session.scalars(
                        select(DeadLetterRow.key)
                        .where(
                            DeadLetterRow.consumer == consumer,
                            DeadLetterRow.key == any_(_texts(msg.key for msg in msgs)),
                            DeadLetterRow.status.in_(("open", "releasing")),
                        )
                        .with_for_update()
                    )
                ).all()
            )
            seen = set(
                (
                    await session.scalars(
                        select(InboxRow.event_id).where(
                            InboxRow.consumer == consumer,
                            InboxRow.event_id == any_(_texts(e.envelope.id for e in events)),
                        )
                    )
                ).all()
            )
            now = datetime.now(UTC)
            for msg, event in zip(msgs, events, strict=True):
                if msg.key in blocked:
                    session.add(_parked_row(consumer, msg, now, self.outbox.cipher))
                    parked.append(msg)
                    outcomes.append(Outcome.PARKED)
                elif event.envelope.id in seen:
                    outcomes.append(Outcome.DUPLICATE)
                else:
                    seen.add(event.envelope.id)
                    handled.append(event)
                    outcomes.append(Outcome.HANDLED)
            if sub.turns is not None and handled:
                # All of the batch's keys in one statement, in hold_keys' order: two
                # batches taking them one event at a time could wait for each other.
                await hold_keys(session, sub.turns, (event.patient_id for event in handled))
            if sub.batch_handler is not None and handled:
                await sub.batch_handler(
                    UnitOfWork(session=session, outbox=self.outbox, deps=self.deps), handled
                )
            else:
                span_of = {msg.offset: span for msg, span in zip(msgs, spans, strict=True)}
                handler = cast(Handler, sub.handler)
                for event in handled:
                    with trace.use_span(span_of[event.offset], end_on_exit=False):
                        await handler(
                            UnitOfWork(
                                session=session, outbox=self.outbox, event=event, deps=self.deps
                            ),
                            event,
                        )
            if handled:
                # One statement, no ORM objects (building those cost more than the
                # handlers), the rows as arrays (servicekit.bulk). An inbox row another
                # replica wrote meanwhile fails here: the batch is handled again one
                # message at a time, which skips it.
                await insert_rows(
                    session,
                    _INBOX,
                    [
                        {"consumer": consumer, "event_id": event.envelope.id, "handled_at": now}
                        for event in handled
                    ],
                )
            await session.flush()
        for msg in parked:
            log.info("consumer.parked", consumer=consumer, key=msg.key, offset=msg.offset)
        return outcomes

    async def consume(self, sub: Subscription, msg: RawMessage) -> str:
        """Handle one message to a stored outcome; returns the outcome. Never raises for
        message problems; waits out database and dependency outages."""
        consumer = self.consumer_id(sub)
        started = time.perf_counter()
        span = self._process_span(consumer, msg)
        observe_event_age(self.settings.service_name, sub.name, msg.headers)
        try:
            with trace.use_span(span, end_on_exit=False):
                async with self._key_lock(consumer, msg.key):
                    outcome = await self._consume_locked(sub, consumer, msg)
            span.set_attribute("portal.outcome", outcome)
            return outcome
        finally:
            span.end()
            HANDLER_LATENCY.labels(self.settings.service_name, sub.name).observe(
                time.perf_counter() - started
            )

    async def _consume_locked(self, sub: Subscription, consumer: str, msg: RawMessage) -> str:
        try:
            # The dead-letter check runs inside the event's own transaction (in a
            # transaction of its own it was a third of a consumer's database round trips).
            outcome = await self._handle_with_retries(sub, consumer, msg, park=True)
        except _Failed as failure:
            failed = failure
            # An unparseable message never reached that transaction: it is parked behind
            # its key's open dead letter like any other, and dead-lettered only if none.
            if failed.kind == "unparseable" and await self._until_stored(
                lambda: self._park_if_blocked(consumer, msg)
            ):
                outcome = Outcome.PARKED
            else:
                await self._until_stored(lambda: self._dead_letter(sub, consumer, msg, failed))
                self._count(sub, Outcome.DEAD_LETTERED)
                await self._refresh_gauges_quietly(sub)
                return Outcome.DEAD_LETTERED
        self._count(sub, outcome)
        if outcome == Outcome.PARKED:
            log.info("consumer.parked", consumer=consumer, key=msg.key, offset=msg.offset)
            await self._refresh_gauges_quietly(sub)
        return outcome

    def _count(self, sub: Subscription, outcome: str) -> None:
        CONSUMED.labels(self.settings.service_name, sub.name, outcome).inc()

    def _backoff(self, attempt: int) -> float:
        base = min(
            self.settings.consumer_retry_max_s, self.settings.consumer_retry_base_s * 2**attempt
        )
        return float(base / 2 + random.uniform(0, base / 2))

    async def _until_stored(self, op: Callable[[], Awaitable[Any]]) -> Any:
        """Run a bookkeeping transaction until the database takes it (outages are waited)."""
        attempt = 0
        while True:
            try:
                return await op()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                log.warning("consumer.store_failed", error=type(exc).__name__, attempt=attempt)
                await asyncio.sleep(self._backoff(min(attempt, 6)))

    async def _handle_with_retries(
        self, sub: Subscription, consumer: str, msg: RawMessage, *, park: bool = False
    ) -> str:
        """Handle `msg` to an outcome, retrying; `park`: park it instead when its key has an
        open dead letter (the consumer loop; not a redrive or a release, which run while
        their own dead letter is still open)."""
        try:
            event = self.parse(sub, msg)
        except PermanentError as exc:
            raise _Failed(str(exc), "unparseable", 1) from exc
        attempts = 0
        waits = 0
        while True:
            attempts += 1
            try:
                return await self._handle_once(sub, consumer, event, msg if park else None)
            except asyncio.CancelledError:
                raise
            except PermanentError as exc:
                raise _Failed(describe(exc), "permanent", attempts) from exc
            except DependencyUnavailable as exc:
                # Not the message's fault: wait without spending its retry budget.
                attempts -= 1
                waits += 1
                log.warning(
                    "consumer.dependency_unavailable",
                    consumer=consumer,
                    error=describe(exc),
                    waits=waits,
                )
                await asyncio.sleep(self._backoff(min(waits, 6)))
            except Exception as exc:
                if attempts >= self.settings.consumer_max_attempts:
                    raise _Failed(describe(exc), "exhausted", attempts) from exc
                log.info(
                    "consumer.retrying",
                    consumer=consumer,
                    event_id=event.envelope.id,
                    attempt=attempts,
                    error=type(exc).__name__,
                )
                await asyncio.sleep(self._backoff(attempts - 1))

    async def _handle_once(
        self, sub: Subscription, consumer: str, event: Event[Any], park: RawMessage | None = None
    ) -> str:
        async with unreachable_is_unavailable():
            return await _handle_event(
                self.db, self.outbox, sub, consumer, event, self.deps, park=park
            )

    # -- parking and dead letters -------------------------------------------------------

    async def _park_if_blocked(self, consumer: str, msg: RawMessage) -> bool:
        async with self.db.transaction() as session:
            return await _park_if_blocked(session, consumer, msg, self.outbox.cipher)

    async def _dead_letter(
        self, sub: Subscription, consumer: str, msg: RawMessage, failure: _Failed
    ) -> None:
        async with self.db.transaction() as session:
            self._write_dead_letter(session, consumer, msg, failure)
        DLQ_TOTAL.labels(self.settings.service_name, sub.name, failure.kind).inc()
        log.warning(
            "consumer.dead_lettered",
            consumer=consumer,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            kind=failure.kind,
            attempts=failure.attempts,
            error=failure.error,
        )

    def _write_dead_letter(
        self, session: AsyncSession, consumer: str, msg: RawMessage, failure: _Failed
    ) -> None:
        event_id = next(
            (v.decode("utf-8", "replace") for k, v in msg.headers if k == "ce_id"), None
        )
        # Sealed at rest with the service's cipher (servicekit.sealing): it is a whole event.
        payload, key_id = sealing.seal(
            self.outbox.cipher,
            msg.value.decode("utf-8", errors="replace"),
            sealing.dead_letter_aad(consumer, msg.topic, msg.partition, msg.offset),
        )
        session.add(
            DeadLetterRow(
                consumer=consumer,
                topic=msg.topic,
                key=msg.key,
                partition=msg.partition,
                offset=msg.offset,
                event_id=event_id,
                headers=headers_to_json(msg.headers),
                payload=payload,
                key_id=key_id,
                error=failure.error,
                error_kind=failure.kind,
                attempts=failure.attempts,
                status="open",
                created_at=datetime.now(UTC),
            )
        )
        dlq_headers = [
            *msg.headers,
            ("dlq_error", failure.error.encode()),
            ("dlq_error_kind", failure.kind.encode()),
            ("dlq_attempts", str(failure.attempts).encode()),
            ("dlq_consumer", consumer.encode()),
            ("dlq_original_topic", msg.topic.encode()),
            ("dlq_original_partition", str(msg.partition).encode()),
            ("dlq_original_offset", str(msg.offset).encode()),
        ]
        self.outbox.add_raw(
            session,
            topic=dlq_topic(msg.topic),
            key=msg.key,
            headers=dlq_headers,
            payload=msg.value.decode("utf-8", errors="replace"),
        )

    # -- operations on dead letters -------------------------------------------------------

    async def redrive(self, dead_letter_id: int) -> dict[str, Any]:
        """Handle a dead letter again, then release its key's parked messages in order."""
        return await self._resolve(dead_letter_id, rerun=True)

    async def discard(self, dead_letter_id: int) -> dict[str, Any]:
        """Give up on a dead letter and release its key's parked messages in order."""
        return await self._resolve(dead_letter_id, rerun=False)

    async def _resolve(self, dead_letter_id: int, *, rerun: bool) -> dict[str, Any]:
        async with self.db.sessions() as session:
            found = await session.get(DeadLetterRow, dead_letter_id)
        if found is None:
            raise LookupError(f"dead letter {dead_letter_id} not found")
        sub = self._by_name.get(found.consumer.removeprefix(self.settings.group_id("")))
        if sub is None:
            raise LookupError(f"no consumer {found.consumer!r} in this service")
        consumer, key = found.consumer, found.key
        final = "redriven" if rerun else "discarded"
        released = 0
        new_dead_letter: int | None = None
        async with self._key_lock(consumer, key):
            async with self.db.sessions() as session:
                row = await session.get(DeadLetterRow, dead_letter_id)
            assert row is not None
            if row.status not in ("open", "releasing"):
                raise ValueError(f"dead letter {dead_letter_id} is already {row.status}")
            if row.status == "open":
                if rerun:
                    payload = sealing.unseal(
                        self.outbox.cipher,
                        row.payload,
                        sealing.dead_letter_aad(consumer, row.topic, row.partition, row.offset),
                    )
                    msg = _raw_from(row.topic, row.partition, row.offset, key, row.headers, payload)
                    try:
                        await self._handle_with_retries(sub, consumer, msg)
                    except _Failed as failure:
                        await self._update_dead_letter(dead_letter_id, failure)
                        return {"id": dead_letter_id, "status": "open", "error": failure.error}
                await self._set_status(dead_letter_id, "releasing")
            while True:
                count, new_dead_letter = await self._release_parked(sub, consumer, key)
                released += count
                if new_dead_letter is not None:
                    await self._set_status(dead_letter_id, final)
                    break
                if await self._until_stored(lambda: self._finish(dead_letter_id, final)):
                    break
        await self.refresh_gauges()
        log.info("consumer.dead_letter_resolved", dead_letter=dead_letter_id, released=released)
        return {
            "id": dead_letter_id,
            "status": final,
            "released": released,
            "new_dead_letter": new_dead_letter,
        }

    async def _update_dead_letter(self, dead_letter_id: int, failure: _Failed) -> None:
        async with self.db.transaction() as session:
            row = await session.get(DeadLetterRow, dead_letter_id)
            if row is not None:
                row.error, row.error_kind = failure.error, failure.kind
                row.attempts += failure.attempts

    async def _set_status(self, dead_letter_id: int, status: str) -> None:
        async with self.db.transaction() as session:
            row = await session.get(DeadLetterRow, dead_letter_id)
            if row is not None:
                row.status = status
                if status in ("redriven", "discarded"):
                    row.resolved_at = datetime.now(UTC)

    async def _finish(self, dead_letter_id: int, status: str) -> bool:
        """Close the dead letter unless a message was parked since the last release pass
        (another replica may park while this one releases); False means release again."""
        async with self.db.transaction() as session:
            row = await session.get(DeadLetterRow, dead_letter_id, with_for_update=True)
            if row is None:
                return True
            pending = await session.scalar(
                select(func.count())
                .select_from(ParkedRow)
                .where(ParkedRow.consumer == row.consumer, ParkedRow.key == row.key)
            )
            if pending:
                return False
            row.status = status
            row.resolved_at = datetime.now(UTC)
            return True

    async def _release_parked(
        self, sub: Subscription, consumer: str, key: str
    ) -> tuple[int, int | None]:
        released = 0
        while True:
            async with self.db.sessions() as session:
                parked = (
                    await session.execute(
                        select(ParkedRow)
                        .where(ParkedRow.consumer == consumer, ParkedRow.key == key)
                        .order_by(ParkedRow.id)
                        .limit(1)
                    )
                ).scalar_one_or_none()
            if parked is None:
                return released, None
            payload = sealing.unseal(
                self.outbox.cipher,
                parked.payload,
                sealing.parked_aad(consumer, parked.topic, parked.partition, parked.offset),
            )
            msg = _raw_from(
                parked.topic, parked.partition, parked.offset, key, parked.headers, payload
            )
            try:
                await self._handle_with_retries(sub, consumer, msg)
            except _Failed as failure:
                async with self.db.transaction() as session:
                    await session.delete(await session.merge(parked))
                    self._write_dead_letter(session, consumer, msg, failure)
                    await session.flush()
                    new_id = (
                        await session.execute(
                            select(DeadLetterRow.id)
                            .where(DeadLetterRow.consumer == consumer, DeadLetterRow.key == key)
                            .order_by(DeadLetterRow.id.desc())
                            .limit(1)
                        )
                    ).scalar_one()
                return released, new_id
            async with self.db.transaction() as session:
                await session.delete(await session.merge(parked))
            released += 1

    async def _refresh_gauges_quietly(self, sub: Subscription) -> None:
        # The outcome is stored; a gauge that cannot be read now is refreshed next time.
        try:
            await self.refresh_gauges(sub)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("consumer.gauges_failed", error=type(exc).__name__)

    async def refresh_gauges(self, only: Subscription | None = None) -> None:
        """Update the open dead letter and parked message gauges from the database (every
        subscription's, or `only` one's): counted there, so several replicas agree."""
        subscriptions = [only] if only is not None else self.router.subscriptions
        async with self.db.sessions() as session:
            for sub in subscriptions:
                consumer = self.consumer_id(sub)
                open_count = await session.scalar(
                    select(func.count())
                    .select_from(DeadLetterRow)
                    .where(DeadLetterRow.consumer == consumer, DeadLetterRow.status == "open")
                )
                parked_count = await session.scalar(
                    select(func.count())
                    .select_from(ParkedRow)
                    .where(ParkedRow.consumer == consumer)
                )
                DLQ_OPEN.labels(self.settings.service_name, sub.name).set(open_count or 0)
                PARKED.labels(self.settings.service_name, sub.name).set(parked_count or 0)


async def handle_event(
    db: Database,
    outbox: Outbox,
    sub: Subscription,
    consumer: str,
    event: Event[Any],
    *,
    deps: Any = None,
) -> str:
    """One attempt at one event: the handler's effect and its inbox row in one transaction
    (an effect-first handler calls out before it); `Outcome.DUPLICATE` when the inbox has
    it. Raises what the handler raised. The consumer loop and `servicekit.testing.deliver`
    both come here, so a test without a broker runs exactly what production runs."""
    async with unreachable_is_unavailable():
        return await _handle_event(db, outbox, sub, consumer, event, deps)


# The event's inbox row, unless its key has an open dead letter (then nothing is written
# and the message is parked): whether the key is blocked, whether the event was claimed
# (not: a redelivery of a handled one). The dead letter is locked as `_open_dead_letter`.
_CLAIM_UNLESS_BLOCKED = text(
    """
    WITH blocked AS (
        SELECT id FROM dead_letters
        WHERE consumer = :consumer AND key = :key AND status IN ('open', 'releasing')
        ORDER BY id LIMIT 1
        FOR UPDATE
    ),
    claimed AS (
        INSERT INTO inbox (consumer, event_id, handled_at)
        SELECT :consumer, :event, :at WHERE NOT EXISTS (SELECT 1 FROM blocked)
        ON CONFLICT DO NOTHING
        RETURNING event_id
    )
    SELECT EXISTS (SELECT 1 FROM blocked), EXISTS (SELECT 1 FROM claimed)
    """
)


def _open_dead_letter(consumer: str, key: str) -> Select[tuple[DeadLetterRow]]:
    """The key's open (or releasing) dead letter, if any, locked: a redrive that is
    releasing the key's parked messages finishes before a new message is judged."""
    return (
        select(DeadLetterRow)
        .where(
            DeadLetterRow.consumer == consumer,
            DeadLetterRow.key == key,
            DeadLetterRow.status.in_(("open", "releasing")),
        )
        .order_by(DeadLetterRow.id)
        .limit(1)
        .with_for_update()
    )


async def _park_if_blocked(
    session: AsyncSession, consumer: str, msg: RawMessage, cipher: Cipher | None
) -> bool:
    """Park `msg` (in `session`) when its key has an open dead letter; True if parked."""
    if (await session.execute(_open_dead_letter(consumer, msg.key))).first() is None:
        return False
    session.add(_parked_row(consumer, msg, datetime.now(UTC), cipher))
    return True


async def _handle_event(
    db: Database,
    outbox: Outbox,
    sub: Subscription,
    consumer: str,
    event: Event[Any],
    deps: Any,
    *,
    park: RawMessage | None = None,
) -> str:
    record: Record | None = None
    if sub.effect_first:
        # One read in its own statement (no BEGIN/ROLLBACK), before the call-out: skip it
        # when the event was handled, park the message when its key is blocked (a read
        # without a lock: only a blocked key takes the locking transaction below).
        async with db.reads() as session:
            handled = select(InboxRow.event_id).where(
                InboxRow.consumer == consumer, InboxRow.event_id == event.envelope.id
            )
            blocked = (
                select(DeadLetterRow.id)
                .where(
                    DeadLetterRow.consumer == consumer,
                    DeadLetterRow.key == (park.key if park is not None else ""),
                    DeadLetterRow.status.in_(("open", "releasing")),
                )
                .limit(1)
            )
            seen, parked = (await session.execute(select(handled.exists(), blocked.exists()))).one()
        if park is not None and parked:
            async with db.transaction() as session:
                if await _park_if_blocked(session, consumer, park, outbox.cipher):
                    return Outcome.PARKED
        if seen:
            return Outcome.DUPLICATE
        effect = cast(EffectHandler, sub.handler)
        record = await effect(BeforeCommit(db=db, outbox=outbox, event=event, deps=deps), event)
    async with db.transaction() as session:
        # The inbox row first, in one statement: it claims the event (a replica's claim
        # not committed yet makes this wait for its outcome, then find it), so a redelivery
        # writes nothing and two replicas racing need no retry. Cheaper than a lookup and
        # an ORM insert at the end (py-spy: the connector's per-event database work).
        now = datetime.now(UTC)
        if park is not None and not sub.effect_first:
            # The same statement first looks for the key's open dead letter (locked): one
            # round trip for both, on every hop of every event.
            blocked, claimed = (
                await session.execute(
                    _CLAIM_UNLESS_BLOCKED,
                    {"consumer": consumer, "key": park.key, "event": event.envelope.id, "at": now},
                )
            ).one()
            if blocked:
                session.add(_parked_row(consumer, park, now, outbox.cipher))
                return Outcome.PARKED
        else:
            claimed = (
                await session.execute(
                    pg_insert(InboxRow)
                    .values(consumer=consumer, event_id=event.envelope.id, handled_at=now)
                    .on_conflict_do_nothing()
                    .returning(InboxRow.event_id)
                )
            ).first() is not None
        if not claimed:
            return Outcome.DUPLICATE
        if sub.turns is not None:
            await hold_keys(session, sub.turns, [event.patient_id])
        uow = UnitOfWork(session=session, outbox=outbox, event=event, deps=deps)
        if record is not None:
            await record(uow)
        else:
            await cast(Handler, sub.handler)(uow, event)
    return Outcome.HANDLED


def _texts(values: Iterable[str]) -> BindParameter[Any]:
    """Distinct values as ONE array parameter (`= ANY(...)`): the statement's text is the
    same for any batch size, so it is prepared once, where `IN` renders a parameter each."""
    distinct: Any = sorted(set(values))
    return bindparam(None, distinct, type_=ARRAY(String()))


def _parked_row(consumer: str, msg: RawMessage, at: datetime, cipher: Cipher | None) -> ParkedRow:
    # Sealed at rest like a dead letter (servicekit.sealing): it is a whole event.
    payload, key_id = sealing.seal(
        cipher,
        msg.value.decode("utf-8", errors="replace"),
        sealing.parked_aad(consumer, msg.topic, msg.partition, msg.offset),
    )
    return ParkedRow(
        consumer=consumer,
        key=msg.key,
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        headers=headers_to_json(msg.headers),
        payload=payload,
        key_id=key_id,
        parked_at=at,
    )


def _raw_from(
    topic: str, partition: int, offset: int, key: str, headers: Any, payload: str
) -> RawMessage:
    return RawMessage(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        headers=headers_from_json(headers),
        value=payload.encode(),
    )
