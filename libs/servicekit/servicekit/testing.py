"""Helpers for tests of services built with the kit: produce real events, read topics back,
wait for a condition. Used by every service's tests; not imported by production code."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from contracts.base import Payload
from contracts.envelope import build_headers
from contracts.registry import for_model
from servicekit.consumer import RawMessage
from servicekit.identity import DEV_SERVICE_TOKEN_KEY, ServiceTokens

if TYPE_CHECKING:
    from servicekit.app import Service

# Offsets of delivered messages: unique within the process, as the dead-letter rows want.
_delivered_offsets = itertools.count()


@dataclass(frozen=True)
class Seen:
    """One record as read back from the broker."""

    partition: int
    offset: int
    key: str
    headers: dict[str, str]
    value: bytes


async def produce_events(
    bootstrap: str,
    events: list[tuple[str, Payload]],
    *,
    topic_prefix: str = "",
    source: str = "tests",
    event_ids: list[str] | None = None,
) -> list[str]:
    """Publish `(patient_id, payload)` events with a valid envelope; returns their ids."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    ids: list[str] = []
    try:
        for i, (subject, payload) in enumerate(events):
            entry = for_model(type(payload))
            headers = build_headers(
                event_type=entry.topic,
                subject=subject,
                source_service=source,
                dataschema=entry.dataschema,
                event_id=event_ids[i] if event_ids else None,
                time=datetime.now(UTC),
            )
            ids.append(dict(headers)["ce_id"].decode())
            await producer.send_and_wait(
                topic_prefix + entry.topic,
                value=payload.model_dump_json().encode(),
                key=subject.encode(),
                headers=headers,
            )
    finally:
        await producer.stop()
    return ids


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Seen]], bool],
    timeout: float = 60.0,  # noqa: ASYNC109 - a deadline for the whole read
) -> list[Seen]:
    """Read `topic` from the beginning (no group) until `until(records)` holds."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    seen: list[Seen] = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            # A consumer without a group keeps metadata only for topics it was told about.
            cluster = await consumer._client.fetch_all_metadata()
            partitions = cluster.partitions_for_topic(topic)
            if partitions:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} does not exist")
            await asyncio.sleep(0.1)
        parts = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        while not until(seen):
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(seen)} records from {topic}, condition not met")
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                seen.extend(
                    Seen(
                        partition=r.partition,
                        offset=r.offset,
                        key=(r.key or b"").decode(),
                        headers={k: v.decode() for k, v in r.headers},
                        value=r.value or b"",
                    )
                    for r in records
                )
    finally:
        await consumer.stop()
    return seen


async def eventually(
    check: Callable[[], Awaitable[object]],
    timeout: float = 60.0,  # noqa: ASYNC109 - a deadline for the whole wait
    interval: float = 0.05,
) -> None:
    """Wait until `await check()` is truthy; fails with the last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)


async def until_count(
    count: Callable[[], Awaitable[int]],
    target: int,
    stall: float = 60.0,
    interval: float = 0.1,
) -> None:
    """Wait until `await count()` reaches `target`, for as long as it keeps growing: fails
    when it stands still for `stall` seconds. For bulk work, whose duration depends on the
    machine's speed, while a real stall (lost messages, a wedged consumer) still fails."""
    last = -1
    moved = time.monotonic()
    while True:
        value = await count()
        if value >= target:
            return
        now = time.monotonic()
        if value != last:
            last, moved = value, now
        elif now - moved > stall:
            raise AssertionError(f"stuck at {value} of {target} for {stall}s")
        await asyncio.sleep(interval)


def isolated_settings(database_url: str, bootstrap: str, prefix: str) -> dict[str, Any]:
    """Settings values that give a service under test its own database, topics and groups
    on the session's broker (`KAFKA=apache` turns idempotent producing on, as in CI)."""
    return {
        "database_url": database_url,
        "kafka_bootstrap_servers": bootstrap,
        "kafka_enable_idempotence": os.environ.get("KAFKA") == "apache",
        "topic_prefix": prefix,
        "group_prefix": prefix,
        "outbox_poll_interval_s": 0.05,
        "outbox_idle_poll_max_s": 0.05,
        "log_level": "WARNING",
    }


def service_headers(
    audience: str, *, caller: str = "tests", key: str = DEV_SERVICE_TOKEN_KEY
) -> dict[str, str]:
    """`Authorization` with a service token from `caller` for calling `audience` directly
    (one line in a test: `headers=service_headers("records")`)."""
    return ServiceTokens(caller, key).headers(audience)


def service_auth_for(app: Any, *, caller: str = "tests") -> httpx.Auth:
    """An httpx auth signing every request for the service `app` is (its own key)."""
    settings = app.state.service.settings
    return ServiceTokens(caller, settings.service_token_key).auth(settings.service_name)


@contextlib.asynccontextmanager
async def serving_in_process(
    app: Any, base_url: str, *, service_token: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """Run an app's lifespan (relay, consumers) and give an HTTP client on it, in-process,
    which presents a service token as another service would (`service_token=False`: none;
    an Authorization header set on a request wins).
    Start-up runs migrations: on a loaded 2-core machine that can exceed asgi-lifespan's
    default 5 s, so the bound is generous (it only matters when something hangs)."""
    from asgi_lifespan import LifespanManager

    service = getattr(app.state, "service", None)
    # Only a service with routes for other services wants a service token (the gateway's
    # public API takes patients' tokens).
    internal = service is not None and service.definition.api is not None
    auth = service_auth_for(app) if service_token and internal else None

    # Stopping a consumer that is still joining its group waits for the join to finish,
    # and the embedded broker delays a group's first join by ~5 s (ecosystem notes): the
    # default 5-s lifespan limits made quick tests fail in teardown, now and then.
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=base_url, auth=auth
        ) as client,
    ):
        yield client


def broker_less_settings(database_url: str) -> dict[str, Any]:
    """Settings values for a service whose handlers are driven by `deliver`: its own
    database, no consumers, no relay, and a broker address nothing listens on (the service
    keeps trying to connect in the background, which changes nothing here)."""
    return {
        "database_url": database_url,
        "kafka_bootstrap_servers": "127.0.0.1:9",
        "consumers_enabled": False,
        "relay_enabled": False,
        "consumer_retry_base_s": 0.001,
        "consumer_retry_max_s": 0.002,
        "log_level": "WARNING",
    }


async def deliver(
    service: Service,
    payload: Payload,
    *,
    subject: str,
    event_id: str | None = None,
    source: str = "tests",
) -> str:
    """Hand one event to the service's handler as its Kafka subscriber would, without a
    broker: the same envelope parsing, inbox, unit of work (or effect-first handler),
    outbox, retries, dead letters and parking (`ConsumerRuntime.consume`), on the service's
    own database. Returns the outcome (`handled`, `duplicate`, `dead_lettered`, `parked`).

    The service must have its database prepared (its lifespan ran, or `prepare_database`);
    what the handler publishes stays in its outbox unless its relay runs."""
    entry = for_model(type(payload))
    topic = service.settings.topic(entry.topic)
    headers = build_headers(
        event_type=entry.topic,
        subject=subject,
        source_service=source,
        dataschema=entry.dataschema,
        event_id=event_id,
        time=datetime.now(UTC),
    )
    message = RawMessage(
        topic=topic,
        partition=0,
        offset=next(_delivered_offsets),
        key=subject,
        headers=headers,
        value=payload.model_dump_json().encode(),
    )
    runtime = service.runtime
    return await runtime.consume(runtime.subscription_for_topic(topic), message)


async def deliver_batch(
    service: Service,
    events: list[tuple[str, Payload]],
    *,
    source: str = "tests",
) -> list[str]:
    """Hand `(subject, payload)` events of one event type to the service's consumer as one
    fetched batch of one partition, in this order (`ConsumerRuntime.consume_batch`: one
    transaction for all, or one each when that fails). Returns the outcomes in order."""
    messages: list[RawMessage] = []
    topic = ""
    for subject, payload in events:
        entry = for_model(type(payload))
        topic = service.settings.topic(entry.topic)
        headers = build_headers(
            event_type=entry.topic,
            subject=subject,
            source_service=source,
            dataschema=entry.dataschema,
            time=datetime.now(UTC),
        )
        messages.append(
            RawMessage(
                topic=topic,
                partition=0,
                offset=next(_delivered_offsets),
                key=subject,
                headers=headers,
                value=payload.model_dump_json().encode(),
            )
        )
    runtime = service.runtime
    return await runtime.consume_batch(runtime.subscription_for_topic(topic), messages)


async def table_file_bytes(database_url: str, tables: Sequence[str]) -> dict[str, bytes]:
    """Each table's heap file (and its TOAST table's) as PostgreSQL wrote them to disk:
    `VACUUM FULL` rewrites a table into a new file straight to disk (not left in shared
    buffers), so searching these bytes for a plaintext proves whether it is stored. Skips
    the test when this process cannot read the server's data directory."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        data_dir = await _data_directory(conn, database_url, tables[0])
        out: dict[str, bytes] = {}
        for table in tables:
            await conn.execute(f"VACUUM FULL {table}")
            row = await conn.fetchrow(
                "SELECT pg_relation_filepath(oid) AS heap, "
                "CASE WHEN reltoastrelid <> 0 THEN pg_relation_filepath(reltoastrelid) END AS toast"
                " FROM pg_class WHERE oid = $1::regclass",
                table,
            )
            paths = [data_dir / p for p in (row["heap"], row["toast"]) if p]
            out[table] = await asyncio.to_thread(_read_relation_files, paths)
        return out
    finally:
        await conn.close()


async def _data_directory(conn: Any, database_url: str, table: str) -> Path:
    """The server's data directory: asked (superuser), else where this machine keeps it."""
    import asyncpg
    import pytest

    try:
        return Path(await conn.fetchval("SELECT current_setting('data_directory')"))
    except asyncpg.InsufficientPrivilegeError:
        pass
    host = parse_qs(urlsplit(database_url).query).get("host", [])
    candidates = [*host, os.environ.get("PGDATA", ""), *glob.glob("/var/lib/postgresql/*/main")]
    relation = await conn.fetchval("SELECT pg_relation_filepath($1::regclass)", table)
    for candidate in candidates:
        if candidate and (Path(candidate) / relation).exists():
            return Path(candidate)
    pytest.skip("the PostgreSQL data directory is not readable from this process")


def _read_relation_files(paths: list[Path]) -> bytes:
    """The bytes of relation files and their extra segments (not the free-space maps)."""
    return b"".join(
        Path(p).read_bytes()
        for path in paths
        for p in glob.glob(f"{path}*")
        if not p.endswith(("_fsm", "_vm"))
    )
