"""The patient's chart (`/v1/me/...`): lab results with trends, vital signs, documents (and
their content), medications, allergies, conditions, immunizations.

Every route reads from the records service for the patient of the token only; the SMART
scopes of the token say which resource types it may read, and every read is recorded in
the access log. Query parameters are checked here before they reach records.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from pydantic import AwareDatetime

from gateway import audit
from gateway.api.access import (
    Caller,
    Id,
    Me,
    _read,
    _require,
    requires,
    upstreams_of,
)
from gateway.upstream import UpstreamError

router = APIRouter(prefix="/v1/me", tags=["records"])
FhirId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]+$")]
Code = Annotated[str, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.\-_]+$")]
Status = Annotated[str, Query(min_length=1, max_length=32, pattern=r"^[a-z-]+$")]
Limit = Annotated[int, Query(ge=1, le=100, description="Items per page (default 20)")]
CursorParam = Annotated[
    str | None, Query(max_length=200, description="`next_cursor` of the previous page")
]
Since = Annotated[AwareDatetime | None, Query(description="From this time (with offset)")]
Until = Annotated[AwareDatetime | None, Query(description="Before this time (with offset)")]


def _params(**values: Any) -> dict[str, str]:
    """Query parameters for records: the ones given, times in RFC 3339 with offset."""
    out: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        out[name] = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return out


@router.get("/lab-results", dependencies=[requires("patient/DiagnosticReport.s")])
async def lab_results(
    caller: Me,
    request: Request,
    code: Code | None = None,
    category: Code | None = None,
    status: Status | None = None,
    since: Since = None,
    until: Until = None,
    cursor: CursorParam = None,
    limit: Limit | None = None,
) -> Any:
    """The patient's lab reports with their results, newest first, a page at a time:
    `{"items": [...], "next_cursor": ...}`. Each result carries its value, range, flag,
    a plain-language explanation of the test, and earlier versions if it was amended."""
    params = _params(
        code=code,
        category=category,
        status=status,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    path = f"/patients/{caller.patient_id}/lab-results"
    return await _read(request, caller, "DiagnosticReport", "records", path, params)


@router.get("/lab-results/trends", dependencies=[requires("patient/Observation.s")])
async def lab_result_trends(
    caller: Me,
    request: Request,
    code: Code,
    since: Since = None,
    until: Until = None,
) -> Any:
    """One test's values over time (oldest first, ready for a chart), with the lab's ranges
    and the direction of the latest change."""
    path = f"/patients/{caller.patient_id}/lab-results/trends"
    params = _params(code=code, since=since, until=until)
    return await _read(request, caller, "Observation", "records", path, params)


@router.get("/lab-results/{report_id}", dependencies=[requires("patient/DiagnosticReport.r")])
async def lab_result(caller: Me, request: Request, report_id: Id) -> Any:
    """One lab report with its results."""
    path = f"/patients/{caller.patient_id}/lab-results/{report_id}"
    return await _read(request, caller, "DiagnosticReport", "records", path)


@router.get("/vital-signs", dependencies=[requires("patient/Observation.s")])
async def vital_signs(
    caller: Me,
    request: Request,
    code: Code | None = None,
    status: Status | None = None,
    since: Since = None,
    until: Until = None,
    cursor: CursorParam = None,
    limit: Limit | None = None,
) -> Any:
    """The patient's vital signs (blood pressure, pulse, weight...), newest first, paged."""
    params = _params(code=code, status=status, since=since, until=until, cursor=cursor, limit=limit)
    path = f"/patients/{caller.patient_id}/vital-signs"
    return await _read(request, caller, "Observation", "records", path, params)


@router.get("/documents", dependencies=[requires("patient/DocumentReference.s")])
async def documents(
    caller: Me, request: Request, cursor: CursorParam = None, limit: Limit | None = None
) -> Any:
    """The patient's documents (visit summaries, letters...), newest first, paged."""
    path = f"/patients/{caller.patient_id}/documents"
    return await _read(
        request, caller, "DocumentReference", "records", path, _params(cursor=cursor, limit=limit)
    )


@router.get("/documents/{document_id}", dependencies=[requires("patient/DocumentReference.r")])
async def document(caller: Me, request: Request, document_id: FhirId) -> Any:
    """One document, with what each attachment is and whether it can be downloaded."""
    path = f"/patients/{caller.patient_id}/documents/{document_id}"
    return await _read(request, caller, "DocumentReference", "records", path)


@router.get(
    "/documents/{document_id}/attachments/{position}",
    response_class=Response,
    dependencies=[requires("patient/DocumentReference.r")],
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def document_attachment(
    caller: Me,
    request: Request,
    document_id: FhirId,
    position: Annotated[int, Path(ge=0, le=99)],
) -> Response:
    """Download one attachment of a document, with the content type the EHR gave it."""
    await _require(request, caller, "DocumentReference")
    path = f"/patients/{caller.patient_id}/documents/{document_id}/attachments/{position}"
    try:
        content, content_type = await upstreams_of(request).get_bytes("records", path)
    except UpstreamError as exc:
        raise HTTPException(exc.status, f"The {exc.service} service {exc.detail}.") from exc
    await _audit(request, caller, "DocumentReference")
    return Response(
        content=content,
        media_type=content_type,
        headers={
            "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="{document_id}-{position}"',
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _audit(request: Request, caller: Caller, resource_type: str) -> None:
    await audit.record(request, "read", resource_type)


@router.get("/medications", dependencies=[requires("patient/MedicationRequest.s")])
async def medications(caller: Me, request: Request) -> Any:
    """The patient's medications."""
    path = f"/patients/{caller.patient_id}/medications"
    return await _read(request, caller, "MedicationRequest", "records", path)


@router.get("/allergies", dependencies=[requires("patient/AllergyIntolerance.s")])
async def allergies(caller: Me, request: Request) -> Any:
    """The patient's allergies and intolerances."""
    path = f"/patients/{caller.patient_id}/allergies"
    return await _read(request, caller, "AllergyIntolerance", "records", path)


@router.get("/conditions", dependencies=[requires("patient/Condition.s")])
async def conditions(caller: Me, request: Request) -> Any:
    """The patient's conditions."""
    path = f"/patients/{caller.patient_id}/conditions"
    return await _read(request, caller, "Condition", "records", path)


@router.get("/immunizations", dependencies=[requires("patient/Immunization.s")])
async def immunizations(caller: Me, request: Request) -> Any:
    """The patient's immunizations."""
    path = f"/patients/{caller.patient_id}/immunizations"
    return await _read(request, caller, "Immunization", "records", path)
