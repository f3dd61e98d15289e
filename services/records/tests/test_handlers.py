"""Records' handlers without a broker (`servicekit.testing.deliver`: the consumer's own
path, on a real PostgreSQL); `test_read_model_kafka.py` runs the same through Kafka."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from contracts.base import Coding, Quantity, SourceVersion
from contracts.lab import LabObservation, LabResultedV1, ReportStatus
from records.app import build
from records.settings import Settings
from servicekit.app import Service
from servicekit.testing import broker_less_settings, deliver, serving_in_process

T = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def _lab(version: str, value: float, status: ReportStatus = ReportStatus.FINAL) -> LabResultedV1:
    return LabResultedV1(
        patient_id="pat-1",
        report_fhir_id="dr-1",
        status=status,
        code=Coding(system="http://loinc.org", code="24323-8", display="Metabolic panel"),
        effective=T,
        observations=[
            LabObservation(
                observation_fhir_id="obs-1",
                code=Coding(system="http://loinc.org", code="2345-7", display="Glucose"),
                status="final",
                value_quantity=Quantity(value=value, unit="mmol/L"),
            )
        ],
        source=SourceVersion(
            resource_type="DiagnosticReport",
            fhir_id="dr-1",
            version_id=version,
            last_updated=T + timedelta(minutes=int(version)),
        ),
    )


@pytest.fixture
async def records(database_url: str) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    service = build(Settings(**broker_less_settings(database_url)))
    async with serving_in_process(service.app, "http://records") as client:
        yield service, client


async def test_an_amendment_replaces_a_report_and_a_stale_version_is_ignored(
    records: tuple[Service, httpx.AsyncClient],
) -> None:
    service, client = records
    assert await deliver(service, _lab("1", 6.3), subject="pat-1") == "handled"
    assert (
        await deliver(service, _lab("3", 5.9, ReportStatus.AMENDED), subject="pat-1") == "handled"
    )
    # v2 arrives after v3: handled (in the inbox), but the read model keeps v3.
    assert await deliver(service, _lab("2", 7.0), subject="pat-1") == "handled"
    report = (await client.get("/patients/pat-1/lab-results/dr-1")).json()
    assert (report["version"], report["status"]) == ("3", "amended")
    assert report["observations"][0]["value_quantity"]["value"] == 5.9


async def test_a_redelivered_event_is_absorbed_by_the_inbox(
    records: tuple[Service, httpx.AsyncClient],
) -> None:
    service, client = records
    first = await deliver(
        service, _lab("1", 6.3), subject="pat-1", event_id="0b6f1f55-5b8e-4c43-9b1e-6f1df0c3a001"
    )
    again = await deliver(
        service, _lab("1", 6.3), subject="pat-1", event_id="0b6f1f55-5b8e-4c43-9b1e-6f1df0c3a001"
    )
    assert (first, again) == ("handled", "duplicate")
    assert len((await client.get("/patients/pat-1/lab-results")).json()["items"]) == 1
