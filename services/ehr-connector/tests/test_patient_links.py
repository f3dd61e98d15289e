"""One patient-link table read by both sides: what the outbound side knows of a patient (our
id → EHR id) and what the inbound side knows (EHR id → our id) always agree, the latest link
winning on both sides; and a database with the two former tables is merged on upgrade the
same way (PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from ehr_connector import store
from ehr_connector.app import MIGRATIONS
from servicekit.migrations import _config, set_target_metadata

pytestmark = [pytest.mark.integration]
BEFORE = "9bd4e7a5579c"  # the revision with `patient_links` and `inbound_patient_links`
T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)


def _upgrade(url: str, target: str) -> None:
    set_target_metadata(store.metadata)
    command.upgrade(_config(url, MIGRATIONS), target)


async def test_both_directions_agree_and_the_latest_link_wins(database_url: str) -> None:
    await asyncio.to_thread(_upgrade, database_url, "heads")
    engine = create_async_engine(database_url)
    sessions = async_sessionmaker(engine)

    async def link(patient_id: str, fhir_id: str, at: datetime) -> None:
        async with sessions.begin() as session:
            await store.remember_patient(session, patient_id, fhir_id, at)

    async def both_ways() -> tuple[dict[str, str | None], dict[str, str]]:
        async with sessions() as session:
            outbound = {p: await store.patient_fhir_id_of(session, p) for p in ("pat-a", "pat-b")}
            inbound = await store.patient_ids_of(session, ["ehr-1", "ehr-2", "ehr-3"])
        return outbound, inbound

    try:
        await link("pat-a", "ehr-1", T0)
        await link("pat-a", "ehr-1", T0 + timedelta(minutes=1))  # the same link again
        await link("pat-b", "ehr-2", T0)
        assert await both_ways() == (
            {"pat-a": "ehr-1", "pat-b": "ehr-2"},
            {"ehr-1": "pat-a", "ehr-2": "pat-b"},
        )
        # The EHR merged pat-a's record into ehr-3: ehr-1 is nobody's any more.
        await link("pat-a", "ehr-3", T0 + timedelta(minutes=2))
        assert await both_ways() == (
            {"pat-a": "ehr-3", "pat-b": "ehr-2"},
            {"ehr-3": "pat-a", "ehr-2": "pat-b"},
        )
        # ehr-2 is now linked to pat-a (a portal account corrected): pat-b has no EHR Patient.
        await link("pat-a", "ehr-2", T0 + timedelta(minutes=3))
        assert await both_ways() == ({"pat-a": "ehr-2", "pat-b": None}, {"ehr-2": "pat-a"})
    finally:
        await engine.dispose()


async def test_an_upgrade_merges_the_two_former_tables_latest_link_first(
    database_url: str,
) -> None:
    await asyncio.to_thread(_upgrade, database_url, f"ehr_connector@{BEFORE}")
    engine = create_async_engine(database_url)
    outbound = [  # (our id, EHR id, when), as the outbound side had them
        ("pat-booked-only", "ehr-10", T0),  # known from a booking: no inbound row
        ("pat-same", "ehr-11", T0),
        ("pat-relinked", "ehr-old", T0),  # the inbound side saw the later link
        ("pat-stale", "ehr-13", T0),  # ehr-13 was linked to someone else since
    ]
    inbound = [
        ("pat-same", "ehr-11", T0 + timedelta(minutes=1)),
        ("pat-relinked", "ehr-new", T0 + timedelta(minutes=1)),
        ("pat-other", "ehr-13", T0 + timedelta(minutes=2)),
        ("pat-linked-only", "ehr-14", T0),
    ]
    try:
        async with engine.begin() as conn:
            for patient_id, fhir_id, at in outbound:
                await conn.execute(
                    text("INSERT INTO patient_links VALUES (:p, :f, :at)"),
                    {"p": patient_id, "f": fhir_id, "at": at},
                )
            for patient_id, fhir_id, at in inbound:
                await conn.execute(
                    text(
                        "INSERT INTO inbound_patient_links (patient_fhir_id, patient_id,"
                        " linked_at) VALUES (:f, :p, :at)"
                    ),
                    {"p": patient_id, "f": fhir_id, "at": at},
                )
        await asyncio.to_thread(_upgrade, database_url, "heads")
        async with engine.connect() as conn:
            rows = (
                await conn.execute(text("SELECT patient_id, patient_fhir_id FROM patient_links"))
            ).all()
            left = await conn.scalar(text("SELECT to_regclass('inbound_patient_links')"))
    finally:
        await engine.dispose()
    assert {r.patient_id: r.patient_fhir_id for r in rows} == {
        "pat-booked-only": "ehr-10",
        "pat-same": "ehr-11",
        "pat-relinked": "ehr-new",
        "pat-other": "ehr-13",
        "pat-linked-only": "ehr-14",
    }
    assert left is None
