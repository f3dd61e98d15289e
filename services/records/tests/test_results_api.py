"""Results a patient can rely on, fed through a real broker into PostgreSQL, read over HTTP:
values with flags and explanations, filters and stable paging, trends, amendments kept as
history, vital signs and documents (with their content)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from contracts.base import Coding, Quantity, ReferenceRange, SourceVersion
from contracts.lab import LabObservation, LabResultedV1, ReportStatus
from contracts.record import DocumentAttachment, ImportedEntry, RecordImportedV1, RecordKind
from devstack.topics import ensure_topics
from records.app import build
from records.settings import Settings
from servicekit.testing import eventually, isolated_settings, produce_events, serving_in_process

pytestmark = [pytest.mark.integration]
T = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
LOINC = "http://loinc.org"
HIGH = Coding(
    system="http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
    code="H",
    display="High",
)
A1C = Coding(system=LOINC, code="4548-4", display="Hemoglobin A1c")
LAB = [Coding(system="http://terminology.hl7.org/CodeSystem/v2-0074", code="LAB")]


def _a1c(n: int, value: float, days_ago: int, *, version: str = "1") -> LabObservation:
    return LabObservation(
        observation_fhir_id=f"a1c-obs-{n}",
        code=A1C,
        status="final",
        value_quantity=Quantity(value=value, unit="%"),
        reference_ranges=[ReferenceRange(low=Quantity(value=4.0), high=Quantity(value=5.6))],
        interpretation=[HIGH] if value > 5.6 else [],
        effective=T - timedelta(days=days_ago),
        issued=T - timedelta(days=days_ago) + timedelta(hours=6),
        performer=["Acme Laboratory"],
        version_id=version,
        last_updated=T - timedelta(days=days_ago),
    )


def _report(
    report_id: str,
    results: list[LabObservation],
    days_ago: int,
    *,
    version: str = "1",
    status: ReportStatus = ReportStatus.FINAL,
    code: Coding = A1C,
    patient: str = "pat-1",
) -> LabResultedV1:
    return LabResultedV1(
        patient_id=patient,
        report_fhir_id=report_id,
        status=status,
        code=code,
        category=LAB,
        effective=T - timedelta(days=days_ago),
        issued=T - timedelta(days=days_ago) + timedelta(hours=6),
        performer=["Acme Laboratory"],
        observations=results,
        source=SourceVersion(
            resource_type="DiagnosticReport",
            fhir_id=report_id,
            version_id=version,
            last_updated=T - timedelta(days=days_ago) + timedelta(minutes=int(version)),
        ),
    )


def _back_filled_a1c() -> RecordImportedV1:
    """An HbA1c of 6.8 % that the EHR marks High, as the back-fill carries it."""
    result = _a1c(1, 6.8, 180)
    return RecordImportedV1(
        patient_id="pat-1",
        backfill_id="bf-1",
        batch_number=1,
        last_batch=True,
        imported_at=T,
        entries=[
            ImportedEntry(
                kind=RecordKind.LAB_RESULT,
                resource_type="DiagnosticReport",
                fhir_id="a1c-dr-1",
                version_id="1",
                status="final",
                code=A1C,
                effective=T - timedelta(days=180),
                issued=T - timedelta(days=180) + timedelta(hours=6),
                performer=["Acme Laboratory"],
                category=LAB,
                related_fhir_ids=["a1c-obs-1"],
            ),
            ImportedEntry(
                kind=RecordKind.LAB_RESULT,
                resource_type="Observation",
                fhir_id="a1c-obs-1",
                version_id="1",
                status="final",
                code=A1C,
                value="6.8 %",
                effective=result.effective,
                observation=result,
            ),
            ImportedEntry(
                kind=RecordKind.VITAL_SIGN,
                resource_type="Observation",
                fhir_id="pulse-1",
                version_id="1",
                status="final",
                effective=T - timedelta(days=1),
                observation=LabObservation(
                    observation_fhir_id="pulse-1",
                    code=Coding(system=LOINC, code="8867-4", display="Heart rate"),
                    status="final",
                    value_quantity=Quantity(value=72, unit="beats/minute"),
                    effective=T - timedelta(days=1),
                    version_id="1",
                ),
            ),
            ImportedEntry(
                kind=RecordKind.LAB_RESULT,
                resource_type="Observation",
                fhir_id="crp-1",
                version_id="1",
                status="final",
                observation=LabObservation(
                    observation_fhir_id="crp-1",
                    code=Coding(system=LOINC, code="1988-5", display="CRP"),
                    status="final",
                    category=[
                        Coding(
                            system="http://terminology.hl7.org/CodeSystem/observation-category",
                            code="laboratory",
                        )
                    ],
                    value_quantity=Quantity(value=2.0, unit="mg/L"),
                    reference_ranges=[ReferenceRange(high=Quantity(value=10.0))],
                    effective=T - timedelta(days=5),
                    version_id="1",
                ),
            ),
            ImportedEntry(
                kind=RecordKind.DOCUMENT,
                resource_type="DocumentReference",
                fhir_id="doc-1",
                version_id="1",
                status="current",
                code=Coding(system=LOINC, code="34133-9", display="Summary of episode note"),
                display="After-visit summary",
                effective=T - timedelta(days=90),
                attachments=[
                    DocumentAttachment(
                        content_type="text/plain",
                        title="After-visit summary",
                        data=base64.b64encode(b"Continue metformin.").decode(),
                    ),
                    DocumentAttachment(content_type="application/pdf", title="Scan"),
                ],
            ),
        ],
    )


@pytest.fixture
async def client(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    service = build(Settings(**isolated_settings(database_url, kafka_bootstrap, unique_prefix)))
    async with serving_in_process(service.app, "http://records") as http:
        yield http


async def _items(client: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_results_carry_values_flags_explanations_and_trends_live_or_back_filled(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    glucose = LabObservation(
        observation_fhir_id="glu-1",
        code=Coding(system=LOINC, code="2345-7", display="Glucose"),
        status="final",
        value_quantity=Quantity(value=60, unit="mg/dL"),
        reference_ranges=[ReferenceRange(low=Quantity(value=70), high=Quantity(value=99))],
        effective=T - timedelta(days=2),
    )
    odd = LabObservation(
        observation_fhir_id="odd-1",
        code=Coding(system=LOINC, code="99999-9", display="Rare test"),
        status="final",
        value_string="Not detected",
        effective=T - timedelta(days=2),
    )
    await produce_events(
        kafka_bootstrap,
        [
            ("pat-1", _back_filled_a1c()),
            ("pat-1", _report("a1c-dr-2", [_a1c(2, 6.4, 90)], 90)),
            ("pat-1", _report("a1c-dr-3", [_a1c(3, 5.9, 10)], 10)),
            (
                "pat-1",
                _report("bmp-1", [glucose, odd], 2, code=Coding(system=LOINC, code="51990-0")),
            ),
        ],
        topic_prefix=unique_prefix,
    )

    async def arrived() -> bool:
        labs = await _items(client, "/patients/pat-1/lab-results")
        vitals = await _items(client, "/patients/pat-1/vital-signs")
        return len(labs) == 5 and len(vitals) == 1

    await eventually(arrived, timeout=90)
    labs = await _items(client, "/patients/pat-1/lab-results")
    # A laboratory result that no report groups is listed on its own, in time order.
    assert [(r["id"], r["grouping"]) for r in labs] == [
        ("bmp-1", "report"),
        ("crp-1", "result"),
        ("a1c-dr-3", "report"),
        ("a1c-dr-2", "report"),
        ("a1c-dr-1", "report"),
    ]
    alone = (await client.get("/patients/pat-1/lab-results/crp-1")).json()
    assert alone["observations"][0]["flag"]["code"] == "normal"
    assert alone["observations"][0]["explanation"]["name"] == "C-reactive protein (CRP)"
    assert (await client.get("/patients/pat-2/lab-results/crp-1")).status_code == 404
    # A result inside a report is not an entry of its own.
    assert (await client.get("/patients/pat-1/lab-results/a1c-obs-1")).status_code == 404
    by_category = await _items(client, "/patients/pat-1/lab-results", category="laboratory")
    assert [r["id"] for r in by_category] == ["crp-1"]

    # The back-filled HbA1c shows its value, unit, range, the EHR's High flag, when it was
    # taken and issued (with offsets), by whom, and what the test is.
    old = (await client.get("/patients/pat-1/lab-results/a1c-dr-1")).json()
    result = old["observations"][0]
    assert result["value_quantity"]["value"] == 6.8 and result["value_quantity"]["unit"] == "%"
    assert result["reference_ranges"][0]["high"]["value"] == 5.6
    assert result["flag"] == {"code": "high", "label": "High", "source": "lab"}
    assert result["effective"].endswith("Z") or "+" in result["effective"]
    assert datetime.fromisoformat(result["issued"]).utcoffset() is not None
    assert result["performer"] == ["Acme Laboratory"]
    assert result["report_fhir_id"] == "a1c-dr-1"
    assert result["explanation"]["known"] is True
    assert "2 to 3 months" in result["explanation"]["what_it_measures"]
    assert old["performer"] == ["Acme Laboratory"] and old["flags"] == ["high"]

    # No interpretation from the lab: the value is compared with the lab's range instead;
    # a code the catalogue does not know says so plainly.
    bmp = (await client.get("/patients/pat-1/lab-results/bmp-1")).json()
    low, unknown = bmp["observations"]
    assert low["flag"] == {"code": "low", "label": "Low", "source": "range"}
    assert low["explanation"]["name"] == "Glucose (blood sugar)"
    assert unknown["flag"] is None and unknown["value_string"] == "Not detected"
    assert unknown["explanation"]["known"] is False

    # The trend of one code: oldest first, with ranges, and which way it went last.
    trend = await client.get("/patients/pat-1/lab-results/trends", params={"code": "4548-4"})
    body = trend.json()
    assert [p["value"] for p in body["points"]] == [6.8, 6.4, 5.9]
    assert body["points"][0]["high"] == 5.6 and body["points"][0]["flag"] == "high"
    assert body["unit"] == "%" and body["direction"] == "down"
    assert body["change"] == pytest.approx(-0.5)
    assert body["explanation"]["known"] is True
    none = await client.get("/patients/pat-1/lab-results/trends", params={"code": "2093-3"})
    assert none.json()["points"] == [] and none.json()["direction"] is None

    vitals = await _items(client, "/patients/pat-1/vital-signs")
    assert vitals[0]["value_quantity"] == {
        "value": 72.0,
        "unit": "beats/minute",
        "system": "http://unitsofmeasure.org",
        "code": None,
    }


async def test_filters_and_cursor_paging_are_stable_newest_first(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    events: list[tuple[str, Any]] = [
        ("pat-1", _report(f"dr-{n}", [_a1c(n, 5.0 + n / 10, n * 10)], n * 10)) for n in range(1, 6)
    ]
    # Two reports at the very same time: the id breaks the tie, so paging stays stable.
    events.append(("pat-1", _report("dr-6", [_a1c(6, 5.1, 10)], 10)))
    events.append(("pat-1", _report("dr-lipid", [], 15, code=Coding(system=LOINC, code="57698-3"))))
    events.append(("pat-2", _report("dr-other", [_a1c(99, 7.0, 1)], 1, patient="pat-2")))
    await produce_events(kafka_bootstrap, events, topic_prefix=unique_prefix)

    async def arrived() -> bool:
        return len(await _items(client, "/patients/pat-1/lab-results", limit=100)) == 7

    await eventually(arrived, timeout=90)
    everything = [r["id"] for r in await _items(client, "/patients/pat-1/lab-results", limit=100)]
    assert everything == ["dr-6", "dr-1", "dr-lipid", "dr-2", "dr-3", "dr-4", "dr-5"]

    pages: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/patients/pat-1/lab-results", params=params)).json()
        pages += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == everything

    by_code = await _items(client, "/patients/pat-1/lab-results", code="4548-4")
    assert "dr-lipid" not in [r["id"] for r in by_code] and len(by_code) == 6
    assert [
        r["id"] for r in await _items(client, "/patients/pat-1/lab-results", code="57698-3")
    ] == ["dr-lipid"]
    window = await _items(
        client,
        "/patients/pat-1/lab-results",
        since=(T - timedelta(days=35)).isoformat(),
        until=(T - timedelta(days=15)).isoformat(),
    )
    assert [r["id"] for r in window] == ["dr-2", "dr-3"]
    assert len(await _items(client, "/patients/pat-1/lab-results", category="LAB")) == 7
    assert await _items(client, "/patients/pat-1/lab-results", category="RAD") == []
    assert len(await _items(client, "/patients/pat-1/lab-results", status="final")) == 7
    assert await _items(client, "/patients/pat-1/lab-results", status="amended") == []

    bad = await client.get("/patients/pat-1/lab-results", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "application/problem+json"
    naive = await client.get("/patients/pat-1/lab-results", params={"since": "2026-11-01T00:00"})
    assert naive.status_code == 422
    assert (await client.get("/patients/pat-1/lab-results", params={"limit": 0})).status_code == 422
    # Another patient's report is not found, and never listed.
    assert (await client.get("/patients/pat-1/lab-results/dr-other")).status_code == 404
    assert "dr-other" not in everything


async def test_an_amendment_replaces_the_value_and_keeps_the_earlier_version_as_history(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    await produce_events(
        kafka_bootstrap,
        [
            ("pat-1", _report("dr-a", [_a1c(1, 7.4, 5)], 5)),
            (
                "pat-1",
                _report(
                    "dr-a",
                    [_a1c(1, 6.4, 5, version="2")],
                    5,
                    version="2",
                    status=ReportStatus.AMENDED,
                ),
            ),
            # The back-fill brings version 1 again afterwards: it changes nothing.
            ("pat-1", _back_filled_version_one()),
        ],
        topic_prefix=unique_prefix,
    )

    async def amended() -> bool:
        response = await client.get("/patients/pat-1/lab-results/dr-a")
        return response.status_code == 200 and response.json()["status"] == "amended"

    await eventually(amended, timeout=90)

    async def back_fill_handled() -> bool:
        return bool(await _items(client, "/patients/pat-1/documents"))

    await eventually(back_fill_handled, timeout=60)
    report = (await client.get("/patients/pat-1/lab-results/dr-a")).json()
    result = report["observations"][0]
    assert result["value_quantity"]["value"] == 6.4 and result["version_id"] == "2"
    assert [h["value_quantity"]["value"] for h in result["history"]] == [7.4]
    assert result["history"][0]["version_id"] == "1"
    assert result["history"][0]["flag"]["code"] == "high"


def _back_filled_version_one() -> RecordImportedV1:
    return RecordImportedV1(
        patient_id="pat-1",
        backfill_id="bf-2",
        batch_number=1,
        last_batch=True,
        imported_at=T,
        entries=[
            ImportedEntry(
                kind=RecordKind.LAB_RESULT,
                resource_type="Observation",
                fhir_id="a1c-obs-1",
                version_id="1",
                status="final",
                observation=_a1c(1, 7.4, 5),
            ),
            ImportedEntry(
                kind=RecordKind.DOCUMENT,
                resource_type="DocumentReference",
                fhir_id="doc-x",
                version_id="1",
                status="current",
            ),
        ],
    )


async def test_documents_are_listed_and_their_content_downloaded_only_by_their_patient(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    await produce_events(
        kafka_bootstrap, [("pat-1", _back_filled_a1c())], topic_prefix=unique_prefix
    )

    async def arrived() -> bool:
        return bool(await _items(client, "/patients/pat-1/documents"))

    await eventually(arrived, timeout=90)
    (document,) = await _items(client, "/patients/pat-1/documents")
    assert document["id"] == "doc-1" and document["description"] == "After-visit summary"
    inline, scanned = document["attachments"]
    assert inline["content_type"] == "text/plain" and inline["downloadable"] is True
    assert "data" not in inline
    assert scanned["downloadable"] is False

    content = await client.get("/patients/pat-1/documents/doc-1/attachments/0")
    assert content.status_code == 200
    assert content.headers["content-type"].startswith("text/plain")
    assert content.content == b"Continue metformin."
    assert (await client.get("/patients/pat-1/documents/doc-1/attachments/1")).status_code == 404
    assert (await client.get("/patients/pat-2/documents/doc-1")).status_code == 404
    other = await client.get("/patients/pat-2/documents/doc-1/attachments/0")
    assert other.status_code == 404
    assert other.headers["content-type"] == "application/problem+json"
