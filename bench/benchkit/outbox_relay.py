"""The outbox relay against a raw producer (was bench/bench_outbox_relay.py).

Writes N events through the transactional outbox (one transaction per event), publishes
them with the relay (acks=all), and publishes N raw messages with an acks=all producer (the
baseline), on the stack's broker and a scratch database on the stack's PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from contracts.patient import PatientLinkedV1
from devstack.postgres import create_database, drop_database
from devstack.topics import ensure_topics
from servicekit.db import Database
from servicekit.migrations import upgrade
from servicekit.outbox import Outbox, OutboxRelay
from servicekit.settings import ServiceSettings

from .context import BOOTSTRAP, Context
from .report import Progress, Result, ratio


async def _raw(topic: str, payload: bytes, count: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=0)
    await producer.start()
    try:
        start = time.perf_counter()
        futures = [
            await producer.send(topic, payload, key=f"p{i % 100}".encode()) for i in range(count)
        ]
        await asyncio.gather(*futures)
        return count / (time.perf_counter() - start)
    finally:
        await producer.stop()


async def _relay(settings: ServiceSettings, count: int) -> tuple[float, float]:
    db = Database(settings.resolved_database_url())
    await upgrade(db.url, None)
    outbox = Outbox(settings)
    progress = Progress("outbox writes", 0)
    start = time.perf_counter()
    for i in range(count):
        async with db.transaction() as session:
            outbox.add(
                session,
                PatientLinkedV1(
                    patient_id=f"p{i % 100}", patient_fhir_id="x", linked_at=datetime.now(UTC)
                ),
                subject=f"p{i % 100}",
            )
        progress.update(i + 1, "events written")
    written = count / (time.perf_counter() - start)
    relay = OutboxRelay(db, settings, outbox)
    start = time.perf_counter()
    published = 0
    while published < count:
        published += await relay.publish_batch()
    rate = count / (time.perf_counter() - start)
    await relay._reset_producer()
    await db.dispose()
    return written, rate


async def run(ctx: Context) -> Result:
    """The relay's publish rate as a ratio of a raw producer's."""
    started = time.monotonic()
    count = 1000 if ctx.settings.quick else 5000
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    name = f"bench_outbox_{uuid.uuid4().hex[:8]}"
    base_url = ctx.stack.database_url()
    url = await create_database(name, base_url)
    try:
        await ensure_topics(BOOTSTRAP, prefix)
        settings = ServiceSettings(
            service_name="bench",
            database_url=url,
            kafka_bootstrap_servers=BOOTSTRAP,
            kafka_enable_idempotence=ctx.kafka == "apache",
            topic_prefix=prefix,
            outbox_batch_size=500,
        )
        payload = (
            PatientLinkedV1(patient_id="p1", patient_fhir_id="x", linked_at=datetime.now(UTC))
            .model_dump_json()
            .encode()
        )
        raw = await _raw(f"{prefix}patient.linked", payload, count)
        written, relayed = await _relay(settings, count)
    finally:
        await drop_database(name, base_url)
    figures: dict[str, Any] = {
        "publish_per_s": round(relayed, 1),
        "outbox_writes_per_s": round(written, 1),
    }
    baseline = {"publish_per_s": round(raw, 1)}
    result = Result(
        name="relay_outbox",
        title="Outbox relay vs a raw acks=all producer",
        config={"events": count},
        figures=figures,
        baseline=baseline,
        ratios={"publish_per_s": ratio(relayed, raw)},
        notes=[
            "Outbox writes: one transaction per event (no baseline: the raw producer "
            "has no database)."
        ],
    )
    result.elapsed_s = time.monotonic() - started
    return result
