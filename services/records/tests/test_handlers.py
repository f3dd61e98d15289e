"""Records' handlers without a broker (`servicekit.testing.deliver`: the consumer's own
path, on a real PostgreSQL); `test_read_model_kafka.py` runs the same through Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from contracts.base import Coding, Quantity, SourceVersion
from contracts.lab import LabObservation, LabResultedV1, ReportStatus
from contracts.medication import MedicationChangedV1, MedicationStatus
from contracts.record import ImportedEntry, RecordImportedV1, RecordKind
from records import service as records_service
from records.app import build
from records.settings import Settings
from servicekit.app import Service
from servicekit.testing import (
    broker_less_settings,
    deliver,
    deliver_batch,
    serving_in_process,
)

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


def _other_report(n: int) -> LabResultedV1:
    return LabResultedV1(
        patient_id="pat-2",
        report_fhir_id=f"dr-2{n}",
        status=ReportStatus.FINAL,
        code=Coding(system="http://loinc.org", code="4548-4", display="Hemoglobin A1c"),
        effective=T + timedelta(days=n),
        observations=[
            LabObservation(
                observation_fhir_id=f"obs-2{n}",
                code=Coding(system="http://loinc.org", code="4548-4", display="Hemoglobin A1c"),
                status="final",
                value_quantity=Quantity(value=5.0 + n / 10, unit="%"),
            )
        ],
        source=SourceVersion(
            resource_type="DiagnosticReport", fhir_id=f"dr-2{n}", version_id="1", last_updated=T
        ),
    )


async def test_a_batch_of_reports_stores_what_one_at_a_time_stores(
    database_factory: Callable[[], Awaitable[str]],
) -> None:
    # Amendment, stale version and other reports in one batch (records' batch handler, a
    # few statements) against the same events one transaction each (the per-event one).
    events: list[tuple[str, LabResultedV1]] = [
        ("pat-1", _lab("1", 6.3)),
        ("pat-2", _other_report(1)),
        ("pat-1", _lab("3", 5.9, ReportStatus.AMENDED)),
        ("pat-2", _other_report(2)),
        ("pat-1", _lab("2", 7.0)),
        ("pat-9", _lab("4", 1.0)),  # dr-1 is pat-1's: another patient's event is ignored
    ]
    seen: list[dict[str, Any]] = []
    for batched in (True, False):
        service = build(Settings(**broker_less_settings(await database_factory())))
        async with serving_in_process(service.app, "http://records") as client:
            if batched:
                assert await deliver_batch(service, events) == ["handled"] * len(events)
            else:
                for subject, payload in events:
                    assert await deliver(service, payload, subject=subject) == "handled"
            views = {
                patient: (await client.get(f"/patients/{patient}/lab-results")).json()
                for patient in ("pat-1", "pat-2", "pat-9")
            }
        seen.append(_without_times(views))
    batched_view, one_by_one_view = seen
    assert batched_view == one_by_one_view
    report = batched_view["pat-1"]["items"][0]
    assert (report["version"], report["status"]) == ("3", "amended")
    result = report["observations"][0]
    assert result["value_quantity"]["value"] == 5.9
    assert [v["value_quantity"]["value"] for v in result["history"]] == [6.3]
    assert len(batched_view["pat-2"]["items"]) == 2
    assert batched_view["pat-9"]["items"] == []


def _without_times(value: Any) -> Any:
    """The view without the moments of storing (they differ between two runs)."""
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k != "replaced_at"}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def _history(patient: str, reports: int, version: str = "1", prefix: str = "h") -> RecordImportedV1:
    """A back-fill batch: `reports` reports with two results each, plus an allergy (ids
    start with `prefix`)."""
    entries: list[ImportedEntry] = []
    for n in range(reports):
        observations = [f"{prefix}-obs-{n}-{k}" for k in range(2)]
        entries.append(
            ImportedEntry(
                kind=RecordKind.LAB_RESULT,
                resource_type="DiagnosticReport",
                fhir_id=f"{prefix}-dr-{n}",
                version_id=version,
                status="final",
                code=Coding(system="http://loinc.org", code="24323-8", display="Metabolic panel"),
                effective=T - timedelta(days=n + 1),
                related_fhir_ids=observations,
            )
        )
        entries += [
            ImportedEntry(
                kind=RecordKind.LAB_RESULT,
                resource_type="Observation",
                fhir_id=obs,
                version_id=version,
                observation=LabObservation(
                    observation_fhir_id=obs,
                    code=Coding(system="http://loinc.org", code="2345-7", display="Glucose"),
                    status="final",
                    value_quantity=Quantity(value=5.0 + k, unit="mmol/L"),
                    effective=T - timedelta(days=n + 1),
                    version_id=version,
                ),
            )
            for k, obs in enumerate(observations)
        ]
    entries.append(
        ImportedEntry(
            kind=RecordKind.ALLERGY,
            resource_type="AllergyIntolerance",
            fhir_id=f"{prefix}-allergy",
            version_id=version,
            status="active",
            display=f"Penicillin (v{version})",
        )
    )
    return RecordImportedV1(
        patient_id=patient,
        backfill_id="bf-1",
        batch_number=1,
        last_batch=True,
        entries=entries,
        imported_at=T,
    )


async def test_a_back_filled_batch_takes_the_same_statements_whatever_its_size(
    records: tuple[Service, httpx.AsyncClient],
) -> None:
    # One query and one write per table, not several per entry: a 10,000-resource history
    # comes in pages of 50, beside live traffic on the same two cores.
    service, client = records
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(service.db.sync_engine, "before_cursor_execute", count)
    try:
        counts = []
        # The first batch also pays for the connection's first statements (type codecs).
        for patient, size in (("pat-w", 1), ("pat-a", 2), ("pat-b", 20)):
            statements.clear()
            batch = _history(patient, size, prefix=patient)
            assert await deliver(service, batch, subject=patient) == "handled"
            counts.append(len(statements))
    finally:
        event.remove(service.db.sync_engine, "before_cursor_execute", count)
    assert counts[1] == counts[2]
    page = (await client.get("/patients/pat-b/lab-results", params={"limit": 50})).json()
    assert len(page["items"]) == 20
    assert all(len(item["observations"]) == 2 for item in page["items"])
    assert (await client.get("/patients/pat-b/allergies")).json()[0]["display"] == (
        "Penicillin (v1)"
    )


async def test_a_back_fill_never_replaces_a_newer_or_another_patients_entry(
    records: tuple[Service, httpx.AsyncClient],
) -> None:
    service, client = records
    # Version 2 first (a live event or a later page), then the back-fill's version 1.
    assert await deliver(service, _history("pat-1", 1, "2"), subject="pat-1") == "handled"
    assert await deliver(service, _history("pat-1", 1, "1"), subject="pat-1") == "handled"
    # The same ids for another patient: an id never moves between charts.
    assert await deliver(service, _history("pat-2", 1, "3"), subject="pat-2") == "handled"
    report = (await client.get("/patients/pat-1/lab-results")).json()["items"][0]
    assert report["version"] == "2"
    assert [o["value_quantity"]["value"] for o in report["observations"]] == [5.0, 6.0]
    allergies = (await client.get("/patients/pat-1/allergies")).json()
    assert [a["display"] for a in allergies] == ["Penicillin (v2)"]
    assert (await client.get("/patients/pat-2/lab-results")).json()["items"] == []
    assert (await client.get("/patients/pat-2/allergies")).json() == []


async def test_a_back_fill_waits_for_a_live_batch_of_the_same_patient_in_flight(
    records: tuple[Service, httpx.AsyncClient],
) -> None:
    """Two consumers (`lab.resulted`, `record.imported`) write one chart: a back-fill that
    read the chart while a live batch was uncommitted wrote its older version over the live
    one (CI saw the amended value replaced by the original). A chart's writers take turns."""
    service, client = records
    amended = _lab("2", 5.9, ReportStatus.AMENDED).model_copy(update={"report_fhir_id": "h-dr-0"})
    amended.observations[0] = amended.observations[0].model_copy(
        update={"observation_fhir_id": "h-obs-0-0", "version_id": "2"}
    )
    amended = amended.model_copy(
        update={"source": amended.source.model_copy(update={"fhir_id": "h-dr-0"})}
    )
    async with service.db.transaction() as session:
        await records_service.record_lab_results(session, [("pat-1", amended)], T)
        # The back-fill's version 1 of the same report and result, while the live batch
        # has not committed yet.
        back_fill = asyncio.ensure_future(
            deliver(service, _history("pat-1", 1, "1", prefix="h"), subject="pat-1")
        )
        done, _ = await asyncio.wait({back_fill}, timeout=1.0)
        assert not done, "the back-fill did not wait for the live batch"
    assert await back_fill == "handled"
    report = (await client.get("/patients/pat-1/lab-results/h-dr-0")).json()
    assert (report["version"], report["status"]) == ("2", "amended")
    assert report["observations"][0]["value_quantity"]["value"] == 5.9
    assert report["observations"][0]["version_id"] == "2"


async def test_a_read_is_answered_again_until_any_writer_changes_the_chart(
    records: tuple[Service, httpx.AsyncClient],
) -> None:
    """Answers are kept per chart version (`records.read_cache`): a read of an unchanged
    chart costs one query, and each of the chart's writers (live results, medications,
    the back-fill) makes the next read compute again."""
    service, client = records
    assert await deliver(service, _lab("1", 6.3), subject="pat-1") == "handled"
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    async def read(path: str) -> tuple[Any, int]:
        statements.clear()
        answer = await client.get(path)
        assert answer.status_code == 200, answer.text
        return answer.json(), len(statements)

    event.listen(service.db.sync_engine, "before_cursor_execute", count)
    try:
        first, computed = await read("/patients/pat-1/summary")
        again, kept = await read("/patients/pat-1/summary")
        assert again == first
        assert (computed > 1, kept) == (True, 1)
        assert first["lab_results"][0]["observations"][0]["value_quantity"]["value"] == 6.3
        # A live amendment.
        assert (
            await deliver(service, _lab("2", 5.9, ReportStatus.AMENDED), subject="pat-1")
            == "handled"
        )
        summary, _ = await read("/patients/pat-1/summary")
        assert summary["lab_results"][0]["observations"][0]["value_quantity"]["value"] == 5.9
        assert (await read("/patients/pat-1/lab-results/dr-1"))[0]["status"] == "amended"
        # A medication change.
        prescribed = MedicationChangedV1(
            patient_id="pat-1",
            medication_request_fhir_id="mr-1",
            status=MedicationStatus.ACTIVE,
            medication=Coding(system="http://www.nlm.nih.gov/research/umls/rxnorm", code="1"),
            source=SourceVersion(
                resource_type="MedicationRequest", fhir_id="mr-1", version_id="1", last_updated=T
            ),
        )
        assert await deliver(service, prescribed, subject="pat-1") == "handled"
        summary, _ = await read("/patients/pat-1/summary")
        assert [m["id"] for m in summary["medications"]] == ["mr-1"]
        # The back-fill.
        assert await deliver(service, _history("pat-1", 1), subject="pat-1") == "handled"
        summary, _ = await read("/patients/pat-1/summary")
        assert [a["display"] for a in summary["allergies"]] == ["Penicillin (v1)"]
        assert len(summary["lab_results"]) == 2
        # Another patient's chart changing does not touch this one's answers.
        assert await deliver(service, _history("pat-2", 1), subject="pat-2") == "handled"
        assert (await read("/patients/pat-1/summary")) == (summary, 1)
    finally:
        event.remove(service.db.sync_engine, "before_cursor_execute", count)
