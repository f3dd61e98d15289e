"""Use cases that write the read model: what the event handlers do.

The caller owns the transaction (the consumer's unit of work). Stale versions never
overwrite newer ones; an amended or corrected result keeps the version it replaced.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.lab import LabObservation, LabResultedV1
from contracts.medication import MedicationChangedV1
from contracts.record import ImportedEntry, RecordImportedV1, RecordKind
from records import store
from records.domain import (
    LAB,
    VITAL,
    shown_differently,
    sort_time,
)
from servicekit.versions import is_newer, version_is_newer


def _newer(
    version: str | None,
    updated: datetime | None,
    stored_version: str | None,
    stored_updated: datetime | None,
) -> bool:
    """Whether a result version should replace the stored one (unknown versions: yes; the
    report's own version check has already let the event through)."""
    if version is None or stored_version is None:
        return True
    numeric = version_is_newer(version, stored_version)
    if numeric is not None:
        return numeric
    if version == stored_version:
        return False
    if updated is None or stored_updated is None:
        return True
    return updated > stored_updated


async def _store_results(
    session: AsyncSession, results: Sequence[tuple[str, str, LabObservation]], now: datetime
) -> None:
    """Store `(patient_id, kind, result)`s in order, each over what the earlier ones left:
    the stored rows are read with one query and the outcome written with one statement
    (an amendment or correction keeps the replaced version as history)."""
    if not results:
        return
    state = await store.lab_result_states(
        session, sorted({result.observation_fhir_id for _, _, result in results})
    )
    out: dict[str, dict[str, Any]] = {}
    replaced: list[dict[str, Any]] = []
    for patient_id, kind, result in results:
        fields, old = _next_result(
            state.get(result.observation_fhir_id), patient_id, kind, result, now
        )
        if old is not None:
            replaced.append(old)
        if fields is not None:
            state[result.observation_fhir_id] = out[result.observation_fhir_id] = fields
    await store.upsert_lab_results(session, list(out.values()))
    await store.add_result_versions(session, replaced)


def _next_result(
    stored: Mapping[str, Any] | None,
    patient_id: str,
    kind: str,
    result: LabObservation,
    now: datetime,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """What storing `result` over its stored row (`None`: none yet) writes: the row's new
    columns (`None` when the result is stale or belongs to another patient's chart), and
    the replaced version to keep as history when the patient would see a change."""
    data = result.model_dump(mode="json")
    replaced = None
    if stored is not None:
        if stored["patient_id"] != patient_id:
            return None, None  # an id never moves between patients' charts
        if not _newer(
            result.version_id, result.last_updated, stored["version_id"], stored["source_updated"]
        ):
            return None, None
        if shown_differently(stored["data"], data):
            replaced = {
                "observation_fhir_id": stored["observation_fhir_id"],
                "version_id": stored["version_id"],
                "status": stored["status"],
                "data": stored["data"],
                "replaced_at": now,
            }
    fields = {
        "observation_fhir_id": result.observation_fhir_id,
        "patient_id": patient_id,
        "kind": kind,
        "code": result.code.code[:64],
        "status": result.status[:32],
        "data": data,
        "sort_at": sort_time(result.effective, result.issued, result.last_updated, now),
        "version_id": result.version_id,
        "source_updated": result.last_updated,
        "category_codes": _category_codes(data.get("category") or []),
    }
    return fields, replaced


def _category_codes(category: list[dict[str, Any]]) -> str:
    codes = [str(c.get("code")) for c in category if isinstance(c, dict) and c.get("code")]
    return "|" + "".join(f"{code}|" for code in codes)[:498]


async def record_medication_change(
    session: AsyncSession, patient_id: str, data: MedicationChangedV1
) -> None:
    """Store a medication order change unless a newer version is already stored."""
    await store.hold_charts(session, [patient_id])
    row = await store.get_medication(session, data.medication_request_fhir_id)
    if row is not None and not is_newer(data.source, row.source_version, row.source_updated):
        return
    if row is None:
        row = store.Medication(fhir_id=data.medication_request_fhir_id)
        session.add(row)
    row.patient_id = patient_id
    row.status = data.status.value
    row.medication = data.medication.model_dump(mode="json")
    row.dosage_text = data.dosage_text
    row.authored_on = data.authored_on
    row.prescriber = data.prescriber
    row.source_version = data.source.version_id
    row.source_updated = data.source.last_updated


async def record_lab_result(
    session: AsyncSession, patient_id: str, data: LabResultedV1, now: datetime
) -> None:
    """Store a final, amended or corrected report with its results (stale versions ignored)."""
    await record_lab_results(session, [(patient_id, data)], now)


async def record_lab_results(
    session: AsyncSession, reports: Sequence[tuple[str, LabResultedV1]], now: datetime
) -> None:
    """Store `(patient_id, report)`s in order, with the effect of `record_lab_result` on
    each in turn: the stored reports and results they name are read with one query each,
    each report is applied in memory to what the earlier ones left, and the outcome is
    written with one statement per table (a consumer's batch of hundreds of reports takes
    a handful of statements, not several per report)."""
    await store.hold_charts(session, (patient_id for patient_id, _ in reports))
    report_state = await store.lab_report_states(
        session, sorted({data.report_fhir_id for _, data in reports})
    )
    reports_out: dict[str, dict[str, Any]] = {}
    results: list[tuple[str, str, LabObservation]] = []
    groupings: dict[str, list[str]] = {}
    for patient_id, data in reports:
        report = _next_report(report_state.get(data.report_fhir_id), patient_id, data)
        if report is None:
            continue
        report_state[data.report_fhir_id] = reports_out[data.report_fhir_id] = report
        results += [(patient_id, LAB, result) for result in data.observations]
        groupings[data.report_fhir_id] = [o.observation_fhir_id for o in data.observations]
    await store.upsert_lab_reports(session, list(reports_out.values()))
    await _store_results(session, results, now)
    await store.set_results_of_reports(session, groupings)


def _next_report(
    stored: Mapping[str, Any] | None, patient_id: str, data: LabResultedV1
) -> dict[str, Any] | None:
    """The report's new columns over its stored row (`None`: none yet), or `None` when the
    report is stale or another patient's."""
    if stored is not None and not is_newer(
        data.source, stored["source_version"], stored["source_updated"]
    ):
        return None
    if stored is not None and stored["patient_id"] != patient_id:
        return None
    category = [c.model_dump(mode="json") for c in data.category]
    return {
        "report_fhir_id": data.report_fhir_id,
        "patient_id": patient_id,
        "status": data.status.value,
        "code": data.code.model_dump(mode="json"),
        "category": category,
        "category_codes": _category_codes(category),
        "effective": data.effective,
        "issued": data.issued,
        "performer": list(data.performer),
        "observations": [],
        "source_version": data.source.version_id,
        "source_updated": data.source.last_updated,
        "sort_at": sort_time(data.effective, data.issued, data.source.last_updated),
    }


def _imported_report(
    stored: Mapping[str, Any] | None, patient_id: str, entry: ImportedEntry, at: datetime
) -> dict[str, Any] | None:
    """A back-filled report's columns over its stored row (`None`: none yet), or `None`
    when the stored one is another patient's or not older (a back-fill never replaces what
    a live event, or itself, stored)."""
    if stored is not None and (
        stored["patient_id"] != patient_id
        or version_is_newer(entry.version_id, stored["source_version"]) is not True
    ):
        return None
    category = [c.model_dump(mode="json") for c in entry.category]
    return {
        "report_fhir_id": entry.fhir_id,
        "patient_id": patient_id,
        "status": entry.status or "unknown",
        "code": (
            entry.code.model_dump(mode="json") if entry.code else {"display": entry.display or ""}
        ),
        "category": category,
        "category_codes": _category_codes(category),
        "effective": entry.effective,
        "issued": entry.issued,
        "performer": list(entry.performer),
        "observations": [],
        "source_version": entry.version_id,
        "source_updated": at,
        "sort_at": sort_time(entry.effective, entry.issued, at),
    }


def _decoded(data: str | None) -> bytes | None:
    if data is None:
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _imported_chart_entry(
    stored: Mapping[str, Any] | None, patient_id: str, entry: ImportedEntry
) -> dict[str, Any] | None:
    """A chart entry's columns over its stored row (`None`: none yet), or `None` when the
    stored one is another patient's or newer."""
    if stored is not None and (
        stored["patient_id"] != patient_id
        or version_is_newer(entry.version_id, stored["version_id"]) is False
    ):
        return None
    return {
        "resource_type": entry.resource_type,
        "fhir_id": entry.fhir_id,
        "patient_id": patient_id,
        "kind": entry.kind.value,
        "version_id": entry.version_id,
        "status": entry.status,
        "code": entry.code.model_dump(mode="json") if entry.code else None,
        "display": entry.display,
        "value": entry.value,
        "effective": entry.effective,
        "related_fhir_ids": list(entry.related_fhir_ids),
        "attachments": [
            {**a.model_dump(mode="json", exclude={"data"}), "downloadable": a.data is not None}
            for a in entry.attachments
        ],
    }


def _document_contents(patient_id: str, entry: ImportedEntry) -> list[store.DocumentContent]:
    """A document's attachments sent inline, to store apart from its entry."""
    return [
        store.DocumentContent(
            document_fhir_id=entry.fhir_id,
            position=position,
            patient_id=patient_id,
            content_type=a.content_type,
            title=a.title,
            content=content,
        )
        for position, a in enumerate(entry.attachments)
        if (content := _decoded(a.data)) is not None
    ]


def _from_text(entry: ImportedEntry) -> LabObservation | None:
    """A result from a batch of an older connector, which carried a rendered value only."""
    if entry.code is None:
        return None
    return LabObservation(
        observation_fhir_id=entry.fhir_id,
        code=entry.code,
        status=entry.status or "unknown",
        value_string=entry.value,
        effective=entry.effective,
        version_id=entry.version_id,
    )


async def record_imported(
    session: AsyncSession, patient_id: str, batch: RecordImportedV1, now: datetime
) -> None:
    """Store a back-filled batch: results and reports as live ones are stored, the rest as
    chart entries; what a live event stored first is not overwritten by an older version.

    Like `record_lab_results`, a batch is read with one query per table and written with
    one statement per table (a page of 50 entries took some 150 statements one by one)."""
    await store.hold_charts(session, [patient_id])
    reports: list[ImportedEntry] = []
    results: list[tuple[str, str, LabObservation]] = []
    chart: list[ImportedEntry] = []
    for entry in batch.entries:
        if entry.kind in (RecordKind.LAB_RESULT, RecordKind.VITAL_SIGN):
            if entry.resource_type == "DiagnosticReport":
                reports.append(entry)
                continue
            result = entry.observation or _from_text(entry)
            if entry.resource_type == "Observation" and result is not None:
                kind = VITAL if entry.kind is RecordKind.VITAL_SIGN else LAB
                results.append((patient_id, kind, result))
                continue
        chart.append(entry)
    await _store_imported_reports(session, patient_id, reports, batch.imported_at)
    await _store_results(session, results, now)
    await _store_chart_entries(session, patient_id, chart)


async def _store_imported_reports(
    session: AsyncSession, patient_id: str, entries: list[ImportedEntry], at: datetime
) -> None:
    if not entries:
        return
    state = await store.lab_report_states(session, sorted({e.fhir_id for e in entries}))
    out: dict[str, dict[str, Any]] = {}
    groupings: dict[str, list[str]] = {}
    for entry in entries:
        report = _imported_report(state.get(entry.fhir_id), patient_id, entry, at)
        if report is not None:
            state[entry.fhir_id] = out[entry.fhir_id] = report
            groupings[entry.fhir_id] = list(entry.related_fhir_ids)
    await store.upsert_lab_reports(session, list(out.values()))
    await store.set_results_of_reports(session, groupings)


async def _store_chart_entries(
    session: AsyncSession, patient_id: str, entries: list[ImportedEntry]
) -> None:
    if not entries:
        return
    state = await store.chart_entry_states(
        session, sorted({(e.resource_type, e.fhir_id) for e in entries})
    )
    out: dict[tuple[str, str], dict[str, Any]] = {}
    documents: dict[str, list[store.DocumentContent]] = {}
    for entry in entries:
        key = (entry.resource_type, entry.fhir_id)
        fields = _imported_chart_entry(state.get(key), patient_id, entry)
        if fields is None:
            continue
        state[key] = out[key] = fields
        if entry.kind is RecordKind.DOCUMENT:
            documents[entry.fhir_id] = _document_contents(patient_id, entry)
    await store.upsert_chart_entries(session, list(out.values()))
    for document_fhir_id, contents in documents.items():
        await store.replace_document_contents(session, document_fhir_id, contents)
