"""Pooled connections (servicekit.db): pinged before use only after being idle, and read
sessions that open no transaction.

A ping is a round trip: one at every checkout cost each transaction a round trip. The ping
tests cut a pooled connection's server process (`pg_terminate_backend`, what a database
restart does to every connection) and look at what the next transaction meets."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Text, cast, literal, make_url, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError

from devstack.postgres import set_connections_allowed
from servicekit import problems
from servicekit.db import Database, json_text

pytestmark = [pytest.mark.integration]


async def _backend(db: Database) -> int:
    async with db.sessions() as session:
        return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _cut(database_url: str, pid: int) -> None:
    other = Database(database_url)
    try:
        async with other.sessions() as session:
            cut = await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            assert cut.scalar_one() is True
    finally:
        await other.dispose()


async def test_an_idle_connection_that_was_cut_is_replaced_before_use(database_url: str) -> None:
    db = Database(database_url, ping_idle_s=0.0)  # every checked-in connection counts as idle
    try:
        first = await _backend(db)
        await _cut(database_url, first)
        # The ping fails, the pool takes a new connection: the caller never sees the cut.
        assert await _backend(db) != first
    finally:
        await db.dispose()


async def test_a_connection_used_a_moment_ago_is_not_pinged(database_url: str) -> None:
    db = Database(database_url, ping_idle_s=3600.0)
    try:
        first = await _backend(db)
        await _cut(database_url, first)
        # No ping, no round trip: the statement itself meets the cut (a restart takes
        # longer than the idle time, so in service this is a connection cut mid-use)...
        with pytest.raises(DBAPIError) as failed:
            await _backend(db)
        assert failed.value.connection_invalidated
        # ...and the pool has replaced it for the next transaction.
        assert await _backend(db) != first
    finally:
        await db.dispose()


async def test_a_request_whose_connection_was_cut_answers_503_and_the_next_one_works(
    database_url: str,
) -> None:
    db = Database(database_url, ping_idle_s=3600.0)
    app = FastAPI()
    problems.install(app)

    @app.get("/backend")
    async def backend() -> int:
        return await _backend(db)

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            first = (await client.get("/backend")).json()
            await _cut(database_url, first)
            cut = await client.get("/backend")
            assert cut.status_code == 503, cut.text
            assert cut.headers["content-type"] == problems.PROBLEM_JSON
            assert cut.headers["retry-after"] == "1"
            again = await client.get("/backend")
            assert again.status_code == 200 and again.json() != first
    finally:
        await db.dispose()


async def test_a_request_while_the_database_is_down_answers_503() -> None:
    db = Database("postgresql+asyncpg://portal:portal@127.0.0.1:1/none")  # nothing listens
    app = FastAPI()
    problems.install(app)

    @app.get("/backend")
    async def backend() -> int:
        return await _backend(db)

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            down = await client.get("/backend")
        assert down.status_code == 503, down.text
        assert down.headers["retry-after"] == "1"
    finally:
        await db.dispose()


async def test_a_request_while_its_database_refuses_connections_answers_503(
    database_url: str, postgres_url: str
) -> None:
    # A database closed to connections (maintenance: ALLOW_CONNECTIONS false) refuses at
    # connect with SQLSTATE 55000, which asyncpg raises unwrapped: a 500 before.
    name = make_url(database_url).database
    assert name is not None
    db = Database(database_url)
    app = FastAPI()
    problems.install(app)

    @app.get("/backend")
    async def backend() -> int:
        return await _backend(db)

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        await set_connections_allowed(name, postgres_url, allowed=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            refused = await client.get("/backend")
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            await set_connections_allowed(name, postgres_url, allowed=True)
            assert (await client.get("/backend")).status_code == 200
    finally:
        await set_connections_allowed(name, postgres_url, allowed=True)
        await db.dispose()


async def test_a_read_session_opens_no_transaction(database_url: str) -> None:
    """`Database.reads` sends each statement on its own (no BEGIN, no ROLLBACK): two
    statements see two transaction start times, where a session's transaction has one."""
    db = Database(database_url)
    probe = text("SELECT now(), pg_sleep(0.01)")
    try:
        async with db.reads() as session:
            starts = {(await session.execute(probe)).scalar_one() for _ in range(2)}
        assert len(starts) == 2
        async with db.sessions() as session:
            starts = {(await session.execute(probe)).scalar_one() for _ in range(2)}
        assert len(starts) == 1
    finally:
        await db.dispose()


async def test_json_values_go_in_and_come_back_as_the_standard_library_would_have_them(
    database_url: str,
) -> None:
    """The engine's JSON codec is pydantic-core's (faster); what PostgreSQL stores and what
    comes back must be what the standard library's would have given."""
    value = {
        "text": 'é ü 中 "quoted" \\ \n',
        "numbers": [1, -2, 1.5, 0.1, 12345678901234567890123],
        "nested": {"none": None, "flags": [True, False], "empty": {}},
    }
    assert json.loads(json_text(value)) == json.loads(json.dumps(value))
    db = Database(database_url)
    try:
        async with db.sessions() as session:
            stored = (
                await session.execute(
                    select(cast(literal(value, JSONB), Text), literal(value, JSONB))
                )
            ).one()
        assert json.loads(stored[0]) == value  # PostgreSQL parsed what was sent
        assert stored[1] == value
    finally:
        await db.dispose()
