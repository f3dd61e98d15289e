"""`hold_keys`: a transaction holding a key makes another that wants it wait until it ends,
whatever the order of the keys; other keys, or the same key of another scope, do not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from servicekit.db import Database, hold_keys

pytestmark = [pytest.mark.integration]


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.dispose()


class _Holder:
    """A transaction that holds `keys` until released; `got` is set once it holds them."""

    def __init__(self, db: Database, scope: str, keys: list[str]) -> None:
        self.got = asyncio.Event()
        self.release = asyncio.Event()
        self.task = asyncio.create_task(self._run(db, scope, keys))

    async def _run(self, db: Database, scope: str, keys: list[str]) -> None:
        async with db.transaction() as session:
            await hold_keys(session, scope, keys)
            self.got.set()
            await self.release.wait()

    async def holds(self, within: float) -> bool:
        try:
            await asyncio.wait_for(self.got.wait(), within)
        except TimeoutError:
            return False
        return True


async def test_a_held_key_makes_others_wait_until_the_transaction_ends(db: Database) -> None:
    holder = _Holder(db, "charts", ["p2", "p1"])
    assert await holder.holds(5)
    waiter = _Holder(db, "charts", ["p3", "p1"])
    other_keys = _Holder(db, "charts", ["p4", "p5"])
    other_scope = _Holder(db, "messages", ["p1"])
    assert await other_keys.holds(5) and await other_scope.holds(5)
    assert not await waiter.holds(0.5)  # p1 is held
    holder.release.set()
    assert await waiter.holds(5)
    for each in (holder, waiter, other_keys, other_scope):
        each.release.set()
        await asyncio.wait_for(each.task, 5)


async def test_nothing_to_hold_sends_nothing(db: Database) -> None:
    async with db.transaction() as session:
        await hold_keys(session, "charts", [])
        await hold_keys(session, "charts", iter(()))
