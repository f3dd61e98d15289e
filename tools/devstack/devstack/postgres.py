"""Make the machine's PostgreSQL 15 usable for the tests and the local stack.

Uses Debian's cluster tools (`pg_lsclusters`, `pg_createcluster`, `pg_ctlcluster`) and the
`postgres` OS user to create the `portal` role; databases are then created and dropped over
TCP with that role. Everything is idempotent and cheap when the cluster already runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

PG_VERSION = "15"
PG_CLUSTER = "main"
ROLE = "portal"
PASSWORD = "portal"  # noqa: S105 - the documented local development role, never deployed
HOST = "127.0.0.1"
PORT = 5432
BASE_URL = f"postgresql+asyncpg://{ROLE}:{PASSWORD}@{HOST}:{PORT}"

# Database names come from test ids and service names; anything else is refused rather than
# quoted, so a name can never smuggle SQL.
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresUnavailable(RuntimeError):
    """PostgreSQL is not installed or its cluster cannot be started."""


@dataclass(frozen=True)
class Cluster:
    """One line of `pg_lsclusters`."""

    version: str
    name: str
    port: int
    status: str


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    # cwd="/": the postgres user cannot enter root's home, and psql warns about it.
    return subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise PostgresUnavailable(
            f"PostgreSQL is not installed ({tool} not found): "
            f"apt-get install postgresql-{PG_VERSION}, or set TEST_DATABASE_URL / DATABASE_URL "
            "to a server you have"
        )
    return path


def list_clusters() -> list[Cluster]:
    """The clusters `pg_lsclusters` knows."""
    result = _run([_require("pg_lsclusters"), "--no-header"])
    if result.returncode != 0:
        raise PostgresUnavailable(f"pg_lsclusters failed: {result.stderr.strip()}")
    clusters = []
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            clusters.append(Cluster(fields[0], fields[1], int(fields[2]), fields[3]))
    return clusters


def _as_postgres(sql: str) -> subprocess.CompletedProcess[str]:
    psql = [
        _require("psql"),
        "--no-psqlrc",
        "-v",
        "ON_ERROR_STOP=1",
        "-p",
        str(PORT),
        "-qAtc",
        sql,
    ]
    if os.geteuid() == 0:
        return _run(["su", "postgres", "-c", shlex.join(psql)])
    return _run(["sudo", "-n", "-u", "postgres", *psql])


def ensure_postgres() -> str:
    """Create and start cluster 15/main if needed and make sure role `portal` exists.

    Returns the server's base URL (no database): `postgresql+asyncpg://portal:portal@
    127.0.0.1:5432`. Raises `PostgresUnavailable` with the reason when that cannot be done.
    """
    clusters = {(c.version, c.name): c for c in list_clusters()}
    cluster = clusters.get((PG_VERSION, PG_CLUSTER))
    if cluster is None:
        created = _run([_require("pg_createcluster"), PG_VERSION, PG_CLUSTER])
        if created.returncode != 0:
            raise PostgresUnavailable(f"pg_createcluster failed: {created.stderr.strip()}")
        cluster = next(
            c for c in list_clusters() if (c.version, c.name) == (PG_VERSION, PG_CLUSTER)
        )
    if cluster.port != PORT:
        raise PostgresUnavailable(
            f"cluster {PG_VERSION}/{PG_CLUSTER} listens on port {cluster.port}, not {PORT}"
        )
    if cluster.status != "online":
        started = _run([_require("pg_ctlcluster"), PG_VERSION, PG_CLUSTER, "start"])
        if started.returncode != 0:
            raise PostgresUnavailable(
                f"pg_ctlcluster {PG_VERSION} {PG_CLUSTER} start failed: "
                f"{started.stderr.strip() or started.stdout.strip()}"
            )
    role = _as_postgres(
        "DO $$ BEGIN "
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
        f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'; "
        "ELSE "
        f"ALTER ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'; "
        "END IF; END $$; "
        # Dropping a test database WITH (FORCE) must be able to end every session on it,
        # including ones a killed process left behind under another login.
        f"GRANT pg_signal_backend TO {ROLE};"
    )
    if role.returncode != 0:
        raise PostgresUnavailable(
            f"creating role {ROLE} failed: {role.stderr.strip() or role.stdout.strip()}"
        )
    return BASE_URL


def server_url(url: str) -> str:
    """The URL without its database path (the server part of a SQLAlchemy URL)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def database_url(base_url: str, name: str) -> str:
    """The SQLAlchemy URL of database `name` on the server of `base_url`."""
    parts = urlsplit(server_url(base_url))
    query = urlsplit(base_url).query
    return urlunsplit((parts.scheme, parts.netloc, f"/{_checked(name)}", query, ""))


def _checked(name: str) -> str:
    if not _DB_NAME.match(name):
        raise ValueError(f"invalid database name {name!r}: use [a-z0-9_], at most 63 characters")
    return name


def _asyncpg_dsn(base_url: str) -> str:
    """An asyncpg DSN to the maintenance database `postgres` of the server of `base_url`."""
    parts = urlsplit(base_url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {base_url!r}")
    return urlunsplit(("postgresql", parts.netloc, "/postgres", "", ""))


async def create_database(name: str, base_url: str = BASE_URL) -> str:
    """Create database `name` (if it does not exist) and return its SQLAlchemy URL."""
    conn = await asyncpg.connect(_asyncpg_dsn(base_url))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", _checked(name))
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url(base_url, name)


async def drop_database(name: str, base_url: str = BASE_URL) -> None:
    """Drop database `name` if it exists, disconnecting whoever is still connected to it."""
    conn = await asyncpg.connect(_asyncpg_dsn(base_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{_checked(name)}" WITH (FORCE)')
    finally:
        await conn.close()
