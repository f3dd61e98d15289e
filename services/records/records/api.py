"""HTTP API of the records service, for the gateway (which scopes every call to the
patient of the caller's token; this service is not reachable from outside)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from records import store
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


@router.get("/lab-results", response_model=list[LabReportOut])
async def list_lab_results(patient_id: PatientId, session: ReadSession) -> list[LabReportOut]:
    """The patient's lab reports, newest first."""
    return [_lab(r) for r in await store.lab_reports_of(session, patient_id)]


@router.get("/lab-results/{report_id}", response_model=LabReportOut)
async def get_lab_result(
    patient_id: PatientId, report_id: str, session: ReadSession
) -> LabReportOut:
    """One lab report of the patient (404 if it is not theirs)."""
    row = await store.get_lab_report(session, report_id)
    if row is None or row.patient_id != patient_id:
        raise HTTPException(404, "No such lab result for this patient.")
    return _lab(row)


@router.get("/medications", response_model=list[MedicationOut])
async def list_medications(patient_id: PatientId, session: ReadSession) -> list[MedicationOut]:
    """The patient's medication orders, newest first."""
    return [
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
