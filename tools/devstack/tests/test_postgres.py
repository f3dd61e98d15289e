"""The PostgreSQL helper: cluster up, role present, databases created and dropped."""

from __future__ import annotations

import asyncpg
import pytest

from devstack.postgres import (
    BASE_URL,
    create_database,
    database_url,
    drop_database,
    ensure_postgres,
    server_url,
)


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def test_create_and_drop_a_database(unique_prefix: str) -> None:
    base = ensure_postgres()
    assert base == BASE_URL
    assert ensure_postgres() == base, "a second call is a no-op"
    name = "devstack_" + unique_prefix.strip(".")
    url = await create_database(name, base)
    assert url == f"{base}/{name}"
    assert await create_database(name, base) == url, "creating twice is harmless"
    conn = await asyncpg.connect(_dsn(url))
    try:
        await conn.execute("CREATE TABLE t (id int primary key)")
        assert await conn.fetchval("SELECT current_database()") == name
        # Dropping with a session still open must work: tests leave pools behind.
        await drop_database(name, base)
    finally:
        await conn.close()
    server = await asyncpg.connect(_dsn(base + "/postgres"))
    try:
        assert not await server.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await server.close()
    await drop_database(name, base)


def test_urls() -> None:
    assert server_url("postgresql+asyncpg://u:p@h:5432/db?ssl=require") == (
        "postgresql+asyncpg://u:p@h:5432"
    )
    assert database_url("postgresql+asyncpg://u:p@h:1/x?ssl=require", "portal_records") == (
        "postgresql+asyncpg://u:p@h:1/portal_records?ssl=require"
    )
    with pytest.raises(ValueError, match="invalid database name"):
        database_url(BASE_URL, 'x"; DROP DATABASE postgres; --')
