"""The `Store`: versioned FHIR resource storage on async SQLAlchemy 2 and PostgreSQL.

Every write is one transaction: it compares-and-sets the resource's head row (so two
writers based on the same version cannot both win, even across processes), appends the new
version to `resources`, and replaces the resource's search-index rows. After the commit
the change goes to the change feed. Writes in this process are also serialised by a lock,
which keeps the change feed in commit order.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    and_,
    delete,
    func,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from ehr_sandbox.fhir.changes import ChangeFeed, ChangeInteraction, ResourceChange
from ehr_sandbox.fhir.outcomes import FhirError
from ehr_sandbox.fhir.resource_types import index_signature
from ehr_sandbox.search import REF_PARAM, SearchRequest
from ehr_sandbox.store import queries
from ehr_sandbox.store.results import (
    COLUMNS,
    HistoryPage,
    SearchResult,
    StoredResource,
    WriteResult,
    row_to_stored,
    utc_now,
    with_meta,
)
from ehr_sandbox.store.search_sql import matching_heads, search_conditions
from ehr_sandbox.store.tables import metadata, resources, sandbox_meta, search_index
from ehr_sandbox.store.tables import resource_heads as heads
from servicekit.db import ping_when_idle
from servicekit.logging import get_logger

log = get_logger(__name__)

# What a write operation answers: a result (none for a delete of nothing, one per resource
# for several created at once) and its change (or theirs, in order).
_Result = TypeVar("_Result", WriteResult, WriteResult | None, list[WriteResult])
_Changes = ResourceChange | list[ResourceChange] | None
# Work done inside a write's transaction for its change (see `Store.stage`); what it
# returns is called once the transaction has committed.
StagedWork = Callable[[AsyncConnection, ResourceChange], Awaitable[Callable[[], None] | None]]

_WRITE_ATTEMPTS = 4
_INDEX_BATCH = 500
_SIGNATURE_KEY = "index_signature"


def _json(content: dict[str, Any]) -> str:
    """A version's stored JSON (compact, not ASCII-escaped)."""
    return json.dumps(content, ensure_ascii=False, separators=(",", ":"))


class _Retry(Exception):
    """A concurrent writer won the compare-and-set; try the unconditional write again."""


class Store:
    """The sandbox's resource store."""

    def __init__(self, url: str, *, change_feed: ChangeFeed, fhir_base: str) -> None:
        self.url = url
        self.feed = change_feed
        self.fhir_base = fhir_base
        self.engine = create_async_engine(url)
        # Pinged before use only after being idle (a ping per checkout is a round trip).
        ping_when_idle(self.engine)
        self._write_engine = self.engine.execution_options(ehr_write=True)
        self._lock = asyncio.Lock()
        self._staged: list[StagedWork] = []

    def stage(self, work: StagedWork) -> Callable[[], None]:
        """Run `work` for every change inside the transaction that writes it, under the
        write lock (so in commit order), after the write itself; the function it returns,
        if any, runs right after the commit.

        For what must commit with the write or not at all: a Subscription event's number
        and row (a write whose event was stored in a later transaction lost the event if
        the EHR stopped between the two, and paid a second commit, a disk flush, for it).
        Keep it to a few statements: every write waits for it. Returns a function that
        stops it."""
        self._staged.append(work)

        def unstage() -> None:
            if work in self._staged:
                self._staged.remove(work)

        return unstage

    async def start(self) -> None:
        """Create the tables if needed and rebuild the search index if its shape changed."""
        async with self._write_engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        await self.ensure_index()

    async def analyze(self) -> None:
        """Give PostgreSQL's planner statistics of the tables now (after the seed).

        Fresh tables have none until autovacuum's next round, a minute or more away; the
        planner then cannot tell the search index's code index from its date index, and a
        conditional create's If-None-Exist search scanned every identifier of its type: it
        slowed from 10 ms to 160 ms over 1,300 new Communications (benchmark 6, full
        size) until autoanalyze ran. With statistics, new rows of one type do not change
        the choice: a code is as selective as ever."""
        async with self._write_engine.begin() as conn:
            await conn.execute(text("ANALYZE resources, resource_heads, search_index"))

    async def close(self) -> None:
        """Release the database connections."""
        await self.engine.dispose()

    async def ping(self) -> bool:
        """Whether the database answers."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            # Any failure (driver error, refused connection, timeout) means "not ready".
            log.warning("database_unreachable", error_type=type(exc).__name__)
            return False
        return True

    async def ensure_index(self) -> None:
        """Re-index every current resource when the search parameters have changed."""
        signature = index_signature()
        async with self._lock, self._write_engine.begin() as conn:
            stored = await conn.scalar(
                select(sandbox_meta.c.value).where(sandbox_meta.c.key == _SIGNATURE_KEY)
            )
            if stored == signature:
                return
            await conn.execute(delete(search_index))
            rows = await conn.stream(
                select(resources.c.res_type, resources.c.content)
                .select_from(
                    heads.join(
                        resources,
                        and_(
                            resources.c.res_type == heads.c.res_type,
                            resources.c.res_id == heads.c.res_id,
                            resources.c.version == heads.c.version,
                        ),
                    )
                )
                .where(heads.c.deleted.is_(False))
            )
            batch: list[dict[str, Any]] = []
            count = 0
            async for res_type, content in rows:
                resource = json.loads(content)
                batch.extend(queries.index_rows(res_type, resource["id"], resource, self.fhir_base))
                count += 1
                if len(batch) >= _INDEX_BATCH:
                    await conn.execute(insert(search_index), batch)
                    batch = []
            if batch:
                await conn.execute(insert(search_index), batch)
            if stored is None:
                await conn.execute(insert(sandbox_meta).values(key=_SIGNATURE_KEY, value=signature))
            else:
                await conn.execute(
                    update(sandbox_meta)
                    .where(sandbox_meta.c.key == _SIGNATURE_KEY)
                    .values(value=signature)
                )
            if count:
                log.info("search_index_rebuilt", resources=count)

    @asynccontextmanager
    async def _write_transaction(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._write_engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except DBAPIError as exc:
            log.warning("storage_unavailable", error_type=type(exc.orig).__name__)
            raise FhirError(
                503,
                "Storage is busy; retry shortly",
                code="transient",
                headers={"Retry-After": "1"},
            ) from exc

    async def _write(
        self,
        operation: Callable[[AsyncConnection], Awaitable[tuple[_Result, _Changes]]],
    ) -> _Result:
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                async with self._lock:
                    committed: list[Callable[[], None]] = []
                    async with self._write_transaction() as conn:
                        result, changed = await operation(conn)
                        changes = changed if isinstance(changed, list) else [changed]
                        for change in filter(None, changes):
                            for work in self._staged:
                                then = await work(conn, change)
                                if then is not None:
                                    committed.append(then)
                    for then in committed:
                        then()
                    # Queued under the lock, so listeners see changes in commit order.
                    delivered = None
                    for change in filter(None, changes):
                        delivered = self.feed.enqueue(change)
            except (_Retry, IntegrityError):
                # Another process committed between our read and our compare-and-set.
                if attempt == _WRITE_ATTEMPTS:
                    raise FhirError(
                        409, "Concurrent modification; retry the request", code="conflict"
                    ) from None
                continue
            if delivered is not None:
                await self.feed.wait_delivered(delivered)
            return result
        raise AssertionError("unreachable")

    async def _put_version(
        self,
        conn: AsyncConnection,
        res_type: str,
        res_id: str,
        resource: dict[str, Any],
        *,
        head: Any,
        method: str,
        deleted: bool = False,
    ) -> StoredResource:
        """Compare-and-set the head to the next version and append that version."""
        now = utc_now()
        if head is None:
            version = 1
            await conn.execute(
                insert(heads).values(
                    res_type=res_type, res_id=res_id, version=1, last_updated=now, deleted=deleted
                )
            )
        else:
            version = head.version + 1
            if now <= head.last_updated:
                now = head.last_updated + timedelta(microseconds=1)
            swapped = await conn.execute(
                update(heads)
                .where(
                    heads.c.res_type == res_type,
                    heads.c.res_id == res_id,
                    heads.c.version == head.version,
                )
                .values(version=version, last_updated=now, deleted=deleted)
            )
            if swapped.rowcount != 1:
                raise _Retry
        content = with_meta({**resource, "id": res_id}, version, now)
        await conn.execute(
            insert(resources).values(
                res_type=res_type,
                res_id=res_id,
                version=version,
                last_updated=now,
                deleted=deleted,
                method=method,
                content=_json(content),
            )
        )
        await conn.execute(
            delete(search_index).where(
                search_index.c.res_type == res_type, search_index.c.res_id == res_id
            )
        )
        if not deleted:
            rows = queries.index_rows(res_type, res_id, content, self.fhir_base)
            if rows:
                await conn.execute(insert(search_index), rows)
        return StoredResource(res_type, res_id, version, now, deleted, method, content)

    @staticmethod
    def _change(
        stored: StoredResource, interaction: ChangeInteraction, previous: dict[str, Any] | None
    ) -> ResourceChange:
        return ResourceChange(
            resource_type=stored.resource_type,
            id=stored.id,
            version_id=str(stored.version),
            interaction=interaction,
            resource=stored.content,
            previous=previous,
            occurred_at=stored.last_updated,
        )

    async def _upsert_in(
        self,
        conn: AsyncConnection,
        res_type: str,
        res_id: str,
        resource: dict[str, Any],
        *,
        if_match: int | None,
        method: str,
    ) -> tuple[WriteResult, ResourceChange]:
        head = await queries.head(conn, res_type, res_id)
        if if_match is not None and (head is None or head.version != if_match):
            current = "none" if head is None else f'W/"{head.version}"'
            raise FhirError(
                412,
                f'Version conflict: If-Match W/"{if_match}" but the current version is {current}',
                code="conflict",
            )
        previous = None
        if head is not None and not head.deleted:
            previous = await queries.version_content(conn, res_type, res_id, head.version)
        stored = await self._put_version(conn, res_type, res_id, resource, head=head, method=method)
        interaction: ChangeInteraction = "update" if previous is not None else "create"
        return WriteResult(stored, created=previous is None), self._change(
            stored, interaction, previous
        )

    async def _lock_condition(self, conn: AsyncConnection, key: str) -> None:
        # Conditional writes search, then write: make concurrent ones with the same
        # condition take turns (other processes too) so two cannot both create.
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})

    async def create(
        self,
        res_type: str,
        resource: dict[str, Any],
        *,
        if_none_exist: SearchRequest | None = None,
        condition_key: str = "",
    ) -> WriteResult:
        """Create a resource with a new server-assigned id (conditionally, if asked)."""

        async def operation(conn: AsyncConnection) -> tuple[WriteResult, ResourceChange | None]:
            if if_none_exist is not None:
                await self._lock_condition(conn, f"{res_type}?{condition_key}")
                found = await queries.match_ids(conn, if_none_exist, limit=2)
                if len(found) > 1:
                    raise FhirError(
                        412,
                        "If-None-Exist matched more than one resource",
                        code="duplicate",
                    )
                if found:
                    existing = await queries.read_current(conn, res_type, found[0])
                    return WriteResult(existing, created=False, matched_existing=True), None
            res_id = str(uuid.uuid4())
            stored = await self._put_version(
                conn, res_type, res_id, resource, head=None, method="POST"
            )
            return WriteResult(stored, created=True), self._change(stored, "create", None)

        return await self._write(operation)

    async def create_many(self, items: Sequence[dict[str, Any]]) -> list[WriteResult]:
        """Create several resources in one transaction, in order: they commit together or
        not at all, as a lab files a panel (its results and the report that names them).

        Each resource carries its id, fresh (a UUID the server-side caller chose, so that
        one can reference another of the same write). One statement per table for them
        all, and one turn of the write lock, where a create each took several statements
        and a turn: the simulator's panels were the sandbox's write bottleneck."""
        if not items:
            return []

        async def operation(conn: AsyncConnection) -> tuple[list[WriteResult], _Changes]:
            now = utc_now()
            stored: list[StoredResource] = []
            head_rows: list[dict[str, Any]] = []
            version_rows: list[dict[str, Any]] = []
            index_rows: list[dict[str, Any]] = []
            for n, resource in enumerate(items):
                res_type, res_id = resource["resourceType"], resource["id"]
                # A microsecond apart: `_lastUpdated` keeps the order they were filed in.
                at = now + timedelta(microseconds=n)
                content = with_meta(resource, 1, at)
                head_rows.append(
                    {"res_type": res_type, "res_id": res_id, "version": 1}
                    | {"last_updated": at, "deleted": False}
                )
                version_rows.append(
                    {"res_type": res_type, "res_id": res_id, "version": 1, "last_updated": at}
                    | {"deleted": False, "method": "POST", "content": _json(content)}
                )
                index_rows += queries.index_rows(res_type, res_id, content, self.fhir_base)
                stored.append(StoredResource(res_type, res_id, 1, at, False, "POST", content))
            await conn.execute(insert(heads), head_rows)  # a taken id: IntegrityError
            await conn.execute(insert(resources), version_rows)
            if index_rows:
                await conn.execute(insert(search_index), index_rows)
            results = [WriteResult(s, created=True) for s in stored]
            return results, [self._change(s, "create", None) for s in stored]

        return await self._write(operation)

    async def update(
        self, res_type: str, res_id: str, resource: dict[str, Any], *, if_match: int | None = None
    ) -> WriteResult:
        """Update a resource, creating it with this id if it does not exist (or was deleted)."""

        async def operation(conn: AsyncConnection) -> tuple[WriteResult, ResourceChange | None]:
            return await self._upsert_in(
                conn, res_type, res_id, resource, if_match=if_match, method="PUT"
            )

        return await self._write(operation)

    async def conditional_update(
        self,
        res_type: str,
        condition: SearchRequest,
        resource: dict[str, Any],
        *,
        condition_key: str,
        if_match: int | None = None,
    ) -> WriteResult:
        """Update the one resource matching `condition`, or create one if none matches."""

        async def operation(conn: AsyncConnection) -> tuple[WriteResult, ResourceChange | None]:
            await self._lock_condition(conn, f"{res_type}?{condition_key}")
            found = await queries.match_ids(conn, condition, limit=2)
            if len(found) > 1:
                raise FhirError(
                    412,
                    "The conditional update matched more than one resource",
                    code="multiple-matches",
                )
            body_id = resource.get("id")
            if found:
                if body_id is not None and body_id != found[0]:
                    raise FhirError(
                        400,
                        f"Resource id {body_id} does not match the resource the condition found",
                        code="invalid",
                        expression=[f"{res_type}.id"],
                    )
                res_id = found[0]
            else:
                res_id = body_id if isinstance(body_id, str) else str(uuid.uuid4())
            return await self._upsert_in(
                conn, res_type, res_id, resource, if_match=if_match, method="PUT"
            )

        return await self._write(operation)

    async def delete(
        self, res_type: str, res_id: str, *, if_match: int | None = None
    ) -> WriteResult | None:
        """Delete a resource (a tombstone version); None if there was nothing to delete."""

        async def operation(
            conn: AsyncConnection,
        ) -> tuple[WriteResult | None, ResourceChange | None]:
            head = await queries.head(conn, res_type, res_id)
            if if_match is not None and (head is None or head.version != if_match):
                raise FhirError(412, "Version conflict on delete", code="conflict")
            if head is None or head.deleted:
                return None, None
            previous = await queries.version_content(conn, res_type, res_id, head.version)
            stored = await self._put_version(
                conn, res_type, res_id, previous, head=head, method="DELETE", deleted=True
            )
            return WriteResult(stored, created=False), self._change(stored, "delete", previous)

        return await self._write(operation)

    async def load(self, items: Iterable[dict[str, Any]]) -> int:
        """Insert resources that do not exist yet, in one transaction, without change events.

        For the seed: idempotent (ids that exist, even deleted ones, are left alone) and bulk
        (a few statements for thousands of resources); returns how many it wrote.
        """
        wanted = {(r["resourceType"], r["id"]): r for r in items}
        if not wanted:
            return 0
        async with self._lock, self._write_transaction() as conn:
            existing: set[tuple[str, str]] = set()
            keys = list(wanted)
            for start in range(0, len(keys), 200):
                rows = await conn.execute(
                    select(heads.c.res_type, heads.c.res_id).where(
                        tuple_(heads.c.res_type, heads.c.res_id).in_(keys[start : start + 200])
                    )
                )
                existing.update((row.res_type, row.res_id) for row in rows)
            fresh = [(key, r) for key, r in wanted.items() if key not in existing]
            if not fresh:
                return 0
            now = utc_now()
            head_rows, version_rows, index_rows = [], [], []
            for (res_type, res_id), resource in fresh:
                content = with_meta(resource, 1, now)
                head_rows.append(
                    {
                        "res_type": res_type,
                        "res_id": res_id,
                        "version": 1,
                        "last_updated": now,
                        "deleted": False,
                    }
                )
                version_rows.append(
                    {
                        "res_type": res_type,
                        "res_id": res_id,
                        "version": 1,
                        "last_updated": now,
                        "deleted": False,
                        "method": "PUT",
                        "content": _json(content),
                    }
                )
                index_rows.extend(queries.index_rows(res_type, res_id, content, self.fhir_base))
            await conn.execute(insert(heads), head_rows)
            await conn.execute(insert(resources), version_rows)
            for start in range(0, len(index_rows), 5000):
                await conn.execute(insert(search_index), index_rows[start : start + 5000])
        return len(fresh)

    async def read(self, res_type: str, res_id: str) -> StoredResource:
        """The current version; 404 if unknown, 410 if deleted."""
        async with self.engine.connect() as conn:
            return await queries.read_current(conn, res_type, res_id)

    async def vread(self, res_type: str, res_id: str, version: int) -> StoredResource:
        """One version; 404 if unknown, 410 if that version is a deletion."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(*COLUMNS).where(
                        resources.c.res_type == res_type,
                        resources.c.res_id == res_id,
                        resources.c.version == version,
                    )
                )
            ).first()
        if row is None:
            raise FhirError(404, f"{res_type}/{res_id}/_history/{version} is not known")
        stored = row_to_stored(row)
        if stored.deleted:
            raise FhirError(
                410, f"{res_type}/{res_id} version {version} is a deletion", code="deleted"
            )
        return stored

    async def read_many(self, keys: Sequence[tuple[str, str]]) -> list[StoredResource]:
        """The current, not-deleted versions of `keys` (missing ones skipped), in key order."""
        if not keys:
            return []
        async with self.engine.connect() as conn:
            return await queries.read_many(conn, keys)

    async def history(
        self,
        res_type: str,
        res_id: str | None,
        *,
        since: datetime | None,
        count: int,
        offset: int,
    ) -> HistoryPage:
        """Versions of one resource (or of a whole type), newest first; 404 if unknown."""
        conditions: list[ColumnElement[bool]] = [resources.c.res_type == res_type]
        if res_id is not None:
            conditions.append(resources.c.res_id == res_id)
        if since is not None:
            conditions.append(resources.c.last_updated >= since)
        async with self.engine.connect() as conn:
            if res_id is not None:
                known = await conn.scalar(
                    select(func.count())
                    .select_from(heads)
                    .where(heads.c.res_type == res_type, heads.c.res_id == res_id)
                )
                if not known:
                    raise FhirError(404, f"{res_type}/{res_id} is not known", code="not-found")
            total = await conn.scalar(
                select(func.count()).select_from(resources).where(*conditions)
            )
            rows = await conn.execute(
                select(*COLUMNS)
                .where(*conditions)
                .order_by(
                    resources.c.last_updated.desc(),
                    resources.c.res_id.asc(),
                    resources.c.version.desc(),
                )
                .limit(count)
                .offset(offset)
            )
            entries = [row_to_stored(row) for row in rows]
        return HistoryPage(int(total or 0), entries)

    async def search(self, request: SearchRequest) -> SearchResult:
        """One page of a search, its total, and its included resources."""
        async with self.engine.connect() as conn:
            if request.summary_count or request.count == 0:
                return SearchResult(await self._count(conn, request), [], [])
            page = matching_heads(request).limit(request.count).offset(request.offset)
            keys = [(row.res_type, row.res_id) for row in await conn.execute(page)]
            if 0 < len(keys) < request.count or (not keys and request.offset == 0):
                # A page that is not full is the last: the total is known without counting
                # (one query fewer for most searches, such as a read by `_id` with its
                # `_include`s, which the connector makes for every id-only notification).
                total = request.offset + len(keys)
            else:
                total = await self._count(conn, request)
            matches = await queries.read_many(conn, keys)
            included = await queries.included(conn, request, matches)
        return SearchResult(total, matches, included)

    @staticmethod
    async def _count(conn: AsyncConnection, request: SearchRequest) -> int:
        total = await conn.scalar(
            select(func.count()).select_from(heads).where(*search_conditions(request))
        )
        return int(total or 0)

    async def compartment_keys(
        self,
        patient_id: str,
        *,
        since: datetime | None = None,
        types: Sequence[str] | None = None,
    ) -> list[tuple[str, str]]:
        """The patient and every current resource that references them, patient first."""
        referencing = (
            select(search_index.c.res_type, search_index.c.res_id)
            .where(
                search_index.c.param == REF_PARAM,
                search_index.c.ref_type == "Patient",
                search_index.c.ref_id == patient_id,
            )
            .distinct()
        )
        conditions: list[ColumnElement[bool]] = [heads.c.deleted.is_(False)]
        if since is not None:
            conditions.append(heads.c.last_updated >= since)
        if types:
            conditions.append(heads.c.res_type.in_(list(types)))
        is_patient = and_(heads.c.res_type == "Patient", heads.c.res_id == patient_id)
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(heads.c.res_type, heads.c.res_id)
                .where(
                    *conditions,
                    is_patient | tuple_(heads.c.res_type, heads.c.res_id).in_(referencing),
                )
                .order_by(heads.c.res_type, heads.c.last_updated, heads.c.res_id)
            )
            keys = [(row.res_type, row.res_id) for row in rows]
        own = ("Patient", patient_id)
        return ([own] if own in keys else []) + [k for k in keys if k != own]

    async def references_of(self, keys: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """Every resource the resources `keys` reference (via the `_ref` index), deduplicated."""
        if not keys:
            return []
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(search_index.c.ref_type, search_index.c.ref_id).where(
                    search_index.c.param == REF_PARAM,
                    tuple_(search_index.c.res_type, search_index.c.res_id).in_(list(keys)),
                )
            )
            return list(dict.fromkeys((row.ref_type, row.ref_id) for row in rows))

    async def exists(self, res_type: str, res_id: str) -> bool:
        """Whether a current, not-deleted resource `res_type/res_id` exists."""
        async with self.engine.connect() as conn:
            deleted = await conn.scalar(
                select(heads.c.deleted).where(
                    heads.c.res_type == res_type, heads.c.res_id == res_id
                )
            )
        return deleted is not None and not deleted

    async def get_meta(self, key: str) -> str | None:
        """A value of the sandbox's key/value table."""
        async with self.engine.connect() as conn:
            value: str | None = await conn.scalar(
                select(sandbox_meta.c.value).where(sandbox_meta.c.key == key)
            )
        return value

    async def set_meta(self, key: str, value: str) -> None:
        """Set a value of the sandbox's key/value table."""
        async with self._lock, self._write_transaction() as conn:
            await conn.execute(delete(sandbox_meta).where(sandbox_meta.c.key == key))
            await conn.execute(insert(sandbox_meta).values(key=key, value=value))
