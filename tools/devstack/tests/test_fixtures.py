"""The root conftest's shared fixtures, as other packages' tests use them."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from devstack.brokers import Broker
from devstack.topics import ensure_topics


async def _round_trip(bootstrap: str, topic: str, value: bytes, idempotent: bool) -> list[bytes]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=idempotent
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"p", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        values: list[bytes] = []
        while await consumer.position(partition) < end:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                values.extend(r.value for r in records if r.value is not None)
        return values
    finally:
        await consumer.stop()


async def test_kafka_bootstrap_serves_produce_and_consume(
    kafka_bootstrap: str, kafka_enable_idempotence: bool, kafka_kind: str, unique_prefix: str
) -> None:
    assert kafka_kind in ("tansu", "apache", "external")
    assert kafka_enable_idempotence == (kafka_kind == "apache") or kafka_kind == "external"
    created = await ensure_topics(
        kafka_bootstrap, prefix=unique_prefix, names_and_partitions=[("fixture", 2)]
    )
    assert created == {f"{unique_prefix}fixture": 2}
    values = await _round_trip(
        kafka_bootstrap, f"{unique_prefix}fixture", b"hello", kafka_enable_idempotence
    )
    assert values == [b"hello"]


def _only_a_persistent_broker(broker: Broker) -> None:
    if broker.kind != "apache":
        pytest.skip(
            "restarting the session's Tansu would empty it under later tests' session fixtures; "
            "runs with KAFKA=apache (as in CI)"
        )


@pytest.mark.chaos
async def test_kafka_broker_restarts_on_the_same_port(
    kafka_broker: Broker,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    _only_a_persistent_broker(kafka_broker)
    topic = f"{unique_prefix}durable"
    await ensure_topics(kafka_bootstrap, names_and_partitions=[(topic, 1)])
    await _round_trip(kafka_bootstrap, topic, b"before", kafka_enable_idempotence)
    await kafka_broker.kill()
    assert not kafka_broker.is_running()
    await kafka_broker.start()
    await kafka_broker.wait_ready(timeout=180)
    assert kafka_broker.bootstrap_servers == kafka_bootstrap
    values = await _round_trip(kafka_bootstrap, topic, b"after", kafka_enable_idempotence)
    assert values == [b"before", b"after"]


@pytest.mark.chaos
async def test_a_broker_left_down_by_a_test(kafka_broker: Broker) -> None:
    _only_a_persistent_broker(kafka_broker)
    await kafka_broker.stop()
    assert not kafka_broker.is_running()


async def test_is_running_again_for_the_next_test(kafka_broker: Broker) -> None:
    assert kafka_broker.is_running()


async def test_database_url_is_a_fresh_database(database_url: str, postgres_url: str) -> None:
    assert urlsplit(database_url).path.startswith("/test_")
    assert urlsplit(database_url).netloc == urlsplit(postgres_url).netloc
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
        await conn.execute("CREATE TABLE mine (id int)")
    finally:
        await conn.close()


def test_unique_prefix_is_short_and_safe(unique_prefix: str) -> None:
    assert re.fullmatch(r"t[0-9a-f]{8}\.", unique_prefix)
