"""Outbox relay throughput against a raw producer, on one broker in the same run.

Publishes N events through the transactional outbox (one transaction per event, then the
relay with acks=all) and N raw messages with an acks=all producer (the baseline), and
reports the relay's throughput as a ratio of the baseline, so the figure means something
on a shared, noisy machine. Broker: Tansu by default, `KAFKA=apache` for Apache Kafka;
database: an embedded PostgreSQL in a temporary directory, or `BENCH_DATABASE_URL`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer

from contracts.patient import PatientLinkedV1
from devstack.brokers import make_broker
from devstack.postgres import EmbeddedPostgres, create_database
from devstack.topics import ensure_topics
from servicekit.db import Database
from servicekit.migrations import upgrade
from servicekit.outbox import Outbox, OutboxRelay
from servicekit.settings import ServiceSettings

N = int(os.environ.get("BENCH_EVENTS", "5000"))


async def baseline(bootstrap: str, topic: str, payload: bytes) -> float:
    """Messages per second of a plain acks=all producer."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        start = time.perf_counter()
        futures = [
            await producer.send(topic, payload, key=f"p{i % 100}".encode()) for i in range(N)
        ]
        await asyncio.gather(*futures)
        return N / (time.perf_counter() - start)
    finally:
        await producer.stop()


async def relay_rate(settings: ServiceSettings) -> tuple[float, float]:
    """(events written per second, events published per second) through the outbox."""
    db = Database(settings.resolved_database_url())
    await upgrade(db.url, None)
    outbox = Outbox(settings)
    start = time.perf_counter()
    for i in range(N):
        async with db.transaction() as session:
            outbox.add(
                session,
                PatientLinkedV1(
                    patient_id=f"p{i % 100}", patient_fhir_id="x", linked_at=datetime.now(UTC)
                ),
                subject=f"p{i % 100}",
            )
    written = N / (time.perf_counter() - start)
    relay = OutboxRelay(db, settings, outbox)
    start = time.perf_counter()
    published = 0
    while published < N:
        published += await relay.publish_batch()
    rate = N / (time.perf_counter() - start)
    await relay._reset_producer()
    await db.dispose()
    return written, rate


async def main() -> int:
    kind = os.environ.get("KAFKA", "tansu")
    work = Path(tempfile.mkdtemp(prefix="bench-outbox-"))
    broker = make_broker(kind, data_dir=work / "kafka")
    postgres = EmbeddedPostgres(work / "postgres")
    await broker.start()
    try:
        await broker.wait_ready(timeout=180)
        bootstrap = broker.bootstrap_servers
        await ensure_topics(bootstrap, "bench.")
        settings = ServiceSettings(
            service_name="bench",
            database_url=os.environ.get("BENCH_DATABASE_URL")
            or await create_database("bench", postgres.start()),
            kafka_bootstrap_servers=bootstrap,
            kafka_enable_idempotence=kind == "apache",
            topic_prefix="bench.",
            outbox_batch_size=500,
        )
        payload = (
            PatientLinkedV1(patient_id="p1", patient_fhir_id="x", linked_at=datetime.now(UTC))
            .model_dump_json()
            .encode()
        )
        raw = await baseline(bootstrap, "bench.patient.linked", payload)
        written, relayed = await relay_rate(settings)
    finally:
        postgres.remove()
        await broker.stop()
    print(f"broker={kind} events={N}")
    print(f"baseline raw producer (acks=all): {raw:,.0f} msg/s")
    print(f"outbox writes (1 transaction each): {written:,.0f} events/s")
    print(f"outbox relay publish: {relayed:,.0f} events/s = {relayed / raw:.2f}x the raw producer")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
