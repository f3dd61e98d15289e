"""The FastStream Kafka broker of a service, with its subscriptions registered.

Subscribers use manual acks: `ConsumerRuntime.consume_batch` stores the outcomes, then
the offsets are committed. FastStream hands over one record (its `getone` waits without
polling, so an idle consumer adds no latency); the handler takes with it what the consumer
has already fetched, up to `consumer_batch_max_records`, and the runtime handles each
partition's share as one batch. Subscriber signatures carry the payload model, so the AsyncAPI
document generated from this broker shows every consumed schema; a message that fails
FastStream's own decoding is caught by `_UndecodableMiddleware` and dead-lettered by the
same runtime (with a reason), so it never stalls or silently skips a partition.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    UnknownMemberIdError,
)
from faststream import AckPolicy, BaseMiddleware
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage

from contracts.registry import latest
from servicekit import kafka_security
from servicekit.consumer import ConsumerRuntime, RawMessage, Subscription
from servicekit.logging import get_logger
from servicekit.metrics import CONSUMER_LAG
from servicekit.settings import ServiceSettings

log = get_logger(__name__)


def _raw(record: Any) -> RawMessage:
    key = record.key.decode("utf-8", "replace") if isinstance(record.key, bytes) else ""
    return RawMessage(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=key,
        headers=[(k, bytes(v or b"")) for k, v in (record.headers or ())],
        value=bytes(record.value or b""),
    )


def _record_lag(settings: ServiceSettings, sub: Subscription, msg: Any, record: Any) -> None:
    """Lag right after a message, from the end the last fetch reported (no broker call)."""
    consumer = getattr(msg, "consumer", None)
    highwater = getattr(consumer, "highwater", None)
    if highwater is None:
        return
    end = highwater(TopicPartition(record.topic, record.partition))
    if end is not None:
        CONSUMER_LAG.labels(
            settings.service_name, sub.name, record.topic, str(record.partition)
        ).set(max(0, end - record.offset - 1))


async def sample_lag(settings: ServiceSettings, runtime: ConsumerRuntime, broker: Any) -> None:
    """Set `consumer_lag` for every partition assigned to this process's consumers: the
    partition's end minus the group's committed offset (its start when nothing is committed
    yet). Asked of the broker, so a consumer that is stuck or idle is measured too."""
    for subscriber in getattr(broker, "subscribers", ()):
        consumer = getattr(subscriber, "consumer", None)
        if consumer is None:
            continue
        assigned = sorted(consumer.assignment())
        if not assigned:
            continue
        ends = await consumer.end_offsets(assigned)
        starts = await consumer.beginning_offsets(assigned)
        for tp in assigned:
            try:
                sub = runtime.subscription_for_topic(tp.topic)
            except KeyError:
                continue
            committed = await consumer.committed(tp)
            position = committed if committed is not None else starts.get(tp, 0)
            CONSUMER_LAG.labels(settings.service_name, sub.name, tp.topic, str(tp.partition)).set(
                max(0, ends.get(tp, 0) - position)
            )


async def _with_fetched(settings: ServiceSettings, msg: Any, record: Any) -> list[RawMessage]:
    """`record` and the records the consumer has already fetched after it (no wait), up to
    the batch bound per partition: what the broker had when the consumer got to it.

    Taken partition by partition: asked for all at once, the consumer fills the bound
    from the first partition it has records of, so a consumer behind on its topic handled
    one partition's batch at a time, its CPU and the database's taking turns; with each
    partition's share the batches run side by side (`ConsumerRuntime.consume_batch`).
    """
    first = _raw(record)
    batch = [first]
    consumer = getattr(msg, "consumer", None)
    limit = settings.consumer_batch_max_records
    if limit < 2 or not isinstance(consumer, AIOKafkaConsumer):
        return batch
    try:
        for tp in sorted(consumer.assignment()):
            same = tp.topic == first.topic and tp.partition == first.partition
            fetched = await consumer.getmany(tp, timeout_ms=0, max_records=limit - same)
            batch.extend(_raw(r) for records in fetched.values() for r in records)
    except KafkaError as exc:
        # The fetch error is raised again to FastStream's loop on its next read (and the
        # records already taken are handled below, then committed).
        log.warning("consumer.fetch_failed", error=type(exc).__name__)
    return batch


async def _commit(msg: Any, sub: Subscription) -> None:
    """Commit the message's offset; a group that moved on meanwhile is not an error.

    After a rebalance (a broker restart, a member that left) this member's commit is
    refused; the effect is already committed with its inbox row, and the partition's new
    owner reads the message again and skips it.
    """
    try:
        await msg.ack()
    except (CommitFailedError, UnknownMemberIdError, IllegalGenerationError) as exc:
        log.warning("consumer.commit_refused", consumer=sub.name, error=type(exc).__name__)


class KeyPipeline:
    """An effect-first subscription's events handed on as they are fetched, not a fetch at
    a time: each key's events one after another in offset order, up to
    `consumer_effect_first_keys_at_once` handlers calling out at once, and the next fetch
    read while they run. A fetch at a time made every event wait for the slowest EHR call
    of the fetch before it: a booking committed while ten others were being written waited
    for all of them before its own began (a third of a second to most of one, traced).

    Offsets: a partition is committed up to its lowest event not yet stored (all handed on
    when none is open), so a crash redelivers every event whose outcome is not in the inbox
    and nothing is committed past one. At most `consumer_batch_max_records` events are held
    at once; the handler waits for room, so the consumer stops reading when handlers lag.
    """

    def __init__(self, runtime: ConsumerRuntime, sub: Subscription) -> None:
        self._runtime = runtime
        self._sub = sub
        self._room = asyncio.Semaphore(runtime.settings.consumer_batch_max_records)
        self._calling = asyncio.Semaphore(runtime.settings.consumer_effect_first_keys_at_once)
        self._tails: dict[str, asyncio.Task[None]] = {}
        # Per partition: offsets handed on and not stored yet (a multiset: after a rebalance
        # the same offset can be fetched again), and the offset after the last handed on.
        self._open: dict[TopicPartition, Counter[int]] = {}
        self._end: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._commit_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Events handed on whose outcome is not stored yet."""
        return sum(sum(c.values()) for c in self._open.values())

    async def submit(self, consumer: AIOKafkaConsumer, records: list[RawMessage]) -> None:
        """Hand on fetched records (in offset order per partition); returns once each has
        room, not once handled."""
        for raw in records:
            await self._room.acquire()
            tp = TopicPartition(raw.topic, raw.partition)
            self._open.setdefault(tp, Counter())[raw.offset] += 1
            self._end[tp] = max(self._end.get(tp, 0), raw.offset + 1)
            task = asyncio.create_task(self._one(consumer, tp, raw, self._tails.get(raw.key)))
            self._tails[raw.key] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _one(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        raw: RawMessage,
        before: asyncio.Task[None] | None,
    ) -> None:
        stored = False
        try:
            if before is not None:
                await asyncio.wait({before})  # the key's previous event first
            async with self._calling:
                await self._runtime.consume(self._sub, raw)
            stored = True
        except Exception:
            # `consume` stores an outcome for every message problem and waits out outages:
            # this is a bug. The offset stays open (nothing past it is committed), so the
            # event comes again after a restart.
            log.exception("consumer.pipeline_failed", consumer=self._sub.name, offset=raw.offset)
        finally:
            if self._tails.get(raw.key) is asyncio.current_task():
                del self._tails[raw.key]
            self._room.release()
        if stored:
            offsets = self._open[tp]
            offsets[raw.offset] -= 1
            if offsets[raw.offset] <= 0:
                del offsets[raw.offset]
            await self._commit(consumer, tp)

    async def _commit(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        async with self._commit_lock:
            offsets = self._open.get(tp)
            upto = min(offsets) if offsets else self._end[tp]
            if upto <= self._committed.get(tp, -1):
                return  # a later commit already covered it
            try:
                await consumer.commit({tp: upto})
            except KafkaError as exc:
                # Revoked by a rebalance or the consumer closed: the new owner reads from
                # the last commit and the inbox skips what is stored.
                log.warning(
                    "consumer.commit_refused", consumer=self._sub.name, error=type(exc).__name__
                )
                return
            self._committed[tp] = upto

    async def stop(self) -> None:
        """Cancel what is still running (its offsets were not committed: it comes again)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _pipeline_consumer(msg: Any) -> AIOKafkaConsumer | None:
    consumer = getattr(msg, "consumer", None)
    return consumer if isinstance(consumer, AIOKafkaConsumer) else None


def _middleware_for(
    runtime: ConsumerRuntime, pipelines: dict[str, KeyPipeline]
) -> type[BaseMiddleware]:
    class _UndecodableMiddleware(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
            try:
                return await call_next(msg)
            except Exception:
                record = msg.raw_message
                sub = runtime.subscription_for_topic(record.topic)
                batch = await _with_fetched(runtime.settings, msg, record)
                pipeline = pipelines.get(sub.name)
                consumer = _pipeline_consumer(msg)
                if pipeline is not None and consumer is not None:
                    # Behind the key's events in flight, and no commit past them.
                    await pipeline.submit(consumer, batch)
                    return None
                await runtime.consume_batch(sub, batch)
                await _commit(msg, sub)
                return None

    return _UndecodableMiddleware


def _handler_for(runtime: ConsumerRuntime, sub: Subscription, pipeline: KeyPipeline | None) -> Any:
    async def handle(body: Any, msg: KafkaMessage) -> None:
        batch = await _with_fetched(runtime.settings, msg, msg.raw_message)
        consumer = _pipeline_consumer(msg)
        if pipeline is not None and consumer is not None:
            await pipeline.submit(consumer, batch)
        else:
            await runtime.consume_batch(sub, batch)
            await _commit(msg, sub)
        last = {(m.topic, m.partition): m for m in batch}
        for record in last.values():
            _record_lag(runtime.settings, sub, msg, record)

    # The declared payload type is what the AsyncAPI document shows for this channel.
    handle.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=sub.model
            ),
            inspect.Parameter(
                "msg", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=KafkaMessage
            ),
        ],
        return_annotation=None,
    )
    handle.__name__ = sub.name
    handle.__doc__ = sub.description
    return handle


class _Broker(KafkaBroker):
    """FastStream's Kafka broker, starting its subscribers together: FastStream starts them
    one after another, and each waits for its consumer group's first join (on Tansu, half
    the session timeout), so a service with five subscriptions waited five joins before
    its last topic was read."""

    async def start(self) -> None:
        await self.connect()
        await asyncio.gather(*(sub.start() for sub in self.subscribers))
        for publisher in self.publishers:
            await publisher.start()
        self.running = True

    async def stop(self, *args: Any, **kwargs: Any) -> None:
        """Stop the consumers, then what the pipelines still run."""
        await super().stop(*args, **kwargs)
        for pipeline in self.pipelines.values():
            await pipeline.stop()

    # Set by `build_broker`: the pipelines of the effect-first subscriptions.
    pipelines: dict[str, KeyPipeline]


def build_broker(
    settings: ServiceSettings, runtime: ConsumerRuntime, publishes: tuple[str, ...] = ()
) -> KafkaBroker:
    """A broker with one subscriber per subscription (own consumer group each).

    `publishes` lists the event types the service emits through its outbox; they are
    declared as publishers only so the AsyncAPI document shows them (the outbox relay,
    not FastStream, does the publishing).
    """
    # Effect-first subscriptions hand events on as fetched (see `KeyPipeline`).
    pipelines = {
        sub.name: KeyPipeline(runtime, sub)
        for sub in runtime.router.subscriptions
        if sub.effect_first
    }
    broker = _Broker(
        settings.kafka_bootstrap_servers,
        client_id=settings.service_name,
        # SASL/TLS of KAFKA_SECURITY_PROTOCOL: the subscribers' consumers and the broker's
        # own producer use it.
        security=kafka_security.security(settings),
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        middlewares=[_middleware_for(runtime, pipelines)],
        graceful_timeout=10.0,
        # A plain logger (no coloured handler of FastStream's own: records reach the JSON
        # handler), and its per-message "Received"/"Processed" lines at debug level.
        logger=logging.getLogger("faststream.broker"),
        log_level=logging.DEBUG,
    )
    for sub in runtime.router.subscriptions:
        broker.subscriber(
            settings.topic(sub.event_type),
            group_id=settings.group_id(sub.name),
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
            fetch_max_wait_ms=settings.fetch_max_wait_ms(interactive=sub.interactive),
            title=f"{settings.topic(sub.event_type)}:{sub.name}",
            description=sub.description or None,
        )(_handler_for(runtime, sub, pipelines.get(sub.name)))
    broker.pipelines = pipelines
    for event_type in publishes:
        broker.publisher(
            settings.topic(event_type),
            schema=latest(event_type).model,
            title=f"{settings.topic(event_type)}:publish",
            description=f"Published by {settings.service_name} through its outbox",
        )
    return broker
