"""Which service's tables the shared Alembic environment compares against, and how it
connects (the service's database TLS settings)."""

from __future__ import annotations

from sqlalchemy import MetaData

from servicekit.db_tls import DatabaseTLS

service_metadata: MetaData | None = None
tls: DatabaseTLS = DatabaseTLS()
