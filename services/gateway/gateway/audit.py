"""The tamper-evident log of who read a patient's health data.

Rows form a hash chain; appends are serialised (an in-process lock, and a
transaction-scoped PostgreSQL advisory lock for several replicas) so the chain never forks.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import text

from gateway import store
from gateway.domain import AccessRecord, access_hash, first_broken_link
from servicekit.db import Database

_lock = asyncio.Lock()
_ADVISORY_KEY = 0x5041_4C4F  # "PALO": patient access log


async def record_access(
    db: Database, patient_id: str, actor: str, action: str, resource: str
) -> None:
    """Append one read to the chain."""
    async with _lock, db.transaction() as session:
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})
        prev = await store.last_access_hash(session)
        at = datetime.now(UTC).replace(microsecond=0)
        session.add(
            store.AccessLogEntry(
                patient_id=patient_id,
                actor=actor,
                action=action,
                resource=resource,
                at=at,
                prev_hash=prev,
                hash=access_hash(prev, patient_id, actor, action, resource, at),
            )
        )


async def verify(db: Database) -> int | None:
    """Id of the first tampered row of the whole chain (None: intact)."""
    async with db.sessions() as session:
        rows = await store.whole_access_log(session)
    broken = first_broken_link(
        AccessRecord(r.patient_id, r.actor, r.action, r.resource, r.at, r.prev_hash, r.hash)
        for r in rows
    )
    return rows[broken].id if broken is not None else None
