"""The FastStream Kafka broker of a service, with its subscriptions registered.

Subscribers use manual acks: `ConsumerRuntime.consume` stores an outcome, then the
offset is committed. Subscriber signatures carry the payload model, so the AsyncAPI
document generated from this broker shows every consumed schema; a message that fails
FastStream's own decoding is caught by `_UndecodableMiddleware` and dead-lettered by the
same runtime (with a reason), so it never stalls or silently skips a partition.
"""

from __future__ import annotations

import inspect
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalGenerationError, UnknownMemberIdError
from faststream import AckPolicy, BaseMiddleware
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage

from contracts.registry import latest
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
    consumer = getattr(msg, "consumer", None)
    highwater = getattr(consumer, "highwater", None)
    if highwater is None:
        return
    end = highwater(TopicPartition(record.topic, record.partition))
    if end is not None:
        CONSUMER_LAG.labels(settings.service_name, sub.name, str(record.partition)).set(
            max(0, end - record.offset - 1)
        )


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
                await runtime.consume(sub, _raw(record))
                await _commit(msg, sub)
                return None

    return _UndecodableMiddleware


def _handler_for(runtime: ConsumerRuntime, sub: Subscription) -> Any:
    async def handle(body: Any, msg: KafkaMessage) -> None:
        record = msg.raw_message
        await runtime.consume(sub, _raw(record))
        await _commit(msg, sub)
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


def build_broker(
    settings: ServiceSettings, runtime: ConsumerRuntime, publishes: tuple[str, ...] = ()
) -> KafkaBroker:
    """A broker with one subscriber per subscription (own consumer group each).

    `publishes` lists the event types the service emits through its outbox; they are
    declared as publishers only so the AsyncAPI document shows them (the outbox relay,
    not FastStream, does the publishing).
    """
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=settings.service_name,
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        middlewares=[_middleware_for(runtime)],
        graceful_timeout=10.0,
    )
    for sub in runtime.router.subscriptions:
        broker.subscriber(
            settings.topic(sub.event_type),
            group_id=settings.group_id(sub.name),
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
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
