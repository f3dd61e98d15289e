"""Which service's tables the shared Alembic environment compares against."""

from __future__ import annotations

from sqlalchemy import MetaData

service_metadata: MetaData | None = None
