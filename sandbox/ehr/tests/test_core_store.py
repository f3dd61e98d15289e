"""The store on its own: compare-and-set across processes, re-indexing, PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, event, func, select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from ehr_sandbox.fhir.changes import ChangeFeed
from ehr_sandbox.fhir.outcomes import FhirError
from ehr_sandbox.search import SearchRequest, parse_search
from ehr_sandbox.settings import SandboxSettings
from ehr_sandbox.store import Store
from ehr_sandbox.store.tables import sandbox_meta, search_index
from ehr_sandbox.testing import running

BASE = "http://ehr.test/fhir"


def _patient(family: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family}], **extra}


def _query(resource_type: str, *pairs: tuple[str, str]) -> SearchRequest:
    return parse_search(
        resource_type, list(pairs), fhir_base=BASE, default_count=50, max_count=50, strict=True
    )


async def _store(url: str) -> Store:
    store = Store(url, change_feed=ChangeFeed(), fhir_base=BASE)
    await store.start()
    return store


@pytest.fixture
async def two_stores(database_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one database: two processes sharing it, each with its own lock."""
    url = database_url
    first = await _store(url)
    second = await _store(url)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()
        await first.feed.close()
        await second.feed.close()


async def test_if_match_race_across_processes_has_one_winner(
    two_stores: tuple[Store, Store],
) -> None:
    first, second = two_stores
    created = await first.create("Patient", _patient("Race"))
    pid = created.stored.id

    async def attempt(store: Store, n: int) -> str:
        try:
            await store.update("Patient", pid, {**_patient(f"R{n}"), "id": pid}, if_match=1)
        except FhirError as exc:
            return str(exc.status)
        return "ok"

    results = await asyncio.gather(*(attempt(s, n) for n, s in enumerate([first, second] * 4)))
    assert sorted(results) == ["412"] * 7 + ["ok"]
    assert (await second.read("Patient", pid)).version == 2


async def test_unconditional_updates_across_processes_all_land(
    two_stores: tuple[Store, Store],
) -> None:
    first, second = two_stores
    pid = (await first.create("Patient", _patient("Many"))).stored.id
    await asyncio.gather(
        *(
            store.update("Patient", pid, {**_patient(f"U{n}"), "id": pid})
            for n, store in enumerate([first, second] * 5)
        )
    )
    history = await first.history("Patient", pid, since=None, count=50, offset=0)
    assert [e.version for e in history.entries] == list(range(11, 0, -1))


async def test_index_is_rebuilt_when_the_parameters_change(database_url: str) -> None:
    url = database_url
    store = await _store(url)
    await store.create("Patient", _patient("Indexed", birthDate="1970-01-01"))
    # Simulate an older release's index: a different signature and no rows.
    async with store.engine.begin() as conn:
        await conn.execute(delete(search_index))
        await conn.execute(update(sandbox_meta).values(value="an-older-signature"))
    assert (await store.search(_query("Patient", ("family", "indexed")))).total == 0
    await store.close()
    restarted = await _store(url)
    try:
        assert (await restarted.search(_query("Patient", ("family", "indexed")))).total == 1
        assert (await restarted.search(_query("Patient", ("birthdate", "1970")))).total == 1
    finally:
        await restarted.close()
        await store.feed.close()
        await restarted.feed.close()


async def test_load_is_idempotent_and_silent(database_url: str) -> None:
    store = await _store(database_url)
    seen: list[str] = []

    async def listener(change: Any) -> None:
        seen.append(change.id)

    store.feed.subscribe(listener)
    try:
        items = [{**_patient("Seed"), "id": f"s{n}"} for n in range(3)]
        assert await store.load(items) == 3
        await store.delete("Patient", "s1")
        assert await store.load(items) == 0  # existing ids, even deleted ones, stay as they are
        assert not await store.exists("Patient", "s1")
        assert seen == ["s1"]  # only the delete was an event
    finally:
        await store.close()
        await store.feed.close()


async def test_create_many_commits_all_in_order_or_nothing(database_url: str) -> None:
    store = await _store(database_url)
    seen: list[tuple[str, str, str]] = []

    async def listener(change: Any) -> None:
        seen.append((change.resource_type, change.id, change.interaction))

    store.feed.subscribe(listener)
    try:
        panel = [
            {**_patient("Many"), "id": "m-pat"},
            {
                "resourceType": "Observation",
                "id": "m-obs",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "Patient/m-pat"},
            },
        ]
        written = await store.create_many(panel)
        assert [(w.stored.id, w.stored.version, w.created) for w in written] == [
            ("m-pat", 1, True),
            ("m-obs", 1, True),
        ]
        # The order they were filed in, as the change feed and _lastUpdated both say.
        assert seen == [("Patient", "m-pat", "create"), ("Observation", "m-obs", "create")]
        assert written[0].stored.last_updated < written[1].stored.last_updated
        found = await store.search(_query("Observation", ("subject", "Patient/m-pat")))
        assert [m.id for m in found.matches] == ["m-obs"]
        # A taken id: nothing of the write lands, and nothing is announced.
        again = [{**_patient("Other"), "id": "m-new"}, {**panel[1], "status": "amended"}]
        with pytest.raises(FhirError) as refused:
            await store.create_many(again)
        assert refused.value.status == 409
        assert not await store.exists("Patient", "m-new")
        assert (await store.read("Observation", "m-obs")).content["status"] == "final"
        assert len(seen) == 2
    finally:
        await store.close()
        await store.feed.close()


async def test_postgres_store_smoke(database_url: str) -> None:
    url = SandboxSettings(database_url=database_url).resolved_database_url()
    store = await _store(url)
    try:
        created = await store.create("Patient", _patient("Pg", birthDate="1999-09-09"))
        pid = created.stored.id
        updated = await store.update("Patient", pid, {**_patient("Pg2"), "id": pid}, if_match=1)
        assert updated.stored.version == 2
        with pytest.raises(FhirError) as stale:
            await store.update("Patient", pid, {**_patient("Pg3"), "id": pid}, if_match=1)
        assert stale.value.status == 412
        results = await asyncio.gather(
            *(
                store.update("Patient", pid, {**_patient(f"P{n}"), "id": pid}, if_match=2)
                for n in range(4)
            ),
            return_exceptions=True,
        )
        assert sum(not isinstance(r, Exception) for r in results) == 1
        condition = _query("Patient", ("identifier", "urn:pg|1"))
        body = _patient("Cond", identifier=[{"system": "urn:pg", "value": "1"}])
        conditional = await asyncio.gather(
            *(
                store.create(
                    "Patient", body, if_none_exist=condition, condition_key="identifier=urn:pg|1"
                )
                for _ in range(4)
            )
        )
        assert sum(r.created for r in conditional) == 1
        found = await store.search(_query("Patient", ("family", "p")))
        assert [m.id for m in found.matches] == [pid]
        assert (await store.search(_query("Patient", ("_lastUpdated", "ge2000-01-01")))).total == 2
        deleted = await store.delete("Patient", pid)
        assert deleted is not None
        with pytest.raises(FhirError) as gone:
            await store.read("Patient", pid)
        assert gone.value.status == 410
        history = await store.history("Patient", pid, since=None, count=10, offset=0)
        assert history.total == 4
        async with store.engine.connect() as conn:
            rows = await conn.scalar(select(func.count()).select_from(search_index))
        assert rows
        assert await store.ping()
    finally:
        await store.close()
        await store.feed.close()


async def test_a_registered_search_param_is_indexed_and_advertised(tmp_path: Path) -> None:
    from ehr_sandbox.fhir.resource_types import SearchParam, params_for, register_search_param
    from ehr_sandbox.testing import FHIR_JSON, running

    name = "ehr-test-author-name"
    register_search_param("Basic", SearchParam(name, "string", ("author.display",)))
    try:
        async with running(tmp_path) as box:
            basic = {
                "resourceType": "Basic",
                "code": {"text": "note"},
                "author": {"reference": "Practitioner/p", "display": "Dr. Quill"},
            }
            created = await box.client.post("/fhir/Basic", json=basic, headers=FHIR_JSON)
            assert created.status_code == 201
            found = await box.search("/fhir/Basic", **{name: "dr. q"})
            assert box.ids(found) == [created.json()["id"]]
            statement = (await box.client.get("/fhir/metadata")).json()
            entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Basic")
            assert name in {p["name"] for p in entry["searchParam"]}
    finally:
        # The registry is process-wide: leave it as the other tests expect it.
        params_for("Basic").pop(name, None)


async def test_the_planner_has_statistics_once_the_sandbox_has_started(tmp_path: Path) -> None:
    """ANALYZE at start-up: on tables PostgreSQL has never analysed, a conditional create's
    search slowed with every new resource of its type (benchmark 6) until autovacuum came."""
    async with running(tmp_path) as box:
        engine = create_async_engine(box.settings.resolved_database_url())
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT relname, reltuples FROM pg_class WHERE relname IN "
                        "('resources', 'resource_heads', 'search_index')"
                    )
                )
                # -1: never analysed (PostgreSQL 14+); ANALYZE sets the row estimate.
                assert {name: tuples >= 0 for name, tuples in rows} == {
                    "resources": True,
                    "resource_heads": True,
                    "search_index": True,
                }
        finally:
            await engine.dispose()


async def test_every_page_reports_the_searchs_total(database_url: str) -> None:
    """The last page (not full) knows the total without counting; full pages and pages
    past the end count."""
    store = await _store(database_url)
    try:
        for n in range(5):
            await store.create("Patient", _patient("Paged", gender="female" if n else "male"))
        cases = {
            ("2", "0"): (5, 2),  # full page: counted
            ("2", "4"): (5, 1),  # the last, short page
            ("5", "0"): (5, 5),  # exactly full
            ("10", "0"): (5, 5),  # one short page
            ("2", "6"): (5, 0),  # past the end: counted
            ("0", "0"): (5, 0),  # a count only
        }
        for (count, offset), (total, shown) in cases.items():
            request = _query("Patient", ("family", "Paged"), ("_count", count))
            request.offset = int(offset)
            result = await store.search(request)
            assert (result.total, len(result.matches)) == (total, shown), (count, offset)
        none = await store.search(_query("Patient", ("family", "Nobody")))
        assert (none.total, none.matches) == (0, [])
        counts: list[str] = []

        def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
            if "count(" in statement.lower():
                counts.append(statement)

        event.listen(store.engine.sync_engine, "before_cursor_execute", seen)
        males = await store.search(_query("Patient", ("family", "Paged"), ("gender", "male")))
        assert (males.total, len(males.matches)) == (1, 1)
        assert counts == []  # one short page: no count query
        await store.search(_query("Patient", ("family", "Paged"), ("_count", "2")))
        assert len(counts) == 1
    finally:
        await store.close()
        await store.feed.close()
