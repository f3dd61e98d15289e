"""The connector's internal HTTP API for other services (service tokens): questionnaires.
Scheduling validates intake answers against the EHR's own intake form, and only the
connector speaks FHIR to the EHR. (The EHR's webhook and `/ops` are `inbound/api.py`.)

`GET /ehr/questionnaires?url=<canonical>&version=<v>` answers the Questionnaire resource as
the EHR holds it (internal API, like every service's: not reachable from outside).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from ehr_connector.context import Connector
from ehr_connector.ehr.errors import EhrError, EhrUnavailable
from servicekit.problems import documented

router = APIRouter(tags=["intake"])
# A canonical URL and a version are printable ASCII without spaces (FHIR `uri`/`string`
# as the EHR searches them): anything else is refused here, not passed on for the EHR to
# refuse (which looked like the EHR failing: 502).
_PRINTABLE = r"^[!-~]+$"


@router.get(
    "/ehr/questionnaires",
    response_class=JSONResponse,
    responses=documented(404, 422, 502, 503),
)
async def questionnaire(
    request: Request,
    url: Annotated[str, Query(min_length=1, max_length=300, pattern=_PRINTABLE)],
    version: Annotated[str | None, Query(max_length=64, pattern=_PRINTABLE)] = None,
) -> JSONResponse:
    """The EHR's Questionnaire with this canonical URL (and version, when given)."""
    running = request.app.state.service.deps
    if not isinstance(running, Connector):
        raise HTTPException(503, "The EHR client is not started.")
    ehr = running.ehr
    try:
        page = await ehr.search("Questionnaire", [("url", url)], count=50)
    except EhrUnavailable as exc:
        raise HTTPException(503, "The EHR is unavailable.") from exc
    except EhrError as exc:
        if exc.status == 400:  # the EHR cannot search by this value: the caller's input
            raise HTTPException(422, "The EHR cannot search by this url or version.") from exc
        raise HTTPException(502, f"The EHR refused the search (HTTP {exc.status}).") from exc
    found = [
        q
        for q in page.matches
        if q.get("resourceType") == "Questionnaire"
        and q.get("url") == url
        and (version is None or q.get("version") == version)
    ]
    if not found:
        raise HTTPException(404, "The EHR has no such Questionnaire.")
    # Without a version, the newest one the EHR has.
    found.sort(key=lambda q: str(q.get("meta", {}).get("lastUpdated", "")), reverse=True)
    return JSONResponse(found[0])
