"""The sandbox's database tables (SQLAlchemy Core, portable across SQLite and PostgreSQL).

- `resources`: every version of every resource, tombstones included (never updated).
- `resource_heads`: one row per resource with its current version: the compare-and-set
  target that makes concurrent writes safe, and the table searches start from.
- `search_index`: the searchable values of each current version (see `search.py`).
- `sandbox_meta`: small key/value facts such as the search-index signature.

Instants are stored as `timestamptz` (aware, UTC).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

resources = Table(
    "resources",
    metadata,
    Column("res_type", String(64), primary_key=True),
    Column("res_id", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("method", String(8), nullable=False),
    Column("content", Text, nullable=False),
    Index("ix_resources_type_updated", "res_type", "last_updated"),
)

resource_heads = Table(
    "resource_heads",
    metadata,
    Column("res_type", String(64), primary_key=True),
    Column("res_id", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("deleted", Boolean, nullable=False),
    Index("ix_heads_type_updated", "res_type", "last_updated"),
)

search_index = Table(
    "search_index",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", String(512)),
    Column("code", String(512)),
    Column("text", String(512)),
    Column("date_lo", DateTime(timezone=True)),
    Column("date_hi", DateTime(timezone=True)),
    Column("ref_type", String(64)),
    Column("ref_id", String(64)),
    Index("ix_search_resource", "res_type", "res_id"),
    Index("ix_search_code", "res_type", "param", "code"),
    Index("ix_search_ref", "param", "ref_type", "ref_id"),
    Index("ix_search_date", "res_type", "param", "date_lo"),
    Index("ix_search_text", "res_type", "param", "text"),
)

sandbox_meta = Table(
    "sandbox_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
