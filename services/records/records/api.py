"""HTTP API of the records service, for the gateway (which scopes every call to the
patient of the caller's token; this service is not reachable from outside)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

import pydantic_core
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from pydantic import AwareDatetime, BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from records import service, store
from records.domain import BadCursor
from records.explanations import Catalogue
from records.read_cache import ChartReads
from servicekit.http import PatientId, ReadSession
from servicekit.problems import documented

router = APIRouter(prefix="/patients/{patient_id}", tags=["records"])
DEFAULT_PAGE = 20
MAX_PAGE = 100


class MedicationOut(BaseModel):
    """A medication order."""

    id: str
    status: str
    medication: dict[str, Any]
    dosage_text: str | None
    authored_on: datetime | None
    prescriber: str | None


class ChartEntryOut(BaseModel):
    """An allergy, condition or immunization."""

    id: str
    resource_type: str
    kind: str
    status: str | None
    code: dict[str, Any] | None
    display: str | None
    value: str | None
    effective: datetime | None


Code = Annotated[str, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.\-_]+$")]
Status = Annotated[str, Query(min_length=1, max_length=32, pattern=r"^[a-z-]+$")]
FhirId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]+$")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Items per page")]
CursorParam = Annotated[str | None, Query(max_length=200, description="`next_cursor` of a page")]
Since = Annotated[AwareDatetime | None, Query(description="From this time (with offset)")]
Until = Annotated[AwareDatetime | None, Query(description="Before this time (with offset)")]


class PageOut(BaseModel):
    """A page of a list, newest first; pass `next_cursor` as `cursor` for the next page."""

    items: list[dict[str, Any]]
    next_cursor: str | None


async def catalogue_of(request: Request) -> Catalogue:
    """The explanations catalogue the composition root loaded."""
    catalogue: Catalogue = request.app.state.service.state["explanations"]
    return catalogue


Explanations = Annotated[Catalogue, Depends(catalogue_of)]


async def _answered(
    request: Request,
    session: AsyncSession,
    patient_id: str,
    compute: Callable[[], Awaitable[Any]],
) -> Response:
    """The answer to a read of the patient's chart: the one kept for this request at the
    chart's current version, else `compute()`'s, kept (`records.read_cache`). The version
    is read first: an answer computed after it is never older than it."""
    reads: ChartReads = request.app.state.service.state["chart_reads"]
    if reads.max_bytes == 0:
        return _json(await compute())
    version = await store.chart_version(session, patient_id)
    key = f"{request.url.path}?{request.url.query}"
    kept = reads.get(key, version)
    if kept is not None:
        return Response(kept, media_type="application/json")
    answer = pydantic_core.to_json(await compute())
    reads.put(key, version, answer)
    return Response(answer, media_type="application/json")


def _json(value: Any) -> Response:
    return Response(pydantic_core.to_json(value), media_type="application/json")


def _page(page: service.Page) -> PageOut:
    return PageOut(items=page.items, next_cursor=page.next_cursor)


def _bad_cursor(exc: BadCursor) -> HTTPException:
    return HTTPException(400, "The cursor is not valid: start again without one.")


@router.get("/lab-results", response_model=PageOut, responses=documented(400))
async def list_lab_results(
    patient_id: PatientId,
    session: ReadSession,
    catalogue: Explanations,
    request: Request,
    code: Code | None = None,
    category: Code | None = None,
    status: Status | None = None,
    since: Since = None,
    until: Until = None,
    cursor: CursorParam = None,
    limit: Limit = DEFAULT_PAGE,
) -> Response:
    """The patient's lab reports with their results, newest first, a page at a time.

    `code` matches a report's code or any of its results' (LOINC) codes; `category` a
    report category code (`LAB`, `laboratory`...); `since`/`until` the report's time."""
    wanted = store.LabFilter(code=code, category=category, status=status, since=since, until=until)

    async def compute() -> PageOut:
        try:
            page = await service.lab_reports(session, patient_id, wanted, cursor, limit, catalogue)
        except BadCursor as exc:
            raise _bad_cursor(exc) from exc
        return _page(page)

    return await _answered(request, session, patient_id, compute)


@router.get("/lab-results/trends", response_model=dict[str, Any])
async def lab_result_trend(
    patient_id: PatientId,
    session: ReadSession,
    catalogue: Explanations,
    request: Request,
    code: Code,
    since: Since = None,
    until: Until = None,
) -> Response:
    """One test's values over time (oldest first) with ranges and the direction of change."""
    wanted = store.LabFilter(since=since, until=until)

    async def compute() -> dict[str, Any]:
        return await service.trend(session, patient_id, code, wanted, catalogue)

    return await _answered(request, session, patient_id, compute)


@router.get("/lab-results/{report_id}", response_model=dict[str, Any], responses=documented(404))
async def get_lab_result(
    patient_id: PatientId,
    report_id: FhirId,
    session: ReadSession,
    catalogue: Explanations,
    request: Request,
) -> Response:
    """One lab report of the patient (404 if it is not theirs)."""

    async def compute() -> dict[str, Any]:
        report = await service.lab_report(session, patient_id, report_id, catalogue)
        if report is None:
            raise HTTPException(404, "No such lab result for this patient.")
        return report

    return await _answered(request, session, patient_id, compute)


@router.get("/vital-signs", response_model=PageOut, responses=documented(400))
async def list_vital_signs(
    patient_id: PatientId,
    session: ReadSession,
    catalogue: Explanations,
    request: Request,
    code: Code | None = None,
    status: Status | None = None,
    since: Since = None,
    until: Until = None,
    cursor: CursorParam = None,
    limit: Limit = DEFAULT_PAGE,
) -> Response:
    """The patient's vital signs (blood pressure, pulse, weight...), newest first."""
    wanted = store.LabFilter(code=code, status=status, since=since, until=until)

    async def compute() -> PageOut:
        try:
            page = await service.results(
                session, patient_id, service.VITAL, wanted, cursor, limit, catalogue
            )
        except BadCursor as exc:
            raise _bad_cursor(exc) from exc
        return _page(page)

    return await _answered(request, session, patient_id, compute)


@router.get("/documents", response_model=PageOut, responses=documented(400))
async def list_documents(
    patient_id: PatientId,
    session: ReadSession,
    cursor: CursorParam = None,
    limit: Limit = DEFAULT_PAGE,
) -> PageOut:
    """The patient's documents (visit summaries, letters...), newest first."""
    try:
        page = await service.documents(session, patient_id, cursor, limit)
    except BadCursor as exc:
        raise _bad_cursor(exc) from exc
    return _page(page)


@router.get("/documents/{document_id}", responses=documented(404))
async def get_document(
    patient_id: PatientId, document_id: FhirId, session: ReadSession
) -> dict[str, Any]:
    """One of the patient's documents with its attachments' descriptions."""
    found = await service.document(session, patient_id, document_id)
    if found is None:
        raise HTTPException(404, "No such document for this patient.")
    return found


@router.get(
    "/documents/{document_id}/attachments/{position}",
    response_class=Response,
    responses={**documented(404), 200: {"content": {"application/octet-stream": {}}}},
)
async def get_document_attachment(
    patient_id: PatientId,
    document_id: FhirId,
    position: Annotated[int, Path(ge=0, le=99)],
    session: ReadSession,
) -> Response:
    """The content of one attachment, with the content type the EHR gave it."""
    content = await service.document_content(session, patient_id, document_id, position)
    if content is None:
        raise HTTPException(404, "No such document content for this patient.")
    return Response(
        content=content.content,
        media_type=content.content_type or "application/octet-stream",
        headers={"Cache-Control": "no-store"},
    )


@router.get("/medications", response_model=list[MedicationOut])
async def list_medications(
    patient_id: PatientId, session: ReadSession, request: Request
) -> Response:
    """The patient's medication orders, newest first (back-filled history included)."""

    async def compute() -> list[MedicationOut]:
        return [MedicationOut(**m) for m in await service.medications(session, patient_id)]

    return await _answered(request, session, patient_id, compute)


def _chart_entry(e: store.ChartEntry) -> ChartEntryOut:
    return ChartEntryOut(
        id=e.fhir_id,
        resource_type=e.resource_type,
        kind=e.kind,
        status=e.status,
        code=e.code,
        display=e.display,
        value=e.value,
        effective=e.effective,
    )


def _chart_json(e: store.ChartEntry) -> dict[str, Any]:
    return _chart_entry(e).model_dump(mode="json")


def _chart_route(kind: str) -> Any:
    async def list_entries(patient_id: PatientId, session: ReadSession) -> list[ChartEntryOut]:
        return [_chart_entry(e) for e in await service.chart_entries(session, patient_id, kind)]

    list_entries.__doc__ = f"The patient's {kind} entries, newest first."
    return list_entries


for _path, _kind in (
    ("allergies", "allergy"),
    ("conditions", "condition"),
    ("immunizations", "immunization"),
):
    router.add_api_route(
        f"/{_path}",
        _chart_route(_kind),
        methods=["GET"],
        response_model=list[ChartEntryOut],
        name=f"list_{_path.replace('-', '_')}",
    )


SummaryPart = Literal["lab_results", "medications", "allergies"]
SUMMARY_LABS = 5


@router.get("/summary", response_model=dict[str, Any])
async def summary(
    patient_id: PatientId,
    session: ReadSession,
    catalogue: Explanations,
    request: Request,
    part: Annotated[
        list[SummaryPart] | None, Query(description="The parts wanted (default: all)")
    ] = None,
) -> Response:
    """The home screen's share of this service in one call and one read: the newest lab
    reports (`lab_results`, as the first page of `/lab-results?limit=5`), `medications`
    and `allergies`, as their own routes give them. The gateway's summary called those
    three routes for every request: three requests' worth of work here for one answer."""
    wanted = set(part or ("lab_results", "medications", "allergies"))

    async def compute() -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "lab_results" in wanted:
            page = await service.lab_reports(
                session, patient_id, store.LabFilter(), None, SUMMARY_LABS, catalogue
            )
            out["lab_results"] = page.items
        if "medications" in wanted:
            out["medications"] = [
                MedicationOut(**m).model_dump(mode="json")
                for m in await service.medications(session, patient_id)
            ]
        if "allergies" in wanted:
            out["allergies"] = [
                _chart_json(e) for e in await service.chart_entries(session, patient_id, "allergy")
            ]
        return out

    return await _answered(request, session, patient_id, compute)
