"""The ehr-connector's tables and all its SQL.

One declarative base (`Base`) and one `metadata` cover every table of the service: the
outbound side's tables are declared here, the inbound side declares its own in
`ehr_connector.inbound.tables` on this same `Base`, so a single Alembic history covers both.
"""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase

from servicekit.db import new_metadata


class Base(DeclarativeBase):
    """Declarative base of every ehr-connector table (outbound and inbound)."""

    metadata = new_metadata()


metadata = Base.metadata
