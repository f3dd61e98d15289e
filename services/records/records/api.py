"""HTTP API of the records service, for the gateway (which scopes every call to the
patient of the caller's token; this service is not reachable from outside)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from records import store
from records.domain import newest_first
from servicekit.http import PatientId, ReadSession

router = APIRouter(prefix="/patients/{patient_id}", tags=["records"])


class LabReportOut(BaseModel):
    """A lab report with its result lines."""

    id: str
    status: str
    code: dict[str, Any]
    category: list[dict[str, Any]]
    effective: datetime | None
    issued: datetime | None
    performer: list[str]
    observations: list[dict[str, Any]]
    version: str


class MedicationOut(BaseModel):
    """A medication order."""

    id: str
    status: str
    medication: dict[str, Any]
    dosage_text: str | None
    authored_on: datetime | None
    prescriber: str | None


class ChartEntryOut(BaseModel):
    """An allergy, condition, immunization, document or vital sign."""

    id: str
    resource_type: str
    kind: str
    status: str | None
    code: dict[str, Any] | None
    display: str | None
    value: str | None
    effective: datetime | None


def _lab(row: store.LabReport) -> LabReportOut:
    return LabReportOut(
        id=row.report_fhir_id,
        status=row.status,
        code=row.code,
        category=row.category,
        effective=row.effective,
        issued=row.issued,
        performer=row.performer,
        observations=row.observations,
        version=row.source_version,
    )


async def _imported_lab(
    session: AsyncSession, patient_id: str, entry: store.ChartEntry
) -> LabReportOut:
    """A back-filled report: what the batch carried, with its result lines' values."""
    lines = await store.imported_observations(session, patient_id, entry.related_fhir_ids or [])
    by_id = {o.fhir_id: o for o in lines}
    observations = [
        {
            "observation_fhir_id": o.fhir_id,
            "code": o.code,
            "status": o.status,
            "value_string": o.value,
            "effective": o.effective.isoformat() if o.effective else None,
            "display": o.display,
        }
        for fid in entry.related_fhir_ids or []
        if (o := by_id.get(fid)) is not None
    ]
    return LabReportOut(
        id=entry.fhir_id,
        status=entry.status or "unknown",
        code=entry.code or {"display": entry.display},
        category=[],
        effective=entry.effective,
        issued=None,
        performer=[],
        observations=observations,
        version=entry.version_id,
    )


@router.get("/lab-results", response_model=list[LabReportOut])
async def list_lab_results(patient_id: PatientId, session: ReadSession) -> list[LabReportOut]:
    """The patient's lab reports, newest first: live ones in full, back-filled history too."""
    live = [_lab(r) for r in await store.lab_reports_of(session, patient_id)]
    history = [
        await _imported_lab(session, patient_id, e)
        for e in await store.imported_reports_of(session, patient_id)
    ]
    return sorted(
        live + history,
        key=lambda r: newest_first(r.effective),
        reverse=True,
    )


@router.get("/lab-results/{report_id}", response_model=LabReportOut)
async def get_lab_result(
    patient_id: PatientId, report_id: str, session: ReadSession
) -> LabReportOut:
    """One lab report of the patient (404 if it is not theirs)."""
    row = await store.get_lab_report(session, report_id)
    if row is not None and row.patient_id == patient_id:
        return _lab(row)
    entry = await store.get_chart_entry(session, "DiagnosticReport", report_id)
    if entry is not None and entry.patient_id == patient_id:
        return await _imported_lab(session, patient_id, entry)
    raise HTTPException(404, "No such lab result for this patient.")


@router.get("/medications", response_model=list[MedicationOut])
async def list_medications(patient_id: PatientId, session: ReadSession) -> list[MedicationOut]:
    """The patient's medication orders, newest first (back-filled history included)."""
    live = [
        MedicationOut(
            id=m.fhir_id,
            status=m.status,
            medication=m.medication,
            dosage_text=m.dosage_text,
            authored_on=m.authored_on,
            prescriber=m.prescriber,
        )
        for m in await store.medications_of(session, patient_id)
    ]
    history = [
        MedicationOut(
            id=e.fhir_id,
            status=e.status or "unknown",
            medication={**(e.code or {}), "display": e.display or (e.code or {}).get("display")},
            dosage_text=e.value,
            authored_on=e.effective,
            prescriber=None,
        )
        for e in await store.imported_medications_of(session, patient_id)
    ]
    return sorted(
        live + history,
        key=lambda m: newest_first(m.authored_on),
        reverse=True,
    )


def _chart_route(kind: str) -> Any:
    async def list_entries(patient_id: PatientId, session: ReadSession) -> list[ChartEntryOut]:
        return [
            ChartEntryOut(
                id=e.fhir_id,
                resource_type=e.resource_type,
                kind=e.kind,
                status=e.status,
                code=e.code,
                display=e.display,
                value=e.value,
                effective=e.effective,
            )
            for e in await store.chart_entries_of(session, patient_id, kind)
        ]

    list_entries.__doc__ = f"The patient's {kind} entries, newest first."
    return list_entries


for _path, _kind in (
    ("allergies", "allergy"),
    ("conditions", "condition"),
    ("immunizations", "immunization"),
    ("documents", "document"),
    ("vital-signs", "vital-sign"),
):
    router.add_api_route(
        f"/{_path}",
        _chart_route(_kind),
        methods=["GET"],
        response_model=list[ChartEntryOut],
        name=f"list_{_path.replace('-', '_')}",
    )
