"""The PostgreSQL helper: the embedded server starts, restarts with its data, serves
databases that are created and dropped, and refuses connections to one database on demand."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import asyncpg
import pytest

from devstack.postgres import (
    EmbeddedPostgres,
    create_database,
    database_url,
    drop_database,
    server_url,
    set_connections_allowed,
)


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def test_create_and_drop_a_database(unique_prefix: str, postgres_url: str) -> None:
    base = postgres_url
    name = "devstack_" + unique_prefix.strip(".")
    url = await create_database(name, base)
    assert url == database_url(base, name)
    assert await create_database(name, base) == url, "creating twice is harmless"
    conn = await asyncpg.connect(_dsn(url))
    try:
        await conn.execute("CREATE TABLE t (id int primary key)")
        assert await conn.fetchval("SELECT current_database()") == name
        # Dropping with a session still open must work: tests leave pools behind.
        await drop_database(name, base)
    finally:
        await conn.close()
    server = await asyncpg.connect(_dsn(database_url(base, "postgres")))
    try:
        assert not await server.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await server.close()
    await drop_database(name, base)


async def test_a_database_can_be_made_to_refuse_connections(
    unique_prefix: str, postgres_url: str
) -> None:
    name = "devstack_" + unique_prefix.strip(".")
    url = await create_database(name, postgres_url)
    try:
        open_conn = await asyncpg.connect(_dsn(url))
        await set_connections_allowed(name, postgres_url, allowed=False)
        with pytest.raises((asyncpg.PostgresError, OSError, asyncpg.InterfaceError)):
            await open_conn.fetchval("SELECT 1")
        with pytest.raises(asyncpg.PostgresError):
            await asyncpg.connect(_dsn(url))
        await set_connections_allowed(name, postgres_url, allowed=True)
        conn = await asyncpg.connect(_dsn(url))
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        await drop_database(name, postgres_url)


async def test_the_embedded_server_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    try:
        base = server.start()
        assert server.start() == base, "starting a running server adopts it"
        url = await create_database("kept", base)
        conn = await asyncpg.connect(_dsn(url))
        await conn.execute("CREATE TABLE t (at timestamptz); INSERT INTO t VALUES (now())")
        await conn.close()
        server.stop()
        assert server.running_pid() is None
        server.start()
        conn = await asyncpg.connect(_dsn(url))
        stored = await conn.fetchval("SELECT at FROM t")
        await conn.close()
        assert stored.tzinfo is not None, "timestamptz comes back with its zone"
        # Patient data: the cluster's directory is readable by its owner only.
        assert stat.S_IMODE(os.stat(server.data_dir).st_mode) == 0o700
    finally:
        server.remove()


def test_urls() -> None:
    assert server_url("postgresql+asyncpg://u:p@h:5432/db?ssl=require") == (
        "postgresql+asyncpg://u:p@h:5432?ssl=require"
    )
    assert database_url("postgresql+asyncpg://u:p@h:1/x?ssl=require", "portal_records") == (
        "postgresql+asyncpg://u:p@h:1/portal_records?ssl=require"
    )
    socket = "postgresql+asyncpg://postgres@/?host=/tmp/pg"
    assert database_url(socket, "portal_records") == (
        "postgresql+asyncpg://postgres@/portal_records?host=%2Ftmp%2Fpg"
    )
    with pytest.raises(ValueError, match="invalid database name"):
        database_url(socket, 'x"; DROP DATABASE postgres; --')
