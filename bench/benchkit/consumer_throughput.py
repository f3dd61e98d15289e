"""Benchmark 3: event throughput of one consumer (records, on `lab.resulted`).

With records paused (SIGSTOP: its consumer reads nothing), `events` valid `lab.resulted`
events (contract payload and CloudEvents headers, as the connector publishes them) for
200 patients are produced to the topic; once the gateway (the topic's other consumer) has
handled them too, records resumes and drains alone, as the baseline does, measured by
the growth of its inbox (one row per handled event, in the same transaction as the read
model's write: inbox and ordering guarantees on). Rate = events / (last - first handled).
Baseline: raw aiokafka consuming the same events from the same offsets and one PostgreSQL
upsert per event (asyncpg, one transaction per fetched batch), into a scratch database on
the same server.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from contracts.base import Coding, Quantity, SourceVersion
from contracts.envelope import build_headers
from contracts.lab import LabObservation, LabResultedV1, ReportStatus
from devstack.postgres import create_database, drop_database

from .baseline import partitions_of
from .context import BOOTSTRAP, Context, histogram_totals
from .report import Progress, Result, ratio

TOPIC = "lab.resulted"
BATCH = 500
RECORDS = "http://127.0.0.1:8001"  # records (DESIGN: fixed port)


def _dsn(base: str, database: str) -> str:
    """The stack's PostgreSQL URL (from stack.json) pointed at `database`, for asyncpg."""
    parts = urlsplit(base)
    scheme = parts.scheme.split("+", 1)[0]
    return urlunsplit((scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def _event(n: int, run: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    patient = f"pat-bench-{n % 200:04d}"
    now = datetime.now(UTC)
    report = f"bench-{run}-{n}"
    payload = LabResultedV1(
        patient_id=patient,
        report_fhir_id=report,
        status=ReportStatus.FINAL,
        code=Coding(system="http://loinc.org", code="4548-4", display="Hemoglobin A1c"),
        effective=now,
        issued=now,
        observations=[
            LabObservation(
                observation_fhir_id=f"{report}-obs",
                code=Coding(system="http://loinc.org", code="4548-4", display="Hemoglobin A1c"),
                status="final",
                value_quantity=Quantity(value=5.0 + (n % 30) / 10, unit="%", code="%"),
            )
        ],
        source=SourceVersion(
            resource_type="DiagnosticReport", fhir_id=report, version_id="1", last_updated=now
        ),
    )
    headers = build_headers(
        event_type=TOPIC,
        subject=patient,
        source_service="ehr-connector",
        dataschema=f"{TOPIC}/v1",
        time=now,
    )
    return payload.model_dump_json().encode(), patient.encode(), headers


async def _end_offsets(consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
    partitions = await partitions_of(BOOTSTRAP, TOPIC)
    tps = [TopicPartition(TOPIC, p) for p in sorted(partitions)]
    ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    return ends


async def _preload(count: int) -> dict[TopicPartition, int]:
    """Produce `count` events; returns each partition's offset before them."""
    run = uuid.uuid4().hex[:8]
    probe = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
    await probe.start()
    try:
        starts = await _end_offsets(probe)
    finally:
        await probe.stop()
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=5)
    await producer.start()
    progress = Progress("m3 pre-load", 0)
    try:
        futures = []
        for n in range(count):
            value, key, headers = _event(n, run)
            futures.append(await producer.send(TOPIC, value, key=key, headers=headers))
            if n % 1000 == 0:
                progress.update(n, "events produced")
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return starts


async def _batches() -> tuple[float, float]:
    """Records' partition batches so far and the events in them, from its /metrics (every
    consumer of records: only lab.resulted flows while the benchmark drains)."""
    return await histogram_totals(RECORDS, "consumer_batch_events")


async def _inbox_count(connection: asyncpg.Connection) -> int:
    value = await connection.fetchval("SELECT count(*) FROM inbox")
    return int(value)


async def _gateway_drained(ctx: Context, before: int, count: int) -> float:
    """Wait until the gateway (the topic's other consumer: a notification per lab result)
    has handled the pre-loaded events; returns how long that took after the pre-load."""
    started = time.monotonic()
    gateway = await asyncpg.connect(_dsn(ctx.stack.database_url(), "portal_gateway"))
    try:
        progress = Progress("m3 gateway drain (records paused)", count)
        deadline = started + ctx.settings.drain_limit_s
        while time.monotonic() < deadline:
            handled = await _inbox_count(gateway) - before
            progress.update(handled, "events handled")
            if handled >= count:
                break
            await asyncio.sleep(0.1)
    finally:
        await gateway.close()
    return round(time.monotonic() - started, 2)


async def _ours(ctx: Context, count: int) -> dict[str, Any]:
    connection = await asyncpg.connect(_dsn(ctx.stack.database_url(), "portal_records"))
    gateway = await asyncpg.connect(_dsn(ctx.stack.database_url(), "portal_gateway"))
    try:
        gateway_before = await _inbox_count(gateway)
    finally:
        await gateway.close()
    try:
        batches_before = await _batches()  # asked before records is paused
        ctx.pause("records", True)
        try:
            before = await _inbox_count(connection)
            starts = await _preload(count)
            # Records alone, as the baseline runs alone: on two cores the gateway's own
            # drain of the same events took most of a core beside records' (sampled).
            gateway_wait_s = await _gateway_drained(ctx, gateway_before, count)
        finally:
            resumed = time.monotonic()
            ctx.pause("records", False)
        if ctx.profiler is not None:
            # Attached once resumed (py-spy waits on a stopped process): it misses the
            # drain's first ~0.2 s, nothing of a full-size run's.
            await ctx.profiler.start("m3", {"records": ctx.pids()["records"]})
        progress = Progress("m3 records drain", 0)
        first: float | None = None
        handled = 0
        # A slow consumer is measured on what it handled in the time limit.
        deadline = resumed + ctx.settings.drain_limit_s
        while handled < count and time.monotonic() < deadline:
            handled = await _inbox_count(connection) - before
            if handled > 0 and first is None:
                first = time.monotonic()
            progress.update(handled, "events handled")
            await asyncio.sleep(0.05)
        done = time.monotonic()
    finally:
        await connection.close()
    if ctx.profiler is not None:
        ctx.extra_results.append(await ctx.profiler.result("benchmark 3's drain (records)"))
    busy = done - (first or resumed)
    batches_after = await _batches()
    batches = batches_after[0] - batches_before[0]
    return {
        "mean_batch_events": round((batches_after[1] - batches_before[1]) / batches, 1)
        if batches
        else None,
        "handled": handled,
        "starts": starts,
        "events_per_s": round(handled / busy, 1) if busy > 0 else None,
        "drain_s": round(done - resumed, 2),
        "first_event_after_s": round((first or done) - resumed, 2),
        "gateway_drained_after_preload_s": gateway_wait_s,
    }


async def _baseline(
    ctx: Context, starts: dict[TopicPartition, int], count: int, per_transaction: int
) -> dict[str, Any]:
    """Raw consume + upsert, `per_transaction` events per PostgreSQL transaction."""
    scratch = f"bench_m3_{uuid.uuid4().hex[:8]}"
    base_url = ctx.stack.database_url()
    try:
        await create_database(scratch, base_url)
        connection = await asyncpg.connect(_dsn(base_url, scratch))
        try:
            await connection.execute(
                "CREATE TABLE lab (report text PRIMARY KEY, patient text NOT NULL, "
                "body jsonb NOT NULL, updated timestamptz NOT NULL)"
            )
            consumer = AIOKafkaConsumer(
                bootstrap_servers=BOOTSTRAP, enable_auto_commit=False, max_poll_records=BATCH
            )
            await consumer.start()
            try:
                consumer.assign(list(starts))
                for tp, offset in starts.items():
                    consumer.seek(tp, offset)
                done = 0
                progress = Progress("m3 baseline drain", 0)
                start = time.monotonic()
                deadline = start + ctx.settings.drain_limit_s
                while done < count and time.monotonic() < deadline:
                    batches = await consumer.getmany(timeout_ms=200, max_records=BATCH)
                    rows = [
                        (
                            body["report_fhir_id"],
                            body["patient_id"],
                            message.value.decode(),
                            datetime.now(UTC),
                        )
                        for messages in batches.values()
                        for message in messages
                        for body in [json.loads(message.value)]
                    ]
                    if not rows:
                        continue
                    for first in range(0, len(rows), per_transaction):
                        async with connection.transaction():
                            await connection.executemany(
                                "INSERT INTO lab (report, patient, body, updated) "
                                "VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (report) DO UPDATE "
                                "SET body = EXCLUDED.body, updated = EXCLUDED.updated",
                                rows[first : first + per_transaction],
                            )
                    done += len(rows)
                    progress.update(done, "events upserted")
                elapsed = time.monotonic() - start
            finally:
                await consumer.stop()
        finally:
            await connection.close()
    finally:
        await drop_database(scratch, base_url)
    return {"handled": done, "events_per_s": round(done / elapsed, 1) if elapsed else None}


async def run(ctx: Context) -> Result:
    """Benchmark 3 and its baseline."""
    started = time.monotonic()
    count = ctx.settings.preload_events
    ours = await _ours(ctx, count)
    base = await _baseline(ctx, ours["starts"], count, BATCH)
    # The same raw work with a transaction per event: what records' one transaction per
    # fetched batch (inbox rows and read model together) saves on this machine.
    single = await _baseline(ctx, ours["starts"], count, 1)
    figures: dict[str, Any] = {
        "events": count,
        "handled": ours["handled"],
        "events_per_s": ours["events_per_s"],
        "drain_s": ours["drain_s"],
        "first_event_after_s": ours["first_event_after_s"],
        "mean_batch_events": ours["mean_batch_events"],
        "gateway_drained_after_preload_s": ours["gateway_drained_after_preload_s"],
    }
    baseline = {
        "events": count,
        "handled": base["handled"],
        "events_per_s": base["events_per_s"],
        "events_per_s_tx_per_event": single["events_per_s"],
    }
    result = Result(
        name="m3_consumer_throughput",
        title="3. Event throughput per consumer (records, lab.resulted)",
        config={"events": count, "patients": 200, "baseline_batch": BATCH},
        figures={**figures, "events_per_s_tx_per_event": ours["events_per_s"]},
        baseline=baseline,
        ratios={
            "events_per_s": ratio(ours["events_per_s"], base["events_per_s"]),
            "events_per_s_tx_per_event": ratio(ours["events_per_s"], single["events_per_s"]),
        },
        notes=[
            "Records paused (SIGSTOP) while the events are produced and while the gateway "
            "(the topic's other consumer) handles them, then resumed: records drains alone, "
            "as the baseline does; first_event_after_s includes the consumer group's rejoin "
            "after the pause.",
            f"Drain limited to {ctx.settings.drain_limit_s:g} s: the rate is over what was "
            "handled by then.",
        ],
    )
    result.elapsed_s = time.monotonic() - started
    return result
