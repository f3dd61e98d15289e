"""Alembic environment: runs migrations over an async engine (asyncpg)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from servicekit import tables  # noqa: F401 - registers the kit tables on KitBase
from servicekit.alembic import env_state
from servicekit.db import KitBase
from servicekit.db_tls import engine_arguments

config = context.config
target = [KitBase.metadata]
if env_state.service_metadata is not None:
    target.append(env_state.service_metadata)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _online() -> None:
    # The same TLS as the service's own engine (the URL's sslmode etc. merged in).
    url, connect_args, _tls = engine_arguments(
        config.get_main_option("sqlalchemy.url") or "", env_state.tls
    )
    engine = create_async_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"), target_metadata=target, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_online())
