"""The database: one async engine per service, PostgreSQL over asyncpg.

All SQL lives in `store.py` modules; business code never commits. A unit of work opens
a transaction, and the caller that owns the use case commits it (or it rolls back).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import MetaData, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from servicekit.db_tls import DatabaseTLS, engine_arguments

# Stable constraint names, so Alembic migrations are reproducible.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_metadata() -> MetaData:
    """A MetaData with the kit's naming convention, for a service's own declarative base."""
    return MetaData(naming_convention=NAMING)


class KitBase(DeclarativeBase):
    """Declarative base of the kit's own tables (outbox, inbox, dead letters), which every
    service's database has. A service declares its tables on a base of its own."""

    metadata = new_metadata()


class Database:
    """An engine and its session factory.

    `tls` (servicekit.db_tls, from the settings: `DatabaseTLS.of(settings)`) says how to
    connect; libpq's `sslmode`/`sslrootcert`/`sslcert`/`sslkey` in the URL are merged in.
    """

    def __init__(self, url: str, *, echo: bool = False, tls: DatabaseTLS | None = None) -> None:
        self.url = url
        scheme = url.split(":", 1)[0]
        if scheme != "postgresql+asyncpg":
            raise ValueError(
                f"DATABASE_URL must be a PostgreSQL URL (postgresql+asyncpg://...), not {scheme!r}"
            )
        engine_url, connect_args, self.tls = engine_arguments(url, tls or DatabaseTLS())
        self.engine: AsyncEngine = create_async_engine(
            engine_url,
            echo=echo,
            pool_size=10,
            max_overflow=10,
            pool_pre_ping=True,
            connect_args=connect_args,
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        """Always `postgresql`: the one database every service runs on."""
        return self.engine.dialect.name

    @property
    def sync_engine(self) -> Engine:
        """The underlying sync engine (for instrumentation)."""
        return self.engine.sync_engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside a transaction: committed on success, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    async def ping(self) -> None:
        """Raise if the database does not answer."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
