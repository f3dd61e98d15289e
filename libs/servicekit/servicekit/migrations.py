"""Schema migrations with Alembic: the kit's tables on one branch, each service's on its own.

Every service database runs the kit's migrations (outbox, inbox, dead letters) and the
service's own, found in `<pkg>/migrations/`. `upgrade` brings a database to the newest
revision of both; services call it on start-up in dev and tests, and ops run
`python -m servicekit.migrations upgrade <pkg>` before a deploy.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData

from servicekit.db_tls import DatabaseTLS, explained

KIT_DIR = Path(__file__).resolve().parent / "alembic"


def _config(database_url: str, service_versions: Path | None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(KIT_DIR))
    locations = [str(KIT_DIR / "versions")]
    if service_versions is not None:
        service_versions.mkdir(parents=True, exist_ok=True)
        locations.append(str(service_versions))
    cfg.set_main_option("version_locations", " ".join(locations))
    cfg.set_main_option("path_separator", "space")
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def set_target_metadata(service_metadata: MetaData | None, tls: DatabaseTLS | None = None) -> None:
    """Tell the Alembic environment which service tables to compare against (autogenerate),
    and how to connect (the service's database TLS settings)."""
    from servicekit.alembic import env_state

    env_state.service_metadata = service_metadata
    env_state.tls = tls or DatabaseTLS()


async def upgrade(
    database_url: str,
    service_versions: Path | None,
    service_metadata: MetaData | None = None,
    tls: DatabaseTLS | None = None,
) -> None:
    """Bring the database to the newest kit and service revisions. Usually the first
    connection of a starting service: a TLS failure is told as the setting to fix."""
    tls = tls or DatabaseTLS()
    set_target_metadata(service_metadata, tls)
    with explained(tls):
        # Alembic's async env runs its own event loop, which needs a thread of its own.
        await asyncio.to_thread(command.upgrade, _config(database_url, service_versions), "heads")


def revision(
    database_url: str,
    service_versions: Path,
    service_metadata: MetaData,
    message: str,
    tls: DatabaseTLS | None = None,
) -> None:
    """Autogenerate a new service revision from the difference between models and database."""
    set_target_metadata(service_metadata, tls)
    cfg = _config(database_url, service_versions)
    command.upgrade(cfg, "heads")
    label = service_versions.parent.name
    first = not [p for p in service_versions.glob("*.py") if p.name != "__init__.py"]
    command.revision(
        cfg,
        message=message,
        autogenerate=True,
        version_path=str(service_versions),
        branch_label=label if first else None,
        head="base" if first else f"{label}@head",
    )


def main(argv: list[str]) -> int:
    """`python -m servicekit.migrations upgrade|revision <pkg> [message]`."""
    if len(argv) < 2 or argv[0] not in ("upgrade", "revision"):
        sys.stderr.write("usage: python -m servicekit.migrations upgrade|revision <pkg> [msg]\n")
        return 2
    module = importlib.import_module(f"{argv[1]}.store")
    settings_module = importlib.import_module(f"{argv[1]}.settings")
    settings = settings_module.Settings()
    versions = Path(module.__file__ or "").parent / "migrations"
    url = settings.resolved_database_url()
    tls = DatabaseTLS.of(settings)
    if argv[0] == "upgrade":
        asyncio.run(upgrade(url, versions, module.metadata, tls))
    else:
        revision(url, versions, module.metadata, argv[2] if len(argv) > 2 else "change", tls)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
