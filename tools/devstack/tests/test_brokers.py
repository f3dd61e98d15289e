"""Tansu and Apache Kafka runners: start, produce, consume, stop, restart."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from devstack.brokers import (
    ApacheKafkaBroker,
    BrokerError,
    TansuBroker,
    fetch_kafka_jars,
    kafka_dir,
    make_broker,
)
from devstack.topics import ensure_topics


async def _produce(bootstrap: str, topic: str, values: list[bytes], *, idempotent: bool) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=idempotent
    )
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"patient-1")
    finally:
        await producer.stop()


async def _consume_all(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    """Every value on the topic, read without a consumer group (no join delay)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        values: list[bytes] = []
        while [tp for tp in assigned if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                values.extend(record.value for record in records if record.value is not None)
        return values
    finally:
        await consumer.stop()


async def test_tansu_starts_serves_and_stops(tmp_path: Path) -> None:
    broker = TansuBroker(port=19092, data_dir=tmp_path)
    assert broker.kind == "tansu"
    assert broker.bootstrap_servers == "127.0.0.1:19092"
    await broker.start()
    try:
        await broker.wait_ready(timeout=20)
        await ensure_topics(broker.bootstrap_servers, names_and_partitions=[("tansu.t", 2)])
        sent = [f"value-{i}".encode() for i in range(5)]
        await _produce(broker.bootstrap_servers, "tansu.t", sent, idempotent=False)
        assert await _consume_all(broker.bootstrap_servers, "tansu.t", 2) == sent
    finally:
        await broker.stop()
    assert not broker.is_running()
    assert "listening on: tcp://127.0.0.1:19092" in broker.log_path.read_text()


async def test_tansu_kill_is_immediate_and_a_restart_starts_empty() -> None:
    broker = TansuBroker(port=19092)
    async with broker:
        await ensure_topics(broker.bootstrap_servers, names_and_partitions=[("gone", 1)])
        await broker.kill()
        assert not broker.is_running()
        await broker.start()
        await broker.wait_ready(timeout=20)
        assert "gone" not in await ensure_topics(
            broker.bootstrap_servers, names_and_partitions=[("other", 1)]
        )
    assert not broker.log_path.parent.exists(), "a temporary log directory is removed"


async def test_a_broker_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    first = TansuBroker(port=19092, data_dir=tmp_path / "a")
    async with first:
        second = TansuBroker(port=19092, data_dir=tmp_path / "b")
        with pytest.raises(BrokerError, match="already in use"):
            await second.start()


def test_make_broker_knows_both_kinds(tmp_path: Path) -> None:
    assert isinstance(make_broker("tansu", port=19092), TansuBroker)
    apache = make_broker("apache", port=19093, data_dir=tmp_path)
    assert isinstance(apache, ApacheKafkaBroker)
    assert apache.enable_idempotence
    with pytest.raises(ValueError, match="unknown broker kind"):
        make_broker("redpanda")


def test_apache_configuration(tmp_path: Path) -> None:
    broker = ApacheKafkaBroker(data_dir=tmp_path, port=19093, controller_port=19094)
    props = dict(
        line.split("=", 1) for line in broker.server_properties().splitlines() if "=" in line
    )
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19093,CONTROLLER://127.0.0.1:19094"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "true"
    assert props["num.partitions"] == "3"
    assert props["log.dirs"] == str(tmp_path / "logs")


requires_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="Apache Kafka needs Java: apt-get install openjdk-17"
)


@pytest.mark.integration
@requires_java
async def test_apache_kafka_keeps_its_data_across_stop_kill_and_restart(tmp_path: Path) -> None:
    broker = ApacheKafkaBroker(data_dir=tmp_path / "kafka", port=19093, controller_port=19094)
    topic = "apache.durable"
    try:
        await broker.start()
        await broker.wait_ready(timeout=120)
        created = await ensure_topics(broker.bootstrap_servers, names_and_partitions=[(topic, 3)])
        assert created == {topic: 3}
        first = [f"before-restart-{i}".encode() for i in range(10)]
        await _produce(broker.bootstrap_servers, topic, first, idempotent=True)

        await broker.stop()
        assert not broker.is_running()
        await broker.start()
        await broker.wait_ready(timeout=120)
        assert sorted(await _consume_all(broker.bootstrap_servers, topic, 3)) == sorted(first)

        second = [b"before-kill"]
        await _produce(broker.bootstrap_servers, topic, second, idempotent=True)
        await broker.kill()
        # A runner created later on the same directory finds the same ports and data.
        again = ApacheKafkaBroker(data_dir=tmp_path / "kafka")
        assert (again.port, again.controller_port) == (19093, 19094)
        broker = again
        await broker.start()
        await broker.wait_ready(timeout=120)
        values = await _consume_all(broker.bootstrap_servers, topic, 3)
        assert sorted(values) == sorted(first + second)
        log = broker.log_path.read_text()
        assert log.count("--- devstack") == 3
        assert "Kafka Server started" in log
    finally:
        await broker.stop()
    assert not broker.is_running()


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("mvn") is None, reason="needs Maven: apt-get install maven")
def test_fetch_kafka_jars_fills_an_empty_lib_once(tmp_path: Path) -> None:
    shutil.copy(kafka_dir() / "pom.xml", tmp_path / "pom.xml")
    lib = fetch_kafka_jars(tmp_path)
    assert lib == tmp_path / "lib"
    jars = {jar.name for jar in lib.glob("*.jar")}
    assert any(name.startswith("kafka_2.13-4.") for name in jars)
    assert any(name.startswith("log4j-core-") for name in jars)
    stamp = (lib / ".fetched").stat().st_mtime_ns
    assert fetch_kafka_jars(tmp_path) == lib
    assert (lib / ".fetched").stat().st_mtime_ns == stamp, "a filled lib/ is not fetched again"
