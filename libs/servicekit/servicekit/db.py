"""The database: one async engine per service, PostgreSQL over asyncpg.

All SQL lives in `store.py` modules; business code never commits. A unit of work opens
a transaction, and the caller that owns the use case commits it (or it rolls back).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pydantic_core
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from servicekit.db_tls import DatabaseTLS, engine_arguments
from servicekit.errors import DependencyUnavailable

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


# Connections each service's pool keeps open once it has needed them (see `Database`).
POOL_SIZE = 24


class KitBase(DeclarativeBase):
    """Declarative base of the kit's own tables (outbox, inbox, dead letters), which every
    service's database has. A service declares its tables on a base of its own."""

    metadata = new_metadata()


# A pooled connection is pinged (a round trip) before use only when it has been idle this
# long: one returned a moment ago is alive, while pinging at every checkout (SQLAlchemy's
# `pool_pre_ping`) cost a round trip per transaction, 5-8 % of a busy service's CPU
# (py-spy, benchmark 1). A database restart takes longer than this, so a connection that
# outlived one is still pinged; one cut in the meantime fails its statement once, and
# SQLAlchemy then replaces every pooled connection.
PING_IDLE_S = 1.0
_IDLE_SINCE = "servicekit_idle_since"


def ping_when_idle(engine: AsyncEngine, idle_s: float = PING_IDLE_S) -> None:
    """Ping a pooled connection before use when it has been idle `idle_s` or longer (for
    an engine made without `pool_pre_ping`); a dead one is replaced before the caller
    sees it."""

    def note_idle(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    def ping_if_idle(
        dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
    ) -> None:
        # Runs inside the pool's checkout (in SQLAlchemy's greenlet, as `pool_pre_ping`
        # does): a DisconnectionError makes the pool drop this connection and take another.
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < idle_s:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("the pooled connection did not answer a ping") from exc
        if not alive:
            raise DisconnectionError("the pooled connection did not answer a ping")

    event.listen(engine.sync_engine.pool, "checkin", note_idle)
    event.listen(engine.sync_engine.pool, "checkout", ping_if_idle)


# What connecting raises when the server is down, starting, shutting down or full, or the
# database is closed to connections: asyncpg's own errors and the socket's, which
# SQLAlchemy passes through unwrapped (the same errors from a statement come wrapped in a
# DBAPIError, judged apart). 55000 (object not in prerequisite state) is what connecting to
# a database with ALLOW_CONNECTIONS false meets.
CONNECT_FAILURES: tuple[type[Exception], ...] = (
    ConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
)


_UNREACHABLE_KINDS: tuple[type[Exception], ...] = (DBAPIError, *CONNECT_FAILURES)


def database_unreachable(exc: BaseException) -> bool:
    """Whether an error means the database could not be reached (not a bad query):
    callers answer 503 or wait, as for any dependency that is down."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError))
    return isinstance(exc, CONNECT_FAILURES)


@asynccontextmanager
async def unreachable_is_unavailable() -> AsyncIterator[None]:
    """Raise a database-unreachable error as `DependencyUnavailable` (the consumer loop
    then waits without spending the message's retries)."""
    try:
        yield
    except _UNREACHABLE_KINDS as exc:
        if database_unreachable(exc):
            raise DependencyUnavailable(f"the database: {type(exc).__name__}") from exc
        raise


def json_text(value: Any) -> str:
    """A json/jsonb parameter's text, written by pydantic-core (Rust) instead of the
    standard library's encoder, which was 7% of records' CPU draining lab results (py-spy,
    benchmark 3); values are read back with `pydantic_core.from_json` likewise. The same JSON
    for JSON values (NaN and Infinity written as the standard library writes them, which
    PostgreSQL refuses alike); a datetime becomes ISO 8601 text where the standard library
    raised."""
    return pydantic_core.to_json(value).decode()


async def hold_keys(session: AsyncSession, scope: str, keys: Iterable[str]) -> None:
    """Hold `keys` (of `scope`, such as a service's patients' charts) until the session's
    transaction ends: another transaction holding one of them waits, in any process.

    For writers that read what they are about to replace from more than one consumer:
    records' `lab.resulted` and `record.imported` consumers both write a patient's chart,
    and a back-fill that read the chart while a live batch was uncommitted wrote its older
    version over the live one. PostgreSQL advisory locks on a 64-bit digest of each key,
    taken in ascending order of those numbers, so two transactions never wait for each
    other in a circle (a digest shared by two keys only makes them share a lock)."""
    ids = sorted({_lock_id(scope, key) for key in keys})
    if ids:
        # One statement; a function scan takes the array's elements in order.
        await session.execute(_HOLD, {"ids": ids})


_HOLD = text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:ids AS BIGINT[])) AS k")


def _lock_id(scope: str, key: str) -> int:
    digest = hashlib.blake2b(f"{scope}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Database:
    """An engine and its session factory.

    `tls` (servicekit.db_tls, from the settings: `DatabaseTLS.of(settings)`) says how to
    connect; libpq's `sslmode`/`sslrootcert`/`sslcert`/`sslkey` in the URL are merged in.
    """

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        tls: DatabaseTLS | None = None,
        ping_idle_s: float = PING_IDLE_S,
    ) -> None:
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
            # Kept open: as many as a service serves at once under load (the gateway sends
            # each service up to UPSTREAM_MAX_CONNECTIONS, 16, calls at once, plus its
            # consumers and relay). With 10, the connections above it were overflow: closed
            # when handed back and opened again, with every prepared statement, at the next
            # peak (py-spy, benchmark 4: connecting and preparing were 6% of records' CPU).
            pool_size=POOL_SIZE,
            max_overflow=10,
            connect_args=connect_args,
            json_serializer=json_text,
            json_deserializer=pydantic_core.from_json,
        )
        ping_when_idle(self.engine, ping_idle_s)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # Sessions for reads only: each statement commits on its own, so a read is one
        # round trip, not BEGIN + query + ROLLBACK (py-spy: the BEGIN and ROLLBACK were a
        # quarter of records' CPU serving the portal's lists). Under READ COMMITTED every
        # statement sees its own snapshot inside a transaction too, so reads see the same.
        # Never write through one: each statement would commit by itself.
        self.reads = async_sessionmaker(
            self.engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
        )

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
