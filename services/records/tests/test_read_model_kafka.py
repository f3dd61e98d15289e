"""The chart read model fed through a real broker, read back over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from contracts.base import Coding, Quantity, ReferenceRange, SourceVersion
from contracts.lab import LabObservation, LabResultedV1, ReportStatus
from contracts.medication import MedicationChangedV1, MedicationStatus
from contracts.record import ImportedEntry, RecordImportedV1, RecordKind
from devstack.topics import ensure_topics
from records.app import build
from records.settings import Settings
from servicekit.app import Service
from servicekit.testing import eventually, isolated_settings, produce_events, serving_in_process

pytestmark = [pytest.mark.integration]
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
                reference_ranges=[
                    ReferenceRange(low=Quantity(value=3.1), high=Quantity(value=6.2))
                ],
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
async def records(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    service = build(Settings(**isolated_settings(database_url, kafka_bootstrap, unique_prefix)))
    async with serving_in_process(service.app, "http://records") as http:
        yield service, http


async def test_lab_result_amendment_replaces_and_a_stale_version_is_ignored(
    records: tuple[Service, httpx.AsyncClient], kafka_bootstrap: str, unique_prefix: str
) -> None:
    _, client = records
    await produce_events(
        kafka_bootstrap,
        [
            ("pat-1", _lab("1", 6.3)),
            ("pat-1", _lab("3", 5.9, ReportStatus.AMENDED)),
            ("pat-1", _lab("2", 7.0)),
        ],
        topic_prefix=unique_prefix,
    )
    medication = MedicationChangedV1(
        patient_id="pat-1",
        medication_request_fhir_id="mr-1",
        status=MedicationStatus.ACTIVE,
        medication=Coding(
            system="http://www.nlm.nih.gov/research/umls/rxnorm",
            code="314076",
            display="lisinopril 10 MG",
        ),
        dosage_text="1 tablet daily",
        source=SourceVersion(
            resource_type="MedicationRequest", fhir_id="mr-1", version_id="1", last_updated=T
        ),
    )
    history = RecordImportedV1(
        patient_id="pat-1",
        backfill_id="bf-1",
        batch_number=1,
        last_batch=True,
        imported_at=T,
        entries=[
            ImportedEntry(
                kind=RecordKind.ALLERGY,
                resource_type="AllergyIntolerance",
                fhir_id="al-1",
                version_id="1",
                status="active",
                display="Cashew nuts",
            )
        ],
    )
    await produce_events(
        kafka_bootstrap, [("pat-1", medication), ("pat-1", history)], topic_prefix=unique_prefix
    )

    async def all_arrived() -> bool:
        meds = (await client.get("/patients/pat-1/medications")).json()
        allergies = (await client.get("/patients/pat-1/allergies")).json()
        labs = (await client.get("/patients/pat-1/lab-results")).json()["items"]
        return bool(meds and allergies and labs and labs[0]["version"] == "3")

    await eventually(all_arrived, timeout=60)
    # v2 arrived after v3: still v3 (the read model never goes back in time).
    report = (await client.get("/patients/pat-1/lab-results/dr-1")).json()
    assert report["status"] == "amended"
    assert report["observations"][0]["value_quantity"]["value"] == 5.9
    assert (await client.get("/patients/pat-1/allergies")).json()[0]["display"] == "Cashew nuts"

    # The home screen's share in one call: what the three routes answer, newest labs first.
    everything = (await client.get("/patients/pat-1/summary")).json()
    assert everything == {
        "lab_results": (await client.get("/patients/pat-1/lab-results?limit=5")).json()["items"],
        "medications": (await client.get("/patients/pat-1/medications")).json(),
        "allergies": (await client.get("/patients/pat-1/allergies")).json(),
    }
    assert everything["lab_results"] and everything["medications"] and everything["allergies"]
    only = await client.get("/patients/pat-1/summary", params={"part": ["medications"]})
    assert only.json() == {"medications": everything["medications"]}
    unknown = await client.get("/patients/pat-1/summary", params={"part": "diary"})
    assert unknown.status_code == 422
    assert unknown.headers["content-type"] == "application/problem+json"


async def test_another_patients_report_is_not_found(
    records: tuple[Service, httpx.AsyncClient], kafka_bootstrap: str, unique_prefix: str
) -> None:
    _, client = records
    await produce_events(kafka_bootstrap, [("pat-1", _lab("1", 6.3))], topic_prefix=unique_prefix)

    async def arrived() -> bool:
        return (await client.get("/patients/pat-1/lab-results/dr-1")).status_code == 200

    await eventually(arrived, timeout=60)
    response = await client.get("/patients/pat-2/lab-results/dr-1")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_health_readiness_and_metrics(records: tuple[Service, httpx.AsyncClient]) -> None:
    _, client = records
    assert (await client.get("/healthz")).json() == {"status": "ok"}

    async def ready() -> bool:
        return (await client.get("/readyz")).status_code == 200

    await eventually(ready, timeout=30)
    assert "consumer_messages_total" in (await client.get("/metrics")).text


async def test_back_filled_reports_and_medications_are_listed_with_their_values(
    records: tuple[Service, httpx.AsyncClient], kafka_bootstrap: str, unique_prefix: str
) -> None:
    _, client = records
    glucose = Coding(system="http://loinc.org", code="2345-7", display="Glucose")
    history = RecordImportedV1(
        patient_id="pat-1",
        backfill_id="bf-1",
        batch_number=1,
        last_batch=True,
        imported_at=T,
        entries=[
            ImportedEntry(
                kind=RecordKind.LAB_RESULT,
                resource_type="DiagnosticReport",
                fhir_id="old-dr",
                version_id="1",
                status="final",
                code=Coding(system="http://loinc.org", code="24323-8", display="Metabolic panel"),
                effective=T - timedelta(days=90),
                related_fhir_ids=["old-obs"],
            ),
            ImportedEntry(
                kind=RecordKind.LAB_RESULT,
                resource_type="Observation",
                fhir_id="old-obs",
                version_id="1",
                status="final",
                code=glucose,
                value="5.4 mmol/L",
                effective=T - timedelta(days=90),
            ),
            ImportedEntry(
                kind=RecordKind.MEDICATION,
                resource_type="MedicationRequest",
                fhir_id="old-med",
                version_id="2",
                status="active",
                display="metformin 500 MG",
                value="1 tablet twice daily",
            ),
        ],
    )
    await produce_events(
        kafka_bootstrap, [("pat-1", history), ("pat-1", _lab("1", 6.3))], topic_prefix=unique_prefix
    )

    async def both() -> bool:
        return len((await client.get("/patients/pat-1/lab-results")).json()["items"]) == 2

    await eventually(both, timeout=60)
    labs = (await client.get("/patients/pat-1/lab-results")).json()["items"]
    assert [r["id"] for r in labs] == ["dr-1", "old-dr"]  # newest first
    old = (await client.get("/patients/pat-1/lab-results/old-dr")).json()
    assert old["observations"][0]["value_string"] == "5.4 mmol/L"
    meds = (await client.get("/patients/pat-1/medications")).json()
    assert meds[0]["medication"]["display"] == "metformin 500 MG"
    assert meds[0]["dosage_text"] == "1 tablet twice daily"
