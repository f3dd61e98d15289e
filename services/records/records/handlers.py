"""Event handlers: EHR facts into the chart read model. Stale versions are ignored."""

from __future__ import annotations

from typing import Any

from contracts.base import utc_now
from contracts.lab import LabResultedV1
from contracts.medication import MedicationChangedV1
from contracts.record import RecordImportedV1
from records import service, store
from servicekit.consumer import Event, EventRouter, UnitOfWork
from servicekit.versions import is_newer

router = EventRouter()


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json") if model is not None else None


@router.handles("lab.resulted")
async def record_lab_result(uow: UnitOfWork, event: Event[LabResultedV1]) -> None:
    """Store a final or amended lab report unless a newer version is already stored."""
    await service.record_lab_result(uow.session, event.patient_id, event.data, utc_now())


@router.handles("medication.changed")
async def record_medication_change(uow: UnitOfWork, event: Event[MedicationChangedV1]) -> None:
    """Store a medication order change unless a newer version is already stored."""
    data = event.data
    row = await store.get_medication(uow.session, data.medication_request_fhir_id)
    if row is not None and not is_newer(data.source, row.source_version, row.source_updated):
        return
    if row is None:
        row = store.Medication(fhir_id=data.medication_request_fhir_id)
        uow.session.add(row)
    row.patient_id = event.patient_id
    row.status = data.status.value
    row.medication = _dump(data.medication)
    row.dosage_text = data.dosage_text
    row.authored_on = data.authored_on
    row.prescriber = data.prescriber
    row.source_version = data.source.version_id
    row.source_updated = data.source.last_updated


@router.handles("record.imported")
async def record_imported_history(uow: UnitOfWork, event: Event[RecordImportedV1]) -> None:
    """Store a back-filled batch; live events that arrived first are not overwritten."""
    await service.record_imported(uow.session, event.patient_id, event.data, utc_now())
