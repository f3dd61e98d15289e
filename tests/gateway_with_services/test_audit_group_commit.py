"""The access log under concurrency (group commit): every read is recorded before it is
answered, concurrent records share one commit and still form one intact chain, and a
record that cannot be committed turns the read into a 503 with Retry-After, never into
data sent unrecorded.

The gateway runs as a real HTTP server with the real records service behind it; the access
log is the gateway's real PostgreSQL table.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.topics import ensure_topics
from ehr_sandbox.testing.http import free_port, running_sandbox, serve
from gateway import audit
from servicekit.app import Service
from servicekit.testing import eventually

from .services import gateway_service, records_service

pytestmark = [pytest.mark.integration]
READERS = 40


@dataclass
class Stack:
    gateway: Service
    url: str
    database_url: str
    sandbox_admin: httpx.AsyncClient


@pytest.fixture
async def stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    database_factory: Callable[[], Awaitable[str]],
    kafka_bootstrap: str,
    unique_prefix: str,
) -> AsyncIterator[Stack]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    dbs = {name: await database_factory() for name in ("gateway", "records")}
    async with running_sandbox(tmp_path, port=free_port()) as sandbox:
        records = records_service(dbs["records"], kafka_bootstrap, unique_prefix)
        gateway = gateway_service(
            dbs["gateway"],
            kafka_bootstrap,
            unique_prefix,
            issuer=sandbox.url,
            records_url="http://records",
            scheduling_url="http://records",
            messaging_url="http://records",
            # Everything runs in this one process: bounds far above what any call
            # takes here, unless a test asks for a short one (`indirect` parameter).
            upstream_timeout_s=30.0,
            audit_commit_timeout_s=getattr(request, "param", 30.0),
            # Many readers with one token, from one address: not what is tested here.
            rate_limit_ip_per_s=0,
            rate_limit_token_per_s=0,
            mounts={"http://records": httpx.ASGITransport(app=records.app)},
        )
        async with (
            LifespanManager(records.app, startup_timeout=60, shutdown_timeout=60),
            serve(gateway.app, free_port()) as url,
        ):
            yield Stack(gateway, url, dbs["gateway"], sandbox.admin)


@contextlib.asynccontextmanager
async def _client(stack: Stack, patient: str = "p-ann") -> AsyncIterator[httpx.AsyncClient]:
    """A client with the patient's token, their account linked (`/v1/me` is not audited)."""
    put = await stack.sandbox_admin.put(
        f"/fhir/Patient/{patient}",
        json={"resourceType": "Patient", "id": patient, "name": [{"family": "Example"}]},
        headers={"Content-Type": "application/fhir+json"},
    )
    assert put.status_code in (200, 201), put.text
    response = await stack.sandbox_admin.post("/dev/patient-token", json={"patient": patient})
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    async with httpx.AsyncClient(
        base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        assert (await client.get("/v1/me")).status_code == 200
        yield client


async def _rows(stack: Stack, patient_fhir_id: str) -> list[dict[str, Any]]:
    async with stack.gateway.db.sessions() as session:
        result = await session.execute(
            text(
                "SELECT id, resource, outcome, xmin::text AS tx FROM access_log "
                "WHERE on_behalf_of = :p ORDER BY id"
            ),
            {"p": patient_fhir_id},
        )
        return [dict(r) for r in result.mappings()]


async def test_concurrent_reads_are_each_recorded_in_one_intact_chain(stack: Stack) -> None:
    async with _client(stack) as client:
        paths = ["/v1/me/lab-results", "/v1/me/summary"] * (READERS // 2)
        answers = await asyncio.gather(*(client.get(path) for path in paths))
    assert [a.status_code for a in answers] == [200] * READERS
    rows = await _rows(stack, "p-ann")
    resources = [r["resource"] for r in rows]
    assert resources.count("DiagnosticReport") == READERS // 2
    assert resources.count("summary") == READERS // 2
    assert {r["outcome"] for r in rows} == {"allowed"}
    verdict = await audit.verify(stack.gateway)
    assert verdict.intact, verdict.problem


async def test_records_appended_together_share_one_commit_and_keep_the_chain(
    stack: Stack,
) -> None:
    writer = audit.AuditWriter(stack.gateway.db, audit.key_of(stack.gateway), max_batch=8)
    writer.start()
    try:
        # All 20 are queued before the writer runs: it takes 8, 8 and 4, one commit each.
        await asyncio.gather(
            *(
                writer.append(audit.access("pat-x", "self", "read", f"r{n}", on_behalf_of="p-x"))
                for n in range(20)
            )
        )
    finally:
        await writer.stop()
    rows = await _rows(stack, "p-x")
    assert [r["resource"] for r in rows] == [f"r{n}" for n in range(20)]
    commits = [r["tx"] for r in rows]
    assert [commits.count(tx) for tx in dict.fromkeys(commits)] == [8, 8, 4]
    verdict = await audit.verify(stack.gateway)
    assert verdict.intact, verdict.problem


async def test_a_full_queue_refuses_at_once_and_records_nothing_of_the_refused(
    stack: Stack,
) -> None:
    writer = audit.AuditWriter(stack.gateway.db, audit.key_of(stack.gateway), max_queue=1)
    writer.start()
    try:
        first, second = await asyncio.gather(
            writer.append(audit.access("pat-q", "self", "read", "first", on_behalf_of="p-q")),
            writer.append(audit.access("pat-q", "self", "read", "second", on_behalf_of="p-q")),
            return_exceptions=True,
        )
    finally:
        await writer.stop()
    assert first is None
    assert isinstance(second, audit.AuditUnavailable) and second.reason == "queue_full"
    assert [r["resource"] for r in await _rows(stack, "p-q")] == ["first"]


async def test_a_read_whose_record_cannot_be_committed_is_503_and_never_answered(
    stack: Stack,
) -> None:
    async with _client(stack) as client:
        async with stack.gateway.db.transaction() as session:
            await session.execute(
                text(
                    "CREATE FUNCTION refuse_access_log() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'the access log refuses writes'; END $$"
                )
            )
            await session.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON access_log "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_access_log()"
                )
            )
        for path in ("/v1/me/lab-results", "/v1/me/summary"):
            refused = await client.get(path)
            assert refused.status_code == 503, path
            assert refused.headers["Retry-After"] == "1"
            body = refused.json()
            assert "items" not in body and "lab_results" not in body, path
        async with stack.gateway.db.transaction() as session:
            await session.execute(text("DROP TRIGGER refuse ON access_log"))
        # The log takes records again: reads are answered (and recorded) again.
        assert (await client.get("/v1/me/lab-results")).status_code == 200
    assert [r["resource"] for r in await _rows(stack, "p-ann")] == ["DiagnosticReport"]
    assert (await audit.verify(stack.gateway)).intact


@pytest.mark.parametrize("stack", [1.0], indirect=True)  # AUDIT_COMMIT_TIMEOUT_S
async def test_a_chain_held_by_another_writer_answers_503_in_bounded_time(stack: Stack) -> None:
    # Another gateway holds the chain's lock (stuck mid-commit): a read waits at most
    # AUDIT_COMMIT_TIMEOUT_S for its record's commit, then answers 503, not the data.
    holder = create_async_engine(stack.database_url)
    try:
        async with _client(stack) as client, holder.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": audit.CHAIN_LOCK_KEY})
            refused = await client.get("/v1/me/lab-results")
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "1"
            assert "items" not in refused.json()
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": audit.CHAIN_LOCK_KEY})
            answered = await client.get("/v1/me/lab-results")
            assert answered.status_code == 200
            assert "items" in answered.json()
    finally:
        await holder.dispose()
    assert (await audit.verify(stack.gateway)).intact


async def test_the_writer_carries_on_after_its_connection_was_cut(stack: Stack) -> None:
    # The writer keeps one connection between commits; the database dropping it (a
    # restart, an idle timeout) must cost no read its answer.
    async with _client(stack) as client:
        assert (await client.get("/v1/me/lab-results")).status_code == 200
        async with stack.gateway.db.transaction() as session:
            cut = await session.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            assert cut.scalar_one() >= 1
        assert (await client.get("/v1/me/lab-results")).status_code == 200
    assert [r["resource"] for r in await _rows(stack, "p-ann")] == ["DiagnosticReport"] * 2
    assert (await audit.verify(stack.gateway)).intact


async def test_stopping_while_the_chain_is_held_ends_and_answers_nothing(stack: Stack) -> None:
    # Shutting down while a commit hangs (another writer holds the chain) ends within the
    # commit timeout; the waiting record's request is refused, not answered.
    holder = create_async_engine(stack.database_url)
    writer = audit.AuditWriter(stack.gateway.db, audit.key_of(stack.gateway), timeout_s=0.5)
    writer.start()
    try:
        async with holder.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": audit.CHAIN_LOCK_KEY})
            waiting = asyncio.create_task(
                writer.append(audit.access("pat-s", "self", "read", "held", on_behalf_of="p-s"))
            )

            async def writer_waits_for_the_chain() -> bool:
                async with stack.gateway.db.sessions() as session:
                    blocked = await session.execute(
                        text(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                        )
                    )
                    return blocked.scalar_one() > 0

            await eventually(writer_waits_for_the_chain, timeout=30)
            await writer.stop()
            with pytest.raises(audit.AuditUnavailable):
                await waiting
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": audit.CHAIN_LOCK_KEY})
    finally:
        await holder.dispose()
    assert await _rows(stack, "p-s") == []
    assert (await audit.verify(stack.gateway)).intact


async def test_a_writer_that_knows_the_head_appends_in_one_statement(stack: Stack) -> None:
    # The first append reads the head under the chain's lock (three statements); after
    # that the writer knows the head and appends in one (the lock is still taken, inside
    # it). Every read and every pushed notification waits for its record's commit.
    statements: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "access_log" in statement or "advisory" in statement:
            statements.append(statement)

    engine = stack.gateway.db.engine.sync_engine
    sa_event.listen(engine, "before_cursor_execute", note)
    writer = audit.AuditWriter(stack.gateway.db, audit.key_of(stack.gateway))
    writer.start()
    counts = []
    try:
        for n in range(3):
            before = len(statements)
            await writer.append(audit.access("pat-h", "self", "read", f"r{n}", on_behalf_of="p-h"))
            counts.append(len(statements) - before)
    finally:
        sa_event.remove(engine, "before_cursor_execute", note)
        await writer.stop()
    assert counts == [3, 1, 1]
    assert (await audit.verify(stack.gateway)).intact


async def test_writers_of_several_gateways_appending_at_once_keep_one_chain(
    stack: Stack,
) -> None:
    # Three writers (three gateways on one database) append at once; each one's idea of
    # the head goes stale as the others append. Nothing is lost and the chain stays one.
    key = audit.key_of(stack.gateway)
    writers = [audit.AuditWriter(stack.gateway.db, key) for _ in range(3)]
    for writer in writers:
        writer.start()

    async def reads(w: int) -> None:
        for n in range(30):
            await writers[w].append(
                audit.access(f"pat-{w}", "self", "read", f"r{n}", on_behalf_of=f"p-multi-{w}")
            )

    try:
        await asyncio.gather(*(reads(w) for w in range(3)))
        # A record appended by a tool in between (not by any writer) moves the head too.
        await audit.record_access(stack.gateway.db, key, "pat-t", "self", "read", "tool")
        await asyncio.gather(*(reads(w) for w in range(3)))
    finally:
        for writer in writers:
            await writer.stop()
    for w in range(3):
        assert len(await _rows(stack, f"p-multi-{w}")) == 60
    verdict = await audit.verify(stack.gateway)
    assert verdict.intact, verdict
