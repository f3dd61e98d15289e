"""Event handlers: EHR facts into the chart read model. Stale versions are ignored."""

from __future__ import annotations

from contracts.base import utc_now
from contracts.lab import LabResultedV1
from contracts.medication import MedicationChangedV1
from contracts.record import RecordImportedV1
from records import service
from servicekit.consumer import Event, EventRouter, UnitOfWork

router = EventRouter()


@router.handles("lab.resulted", interactive=True)
async def record_lab_result(uow: UnitOfWork, event: Event[LabResultedV1]) -> None:
    """Store a final or amended lab report unless a newer version is already stored."""
    await service.record_lab_result(uow.session, event.patient_id, event.data, utc_now())


@router.handles_batch("lab.resulted")
async def record_lab_results(uow: UnitOfWork, events: list[Event[LabResultedV1]]) -> None:
    """A batch of lab reports in one go: the same effect as one after another."""
    await service.record_lab_results(
        uow.session, [(event.patient_id, event.data) for event in events], utc_now()
    )


@router.handles("medication.changed", interactive=True)
async def record_medication_change(uow: UnitOfWork, event: Event[MedicationChangedV1]) -> None:
    """Store a medication order change unless a newer version is already stored."""
    await service.record_medication_change(uow.session, event.patient_id, event.data)


@router.handles("record.imported")
async def record_imported_history(uow: UnitOfWork, event: Event[RecordImportedV1]) -> None:
    """Store a back-filled batch; live events that arrived first are not overwritten."""
    await service.record_imported(uow.session, event.patient_id, event.data, utc_now())
