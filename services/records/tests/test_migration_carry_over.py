"""Upgrading a records database that already holds live reports keeps their results: they
move into `lab_results`, grouped by their report, and are served as before (PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from records import store
from records.app import MIGRATIONS
from records.explanations import load
from records.service import lab_report
from servicekit.migrations import _config, set_target_metadata

pytestmark = [pytest.mark.integration]
BEFORE = "e9216765b9cf"  # the revision before results got a table of their own


def _upgrade(url: str, target: str) -> None:
    set_target_metadata(store.metadata)
    command.upgrade(_config(url, MIGRATIONS), target)


async def test_live_reports_stored_before_keep_their_results(database_url: str) -> None:
    await asyncio.to_thread(_upgrade, database_url, f"records@{BEFORE}")
    await asyncio.to_thread(_upgrade, database_url, "servicekit@head")
    engine = create_async_engine(database_url)
    observation = {
        "observation_fhir_id": "obs-1",
        "code": {"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"},
        "status": "final",
        "value_quantity": {"value": 6.3, "unit": "mmol/L"},
        "reference_ranges": [{"low": {"value": 3.1}, "high": {"value": 6.2}}],
        "interpretation": [],
        "effective": "2026-11-20T08:00:00+00:00",
    }
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO lab_reports (report_fhir_id, patient_id, status, code, category,"
                " effective, issued, performer, observations, source_version, source_updated)"
                " VALUES ('dr-1', 'pat-1', 'final', :code, :category, :at, NULL, '[]',"
                " :observations, '1', :at)"
            ),
            {
                "code": json.dumps({"system": "http://loinc.org", "code": "24323-8"}),
                "category": json.dumps([{"system": "x", "code": "LAB"}]),
                "observations": json.dumps([observation]),
                "at": datetime(2026, 11, 20, 8, tzinfo=UTC),
            },
        )
    await asyncio.to_thread(_upgrade, database_url, "heads")
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT sort_at, category_codes FROM lab_reports"))).one()
    assert row.sort_at == datetime(2026, 11, 20, 8, tzinfo=UTC)
    assert row.category_codes == "|LAB|"

    async with async_sessionmaker(engine)() as session:
        report = await lab_report(session, "pat-1", "dr-1", load())
    await engine.dispose()
    assert report is not None
    (result,) = report["observations"]
    assert result["value_quantity"]["value"] == 6.3
    assert result["flag"]["code"] == "high"  # 6.3 is above the lab's 6.2
