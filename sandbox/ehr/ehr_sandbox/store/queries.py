"""Read-side queries on one connection, shared by the store's reads and its writes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from ehr_sandbox.fhir.outcomes import FhirError
from ehr_sandbox.search import Include, SearchRequest, extract_index
from ehr_sandbox.store.results import COLUMNS, StoredResource, current_join, row_to_stored
from ehr_sandbox.store.search_sql import matching_heads
from ehr_sandbox.store.tables import resource_heads as heads
from ehr_sandbox.store.tables import resources, search_index


async def head(conn: AsyncConnection, res_type: str, res_id: str) -> Any:
    """The head row (version, last_updated, deleted) of a resource, or None."""
    result = await conn.execute(
        select(heads.c.version, heads.c.last_updated, heads.c.deleted).where(
            heads.c.res_type == res_type, heads.c.res_id == res_id
        )
    )
    return result.first()


async def version_content(
    conn: AsyncConnection, res_type: str, res_id: str, version: int
) -> dict[str, Any]:
    """The stored JSON of one version (empty if absent)."""
    content = await conn.scalar(
        select(resources.c.content).where(
            resources.c.res_type == res_type,
            resources.c.res_id == res_id,
            resources.c.version == version,
        )
    )
    parsed: dict[str, Any] = json.loads(content) if content else {}
    return parsed


def index_rows(
    res_type: str, res_id: str, resource: dict[str, Any], fhir_base: str
) -> list[dict[str, Any]]:
    """The `search_index` rows of `resource`."""
    return [
        {
            "res_type": res_type,
            "res_id": res_id,
            "param": entry.param,
            "system": entry.system[:512] if entry.system else entry.system,
            "code": entry.code[:512] if entry.code else entry.code,
            "text": entry.text,
            "date_lo": entry.date_lo,
            "date_hi": entry.date_hi,
            "ref_type": entry.ref_type,
            "ref_id": entry.ref_id,
        }
        for entry in extract_index(res_type, resource, fhir_base)
    ]


async def read_current(conn: AsyncConnection, res_type: str, res_id: str) -> StoredResource:
    """The current version; 404 if unknown, 410 if deleted."""
    row = (
        await conn.execute(
            select(*COLUMNS)
            .select_from(current_join())
            .where(heads.c.res_type == res_type, heads.c.res_id == res_id)
        )
    ).first()
    if row is None:
        raise FhirError(404, f"{res_type}/{res_id} is not known", code="not-found")
    stored = row_to_stored(row)
    if stored.deleted:
        raise FhirError(
            410,
            f"{res_type}/{res_id} was deleted",
            code="deleted",
            headers={"ETag": stored.etag},
        )
    return stored


async def read_many(conn: AsyncConnection, keys: Sequence[tuple[str, str]]) -> list[StoredResource]:
    """The current, not-deleted versions of `keys` (missing ones skipped), in key order."""
    found: dict[tuple[str, str], StoredResource] = {}
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), 200):
        chunk = unique[start : start + 200]
        rows = await conn.execute(
            select(*COLUMNS)
            .select_from(current_join())
            .where(
                tuple_(heads.c.res_type, heads.c.res_id).in_(chunk),
                heads.c.deleted.is_(False),
            )
        )
        for row in rows:
            stored = row_to_stored(row)
            found[(stored.resource_type, stored.id)] = stored
    return [found[key] for key in unique if key in found]


async def match_ids(conn: AsyncConnection, request: SearchRequest, *, limit: int) -> list[str]:
    """Ids of the first `limit` matches of `request`."""
    rows = await conn.execute(matching_heads(request).limit(limit))
    return [row.res_id for row in rows]


async def included(
    conn: AsyncConnection, request: SearchRequest, matches: list[StoredResource]
) -> list[StoredResource]:
    """The resources `_include`/`_revinclude` add to a page of matches."""
    if not matches or not (request.includes or request.revincludes):
        return []
    page_ids = [m.id for m in matches]
    seen = {(m.resource_type, m.id) for m in matches}
    wanted: list[tuple[str, str]] = []
    for include in request.includes:
        wanted.extend(await include_keys(conn, include, page_ids))
    for include in request.revincludes:
        wanted.extend(await revinclude_keys(conn, include, request.resource_type, page_ids))
    fresh = [key for key in dict.fromkeys(wanted) if key not in seen]
    return await read_many(conn, fresh)


async def include_keys(
    conn: AsyncConnection, include: Include, page_ids: list[str]
) -> list[tuple[str, str]]:
    """Keys of the resources an `_include` reaches from the page."""
    conditions = [
        search_index.c.res_type == include.source_type,
        search_index.c.res_id.in_(page_ids),
        search_index.c.param == include.param.name,
        search_index.c.ref_type.is_not(None),
    ]
    if include.target_type is not None:
        conditions.append(search_index.c.ref_type == include.target_type)
    rows = await conn.execute(
        select(search_index.c.ref_type, search_index.c.ref_id).where(*conditions)
    )
    return [(row.ref_type, row.ref_id) for row in rows]


async def revinclude_keys(
    conn: AsyncConnection, include: Include, target_type: str, page_ids: list[str]
) -> list[tuple[str, str]]:
    """Keys of the resources of a `_revinclude` that point at the page."""
    rows = await conn.execute(
        select(search_index.c.res_type, search_index.c.res_id).where(
            search_index.c.res_type == include.source_type,
            search_index.c.param == include.param.name,
            search_index.c.ref_type == target_type,
            search_index.c.ref_id.in_(page_ids),
        )
    )
    return [(row.res_type, row.res_id) for row in rows]
