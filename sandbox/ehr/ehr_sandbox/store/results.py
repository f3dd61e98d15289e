"""What the store hands out, and how table rows become it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_

from ehr_sandbox.search import format_instant
from ehr_sandbox.store.tables import resource_heads as heads
from ehr_sandbox.store.tables import resources


@dataclass(frozen=True)
class StoredResource:
    """One version of a resource as stored."""

    resource_type: str
    id: str
    version: int
    last_updated: datetime  # aware, UTC
    deleted: bool
    method: str
    content: dict[str, Any]

    @property
    def etag(self) -> str:
        """The weak ETag of this version."""
        return f'W/"{self.version}"'

    @property
    def reference(self) -> str:
        """`Type/id`."""
        return f"{self.resource_type}/{self.id}"


@dataclass(frozen=True)
class WriteResult:
    """What a write did: the stored version, and whether it created a resource."""

    stored: StoredResource
    created: bool
    # A conditional create that matched an existing resource wrote nothing.
    matched_existing: bool = False


@dataclass(frozen=True)
class SearchResult:
    """A page of search matches plus the resources `_include`/`_revinclude` pulled in."""

    total: int
    matches: list[StoredResource]
    included: list[StoredResource]


@dataclass(frozen=True)
class HistoryPage:
    """A page of history entries, newest first."""

    total: int
    entries: list[StoredResource]


def utc_now() -> datetime:
    """Now, in UTC, as the tables store it."""
    return datetime.now(UTC)


def with_meta(resource: dict[str, Any], version: int, moment: datetime) -> dict[str, Any]:
    """`resource` with `meta.versionId`/`meta.lastUpdated` set (other meta kept)."""
    # Keep `resourceType`, `id`, `meta` first, as FHIR JSON usually reads.
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = format_instant(moment)
    head = {"resourceType": resource["resourceType"], "id": resource["id"], "meta": meta}
    return head | {k: v for k, v in resource.items() if k not in head}


COLUMNS = (
    resources.c.res_type,
    resources.c.res_id,
    resources.c.version,
    resources.c.last_updated,
    resources.c.deleted,
    resources.c.method,
    resources.c.content,
)


def row_to_stored(row: Any) -> StoredResource:
    """A `StoredResource` from a row of `COLUMNS`."""
    return StoredResource(
        resource_type=row.res_type,
        id=row.res_id,
        version=row.version,
        last_updated=row.last_updated,
        deleted=bool(row.deleted),
        method=row.method,
        content=json.loads(row.content),
    )


def current_join() -> Any:
    """`resource_heads` joined to the row of each resource's current version."""
    return heads.join(
        resources,
        and_(
            resources.c.res_type == heads.c.res_type,
            resources.c.res_id == heads.c.res_id,
            resources.c.version == heads.c.version,
        ),
    )
