"""Use cases that read the chart: what the HTTP routes do (in a read session)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from records import store
from records.domain import (
    LAB,
    Cursor,
    direction_of,
    flag_of,
    newest_first,
    numeric_value,
    range_of,
    sort_time,
    unit_of,
)
from records.explanations import Catalogue


@dataclass(frozen=True)
class Page:
    """One page of a list, newest first; `next_cursor` fetches the next one."""

    items: list[dict[str, Any]]
    next_cursor: str | None

    def as_json(self) -> dict[str, Any]:
        """The page as the API returns it."""
        return {"items": self.items, "next_cursor": self.next_cursor}


def result_json(
    row: store.LabResult,
    catalogue: Catalogue,
    versions: list[store.LabResultVersion],
    report_fhir_id: str | None,
) -> dict[str, Any]:
    """A result as the patient sees it: the facts, its flag, what the test is, its history."""
    flag = flag_of(row.data)
    return {
        **row.data,
        "id": row.observation_fhir_id,
        "kind": row.kind,
        "report_fhir_id": report_fhir_id,
        "flag": flag.as_json() if flag else None,
        "explanation": catalogue.explain(row.data.get("code")),
        "history": [
            {
                "version_id": v.version_id,
                "status": v.status,
                "replaced_at": v.replaced_at.isoformat(),
                "value_quantity": v.data.get("value_quantity"),
                "value_string": v.data.get("value_string"),
                "value_coding": v.data.get("value_coding"),
                "reference_ranges": v.data.get("reference_ranges", []),
                "interpretation": v.data.get("interpretation", []),
                "flag": f.as_json() if (f := flag_of(v.data)) else None,
            }
            for v in versions
        ],
    }


def _report_json(row: store.LabReport, results: list[dict[str, Any]]) -> dict[str, Any]:
    flags = [r["flag"]["code"] for r in results if r["flag"] and r["flag"]["code"] != "normal"]
    return {
        "id": row.report_fhir_id,
        "grouping": "report",
        "status": row.status,
        "code": row.code,
        "category": row.category,
        "effective": row.effective.isoformat() if row.effective else None,
        "issued": row.issued.isoformat() if row.issued else None,
        "performer": row.performer,
        "observations": results,
        "flags": sorted(set(flags)),
        "version": row.source_version,
    }


async def _reports_json(
    session: AsyncSession, rows: list[store.LabReport], catalogue: Catalogue
) -> list[dict[str, Any]]:
    grouped = await store.results_of_reports(session, [r.report_fhir_id for r in rows])
    ids = [res.observation_fhir_id for results in grouped.values() for res in results]
    versions = await store.versions_of(session, ids)
    return [
        _report_json(
            row,
            [
                result_json(
                    res, catalogue, versions.get(res.observation_fhir_id, []), row.report_fhir_id
                )
                for res in grouped.get(row.report_fhir_id, [])
            ],
        )
        for row in rows
    ]


def _cursor(token: str | None) -> Cursor | None:
    return Cursor.decode(token) if token else None


def _alone_json(row: store.LabResult, result: dict[str, Any]) -> dict[str, Any]:
    """A laboratory result no report groups, listed like a report of one result."""
    flag = result["flag"]["code"] if result["flag"] else None
    return {
        "id": row.observation_fhir_id,
        "grouping": "result",
        "status": row.status,
        "code": row.data.get("code"),
        "category": row.data.get("category", []),
        "effective": row.data.get("effective"),
        "issued": row.data.get("issued"),
        "performer": row.data.get("performer", []),
        "observations": [result],
        "flags": [flag] if flag and flag != "normal" else [],
        "version": row.version_id,
    }


async def _alone_results_json(
    session: AsyncSession, rows: list[store.LabResult], catalogue: Catalogue
) -> list[dict[str, Any]]:
    versions = await store.versions_of(session, [r.observation_fhir_id for r in rows])
    return [
        _alone_json(r, result_json(r, catalogue, versions.get(r.observation_fhir_id, []), None))
        for r in rows
    ]


async def lab_reports(
    session: AsyncSession,
    patient_id: str,
    wanted: store.LabFilter,
    cursor: str | None,
    limit: int,
    catalogue: Catalogue,
) -> Page:
    """A page of the patient's lab reports with their results, newest first (a laboratory
    result that no report groups is listed on its own, `grouping: "result"`)."""
    listed = await store.lab_list_page(session, patient_id, wanted, _cursor(cursor), limit)
    more, listed = len(listed) > limit, listed[:limit]
    following = Cursor(listed[-1].sort_at, listed[-1].id).encode() if more else None
    report_ids = [e.id for e in listed if e.grouping == "report"]
    result_ids = [e.id for e in listed if e.grouping == "result"]
    reports = await _reports_json(
        session, await store.lab_reports_by_id(session, report_ids), catalogue
    )
    alone = await _alone_results_json(
        session, await store.results_by_id(session, result_ids), catalogue
    )
    by_key = {("report", r["id"]): r for r in reports} | {("result", r["id"]): r for r in alone}
    return Page([by_key[(e.grouping, e.id)] for e in listed], following)


async def lab_report(
    session: AsyncSession, patient_id: str, report_id: str, catalogue: Catalogue
) -> dict[str, Any] | None:
    """One of the patient's lab reports, or a laboratory result listed on its own (None: no
    such entry of this patient)."""
    row = await store.get_lab_report(session, report_id)
    if row is not None and row.patient_id == patient_id:
        return (await _reports_json(session, [row], catalogue))[0]
    result = await store.get_result(session, report_id)
    if (
        result is None
        or result.patient_id != patient_id
        or result.kind != LAB
        or await store.report_of_result(session, report_id) is not None
    ):
        return None
    return (await _alone_results_json(session, [result], catalogue))[0]


async def results(
    session: AsyncSession,
    patient_id: str,
    kind: str,
    wanted: store.LabFilter,
    cursor: str | None,
    limit: int,
    catalogue: Catalogue,
) -> Page:
    """A page of the patient's results of one kind (vital signs...), newest first."""
    rows = await store.results_page(session, patient_id, kind, wanted, _cursor(cursor), limit)
    more, rows = len(rows) > limit, rows[:limit]
    following = Cursor(rows[-1].sort_at, rows[-1].observation_fhir_id).encode() if more else None
    versions = await store.versions_of(session, [r.observation_fhir_id for r in rows])
    items = [result_json(r, catalogue, versions.get(r.observation_fhir_id, []), None) for r in rows]
    return Page(items, following)


async def trend(
    session: AsyncSession,
    patient_id: str,
    code: str,
    wanted: store.LabFilter,
    catalogue: Catalogue,
) -> dict[str, Any]:
    """One test's values over time, oldest first, with ranges and the latest direction."""
    rows = await store.series_of(session, patient_id, code, wanted)
    points = []
    for row in rows:
        if row.status in ("cancelled", "entered-in-error"):
            continue
        low, high = range_of(row.data)
        flag = flag_of(row.data)
        points.append(
            {
                "result_id": row.observation_fhir_id,
                "at": row.sort_at.isoformat(),
                "value": numeric_value(row.data),
                "unit": unit_of(row.data),
                "text": row.data.get("value_string")
                or (row.data.get("value_coding") or {}).get("display"),
                "low": low,
                "high": high,
                "flag": flag.flag.value if flag else None,
                "status": row.status,
            }
        )
    series = [(p["value"], p["unit"]) for p in points if isinstance(p["value"], float)]
    unit = series[-1][1] if series else None
    comparable = [value for value, unit_of_point in series if unit_of_point == unit]
    direction = change = None
    if len(comparable) >= 2:
        previous, latest = comparable[-2], comparable[-1]
        direction = direction_of(previous, latest).value
        change = round(latest - previous, 6)
    display = rows[-1].data.get("code", {}).get("display") if rows else None
    return {
        "code": code,
        "display": display,
        "unit": unit,
        "points": points,
        "direction": direction,
        "change": change,
        "explanation": catalogue.explain({"system": "http://loinc.org", "code": code}),
    }


def _document_json(row: store.ChartEntry) -> dict[str, Any]:
    return {
        "id": row.fhir_id,
        "status": row.status,
        "type": row.code,
        "description": row.display,
        "date": row.effective.isoformat() if row.effective else None,
        "attachments": [
            {**a, "position": position} for position, a in enumerate(row.attachments or [])
        ],
        "version": row.version_id,
    }


async def documents(session: AsyncSession, patient_id: str, cursor: str | None, limit: int) -> Page:
    """A page of the patient's documents, newest first."""
    rows = await store.documents_page(session, patient_id, _cursor(cursor), limit)
    more, rows = len(rows) > limit, rows[:limit]
    following = None
    if more:
        following = Cursor(sort_time(rows[-1].effective), rows[-1].fhir_id).encode()
    return Page([_document_json(r) for r in rows], following)


async def document(
    session: AsyncSession, patient_id: str, document_id: str
) -> dict[str, Any] | None:
    """One of the patient's documents (None: not theirs or not there)."""
    row = await store.get_chart_entry(session, "DocumentReference", document_id)
    if row is None or row.patient_id != patient_id:
        return None
    return _document_json(row)


async def document_content(
    session: AsyncSession, patient_id: str, document_id: str, position: int
) -> store.DocumentContent | None:
    """The content of one attachment of the patient's document, when the EHR sent it."""
    content = await store.get_document_content(session, document_id, position)
    if content is None or content.patient_id != patient_id:
        return None
    return content


async def medications(session: AsyncSession, patient_id: str) -> list[dict[str, Any]]:
    """The patient's medication orders, newest first: live ones, and back-filled ones no
    live event has detailed."""
    live = [
        {
            "id": m.fhir_id,
            "status": m.status,
            "medication": m.medication,
            "dosage_text": m.dosage_text,
            "authored_on": m.authored_on,
            "prescriber": m.prescriber,
        }
        for m in await store.medications_of(session, patient_id)
    ]
    history = [
        {
            "id": e.fhir_id,
            "status": e.status or "unknown",
            "medication": {
                **(e.code or {}),
                "display": e.display or (e.code or {}).get("display"),
            },
            "dosage_text": e.value,
            "authored_on": e.effective,
            "prescriber": None,
        }
        for e in await store.imported_medications_of(session, patient_id)
    ]
    return sorted(live + history, key=lambda m: newest_first(m["authored_on"]), reverse=True)


async def chart_entries(
    session: AsyncSession, patient_id: str, kind: str
) -> list[store.ChartEntry]:
    """The patient's allergies, conditions or immunizations, newest first."""
    return await store.chart_entries_of(session, patient_id, kind)
