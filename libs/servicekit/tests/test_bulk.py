"""`insert_rows`: many rows in one statement, with what one statement per row would store
(and refuse), on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import (
    ARRAY,
    JSON,
    Boolean,
    Column,
    DateTime,
    Enum,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError, IntegrityError

from servicekit.bulk import insert_rows
from servicekit.db import Database

pytestmark = [pytest.mark.integration]

_META = MetaData()
THINGS = Table(
    "bulk_things",
    _META,
    Column("id", String(8), primary_key=True),
    Column("kind", String(8), primary_key=True),
    Column("body", JSON),
    Column("doc", JSONB),
    Column("at", DateTime(timezone=True)),
    Column("count", Integer),
    Column("flag", Boolean),
    Column("note", Text),
)
KINDS = Table(
    "bulk_kinds",
    _META,
    Column("id", String(8), primary_key=True),
    Column("colour", Enum("red", "green", name="bulk_colour")),
    Column("label", Enum("a", "b", native_enum=False, length=4)),
)
TAGGED = Table(
    "bulk_tagged", _META, Column("id", String(8), primary_key=True), Column("tags", ARRAY(Text))
)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    async with database.engine.begin() as conn:
        await conn.run_sync(_META.create_all)
    try:
        yield database
    finally:
        await database.dispose()


def _row(n: int, **changes: Any) -> dict[str, Any]:
    row = {
        "id": f"t{n}",
        "kind": "a",
        "body": {"n": n, "nested": [1, "two", None], "text": "é ✓"},
        "doc": [n, {"k": "v"}],
        "at": datetime(2026, 12, 7, 10, n, tzinfo=timezone(timedelta(hours=2))),
        "count": n,
        "flag": n % 2 == 0,
        "note": f"note {n}",
    }
    return row | changes


async def _stored(db: Database) -> list[dict[str, Any]]:
    async with db.sessions() as session:
        rows = (await session.execute(select(THINGS).order_by(THINGS.c.id))).mappings().all()
    return [dict(r) for r in rows]


async def test_rows_are_stored_as_an_insert_per_row_stores_them(db: Database) -> None:
    rows = [_row(1), _row(2, body=None, doc=None, at=None, count=None, flag=None, note=None)]
    async with db.transaction() as session:
        await insert_rows(session, THINGS, rows)

    stored = await _stored(db)

    assert stored[0] == rows[0]
    assert stored[0]["at"] == datetime(2026, 12, 7, 8, 1, tzinfo=UTC)  # the instant kept
    # None in a JSON column is JSON null, as SQLAlchemy stores it; elsewhere SQL NULL.
    assert stored[1] == rows[1]
    async with db.sessions() as session:
        nulls = await session.scalar(
            select(THINGS.c.body.is_(None)).where(THINGS.c.id == "t2")  # SQL NULL?
        )
    assert nulls is False


async def test_an_upsert_replaces_stored_rows_and_the_last_row_of_a_key_wins(db: Database) -> None:
    async with db.transaction() as session:
        await insert_rows(session, THINGS, [_row(1), _row(2)], key=("id", "kind"))
    async with db.transaction() as session:
        await insert_rows(
            session,
            THINGS,
            [_row(2, note="first"), _row(3), _row(2, note="second"), _row(1, kind="b")],
            key=("id", "kind"),
        )

    stored = {(r["id"], r["kind"]): r for r in await _stored(db)}

    assert set(stored) == {("t1", "a"), ("t1", "b"), ("t2", "a"), ("t3", "a")}
    assert stored[("t2", "a")]["note"] == "second"
    assert stored[("t1", "a")] == _row(1)


async def test_a_key_with_no_other_columns_leaves_stored_rows(db: Database) -> None:
    async with db.transaction() as session:
        await insert_rows(session, THINGS, [_row(1)])
        await insert_rows(
            session,
            THINGS,
            [{"id": "t1", "kind": "a"}, {"id": "t9", "kind": "a"}],
            key=("id", "kind"),
        )
    assert [r["id"] for r in await _stored(db)] == ["t1", "t9"]
    assert (await _stored(db))[0]["note"] == "note 1"


async def test_enum_columns_native_or_not_take_their_values(db: Database) -> None:
    rows = [{"id": "x", "colour": "red", "label": "a"}, {"id": "y", "colour": None, "label": "b"}]
    async with db.transaction() as session:
        await insert_rows(session, KINDS, rows)
        stored = (await session.execute(select(KINDS).order_by(KINDS.c.id))).mappings().all()
    assert [dict(r) for r in stored] == rows


async def test_too_long_a_value_is_refused_not_cut(db: Database) -> None:
    with pytest.raises(DBAPIError, match="too long"):
        async with db.transaction() as session:
            await insert_rows(session, THINGS, [_row(1, id="much-too-long")])
    assert await _stored(db) == []


async def test_a_plain_insert_of_a_stored_key_fails_as_one_insert_would(db: Database) -> None:
    async with db.transaction() as session:
        await insert_rows(session, THINGS, [_row(1)])
    with pytest.raises(IntegrityError):
        async with db.transaction() as session:
            await insert_rows(session, THINGS, [_row(2), _row(1)])
    assert [r["id"] for r in await _stored(db)] == ["t1"]


async def test_nothing_to_insert_sends_nothing(db: Database) -> None:
    async with db.transaction() as session:
        await insert_rows(session, THINGS, [])
        await insert_rows(session, THINGS, [], key=("id", "kind"))
    assert await _stored(db) == []


async def test_unknown_and_array_columns_are_refused_before_any_statement(db: Database) -> None:
    async with db.transaction() as session:
        with pytest.raises(ValueError, match="no column 'colour'"):
            await insert_rows(session, THINGS, [_row(1) | {"colour": "red"}])
        with pytest.raises(TypeError, match="array column"):
            await insert_rows(session, TAGGED, [{"id": "x", "tags": ["a", "b"]}])
