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
    the batch bound: what the broker had when the consumer got to it."""
    batch = [_raw(record)]
    consumer = getattr(msg, "consumer", None)
    limit = settings.consumer_batch_max_records - 1
    if limit < 1 or not isinstance(consumer, AIOKafkaConsumer):
        return batch
    try:
        fetched = await consumer.getmany(timeout_ms=0, max_records=limit)
    except KafkaError as exc:
        # The fetch error is raised again to FastStream's loop on its next read (and the
        # records already taken are handled below, then committed).
        log.warning("consumer.fetch_failed", error=type(exc).__name__)
        return batch
    batch.extend(_raw(r) for records in fetched.values() for r in records)
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


def _middleware_for(runtime: ConsumerRuntime) -> type[BaseMiddleware]:
    class _UndecodableMiddleware(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
            try:
                return await call_next(msg)
            except Exception:
                record = msg.raw_message
                sub = runtime.subscription_for_topic(record.topic)
                await runtime.consume_batch(sub, await _with_fetched(runtime.settings, msg, record))
                await _commit(msg, sub)
                return None

    return _UndecodableMiddleware


def _handler_for(runtime: ConsumerRuntime, sub: Subscription) -> Any:
    async def handle(body: Any, msg: KafkaMessage) -> None:
        batch = await _with_fetched(runtime.settings, msg, msg.raw_message)
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


def build_broker(
    settings: ServiceSettings, runtime: ConsumerRuntime, publishes: tuple[str, ...] = ()
) -> KafkaBroker:
    """A broker with one subscriber per subscription (own consumer group each).

    `publishes` lists the event types the service emits through its outbox; they are
    declared as publishers only so the AsyncAPI document shows them (the outbox relay,
    not FastStream, does the publishing).
    """
    broker = _Broker(
        settings.kafka_bootstrap_servers,
        client_id=settings.service_name,
        # SASL/TLS of KAFKA_SECURITY_PROTOCOL: the subscribers' consumers and the broker's
        # own producer use it.
        security=kafka_security.security(settings),
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        middlewares=[_middleware_for(runtime)],
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
        )(_handler_for(runtime, sub))
    for event_type in publishes:
        broker.publisher(
            settings.topic(event_type),
            schema=latest(event_type).model,
            title=f"{settings.topic(event_type)}:publish",
            description=f"Published by {settings.service_name} through its outbox",
        )
    return broker
