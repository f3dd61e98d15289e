"""Versioned FHIR resource storage on async SQLAlchemy 2 (PostgreSQL over asyncpg).

- `repository`: the `Store` (writes with compare-and-set, reads, search, history);
- `records`: what it hands out (`StoredResource`, `WriteResult`, ...);
- `queries`: read-side queries on one connection; `search_sql`: search requests as SQL;
- `tables`: the tables (all versions, heads, search index, small facts).
"""

from ehr_sandbox.store.repository import Store
from ehr_sandbox.store.results import HistoryPage, SearchResult, StoredResource, WriteResult

__all__ = ["HistoryPage", "SearchResult", "Store", "StoredResource", "WriteResult"]
