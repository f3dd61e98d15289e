"""The patient's chart through the gateway: results with filters, paging and trends, vital
signs, documents with their content, all scoped to the token's patient and audited."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from contracts.base import Coding, Quantity, ReferenceRange, SourceVersion
from contracts.lab import LabObservation, LabResultedV1, ReportStatus
from contracts.record import DocumentAttachment, ImportedEntry, RecordImportedV1, RecordKind
from servicekit.testing import eventually, produce_events

from .test_gateway_flow import Stack, _token, stack

pytestmark = [pytest.mark.integration]
__all__ = ["stack"]
T = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
A1C = Coding(system="http://loinc.org", code="4548-4", display="Hemoglobin A1c")
HIGH = Coding(system="http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", code="H")


def _a1c_report(patient_id: str, n: int, value: float, days_ago: int) -> LabResultedV1:
    at = T - timedelta(days=days_ago)
    return LabResultedV1(
        patient_id=patient_id,
        report_fhir_id=f"gw-dr-{n}",
        status=ReportStatus.FINAL,
        code=A1C,
        effective=at,
        issued=at + timedelta(hours=4),
        observations=[
            LabObservation(
                observation_fhir_id=f"gw-obs-{n}",
                code=A1C,
                status="final",
                value_quantity=Quantity(value=value, unit="%"),
                reference_ranges=[ReferenceRange(high=Quantity(value=5.6))],
                interpretation=[HIGH] if value > 5.6 else [],
                effective=at,
                version_id="1",
            )
        ],
        source=SourceVersion(
            resource_type="DiagnosticReport", fhir_id=f"gw-dr-{n}", version_id="1", last_updated=at
        ),
    )


def _history(patient_id: str) -> RecordImportedV1:
    return RecordImportedV1(
        patient_id=patient_id,
        backfill_id="bf-gw",
        batch_number=1,
        last_batch=True,
        imported_at=T,
        entries=[
            ImportedEntry(
                kind=RecordKind.VITAL_SIGN,
                resource_type="Observation",
                fhir_id="gw-bp-1",
                version_id="1",
                status="final",
                observation=LabObservation(
                    observation_fhir_id="gw-bp-1",
                    code=Coding(system="http://loinc.org", code="29463-7", display="Weight"),
                    status="final",
                    value_quantity=Quantity(value=71.5, unit="kg"),
                    effective=T,
                ),
            ),
            ImportedEntry(
                kind=RecordKind.DOCUMENT,
                resource_type="DocumentReference",
                fhir_id="gw-doc-1",
                version_id="1",
                status="current",
                display="After-visit summary",
                effective=T,
                attachments=[
                    DocumentAttachment(
                        content_type="application/pdf",
                        title="Summary",
                        data=base64.b64encode(b"%PDF-1.4 summary").decode(),
                    )
                ],
            ),
        ],
    )


async def test_chart_routes_filter_page_trend_and_download_for_the_tokens_patient_only(
    stack: Stack, kafka_bootstrap: str
) -> None:
    token = await _token(stack)
    other_token = await _token(stack, patient="p-bea")
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=30) as client,
        httpx.AsyncClient(
            base_url=stack.url, headers={"Authorization": f"Bearer {other_token}"}, timeout=30
        ) as other,
    ):
        patient_id = (await client.get("/v1/me")).json()["patient_id"]
        assert (await other.get("/v1/me")).status_code == 200
        events = [(patient_id, _a1c_report(patient_id, n, 7.0 - n / 2, n * 30)) for n in (1, 2, 3)]
        await produce_events(
            kafka_bootstrap,
            [*events, (patient_id, _history(patient_id))],
            topic_prefix=stack.prefix,
        )

        async def arrived() -> bool:
            labs = (await client.get("/v1/me/lab-results")).json()["items"]
            docs = (await client.get("/v1/me/documents")).json()["items"]
            return len(labs) == 3 and bool(docs)

        await eventually(arrived, timeout=90)

        # PHI: never kept by the browser's cache or a proxy (passed on as records wrote it).
        answer = await client.get("/v1/me/lab-results", params={"limit": 2})
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["content-type"] == "application/json"
        first = answer.json()
        assert [r["id"] for r in first["items"]] == ["gw-dr-1", "gw-dr-2"]
        rest = (
            await client.get(
                "/v1/me/lab-results", params={"limit": 2, "cursor": first["next_cursor"]}
            )
        ).json()
        assert [r["id"] for r in rest["items"]] == ["gw-dr-3"] and rest["next_cursor"] is None
        result = first["items"][0]["observations"][0]
        assert result["flag"]["code"] == "high" and result["explanation"]["known"] is True

        since = (T - timedelta(days=45)).isoformat()
        recent = (await client.get("/v1/me/lab-results", params={"since": since})).json()
        assert [r["id"] for r in recent["items"]] == ["gw-dr-1"]
        assert (await client.get("/v1/me/lab-results", params={"code": "2093-3"})).json()[
            "items"
        ] == []
        naive = await client.get("/v1/me/lab-results", params={"since": "2026-11-01T00:00:00"})
        assert naive.status_code == 422

        trend = (await client.get("/v1/me/lab-results/trends", params={"code": "4548-4"})).json()
        assert [p["value"] for p in trend["points"]] == [5.5, 6.0, 6.5]
        assert trend["direction"] == "up"
        assert (await client.get("/v1/me/lab-results/trends")).status_code == 422

        vitals = (await client.get("/v1/me/vital-signs")).json()["items"]
        assert vitals[0]["value_quantity"]["value"] == 71.5

        (document,) = (await client.get("/v1/me/documents")).json()["items"]
        assert document["attachments"][0]["downloadable"] is True
        download = await client.get("/v1/me/documents/gw-doc-1/attachments/0")
        assert download.status_code == 200
        assert download.headers["content-type"] == "application/pdf"
        assert download.content == b"%PDF-1.4 summary"
        missing = await client.get("/v1/me/documents/gw-doc-1/attachments/3")
        assert missing.status_code == 404

        # The other patient sees none of it, by list or by id.
        assert (await other.get("/v1/me/lab-results")).json()["items"] == []
        assert (await other.get("/v1/me/lab-results/gw-dr-1")).status_code == 404
        assert (await other.get("/v1/me/documents/gw-doc-1")).status_code == 404
        assert (await other.get("/v1/me/documents/gw-doc-1/attachments/0")).status_code == 404

        summary = (await client.get("/v1/me/summary")).json()
        assert [r["id"] for r in summary["lab_results"]] == ["gw-dr-1", "gw-dr-2", "gw-dr-3"]
        log = (await client.get("/v1/me/access-log")).json()
        assert {"DocumentReference", "Observation", "DiagnosticReport"} <= {
            e["resource"] for e in log
        }
