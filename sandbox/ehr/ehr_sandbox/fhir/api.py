"""The FHIR R4 REST API at `/fhir`: CRUD, versions, history, search, `$everything`, metadata.

Routes only translate HTTP into store calls and back: headers (ETag, Location,
Last-Modified, If-Match, If-None-Exist, If-None-Match, Prefer) and Bundles are built here;
rules about versions live in the store, search semantics in `search`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ehr_sandbox.auth import authorize
from ehr_sandbox.fhir.capabilities import capability_statement
from ehr_sandbox.fhir.outcomes import FhirError, FhirResponse, issue, operation_outcome
from ehr_sandbox.fhir.validation import (
    check_content_type,
    check_id,
    check_resource_type,
    media_type,
    parse_json_body,
    validate_resource,
)
from ehr_sandbox.search import (
    MAX_OFFSET,
    SearchRequest,
    date_range,
    format_instant,
    int_param,
    iter_pairs,
    parse_search,
)
from ehr_sandbox.settings import SandboxSettings
from ehr_sandbox.store import Store, StoredResource, WriteResult

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"


async def check_accept(request: Request) -> None:
    """406 when the client accepts only formats other than JSON (this server speaks JSON).
    A coroutine although it awaits nothing: FastAPI runs a plain function dependency in a
    worker thread, a thread hand-off on every FHIR request (seen in the profile)."""
    fmt = request.query_params.get("_format")
    if fmt is not None and "json" not in fmt.lower():
        raise FhirError(406, f"Unsupported _format {fmt}; this server returns JSON only")
    accept = request.headers.get("accept", "").lower()
    if accept and not any(token in accept for token in ("json", "*/*", "application/*")):
        raise FhirError(406, "This server returns application/fhir+json only")


router = APIRouter(prefix="/fhir", dependencies=[Depends(check_accept)])


@dataclass(frozen=True)
class _Prefer:
    return_: str
    strict: bool


def _prefer(request: Request) -> _Prefer:
    values: dict[str, str] = {}
    for header in request.headers.getlist("prefer"):
        for part in header.split(","):
            key, _, value = part.strip().partition("=")
            values[key.strip().lower()] = value.strip().strip('"')
    return _Prefer(values.get("return", "representation"), values.get("handling") == "strict")


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _settings(request: Request) -> SandboxSettings:
    settings: SandboxSettings = request.app.state.settings
    return settings


def _version_from_etag(value: str, header: str) -> int:
    tag = value.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    tag = tag.strip('"')
    if not tag.isdigit():
        raise FhirError(400, f'Malformed {header} header {value!r}; expected W/"<version>"')
    return int(tag)


def _if_match(request: Request) -> int | None:
    value = request.headers.get("if-match")
    return None if value is None else _version_from_etag(value, "If-Match")


def _http_date(moment: datetime) -> str:
    return format_datetime(moment.replace(tzinfo=UTC), usegmt=True)


def _version_headers(stored: StoredResource, *, base: str, location: bool) -> dict[str, str]:
    headers = {"ETag": stored.etag, "Last-Modified": _http_date(stored.last_updated)}
    if location:
        headers["Location"] = f"{base}/{stored.reference}/_history/{stored.version}"
    return headers


def _write_response(request: Request, result: WriteResult, *, status: int) -> Response:
    base = _settings(request).fhir_base
    headers = _version_headers(result.stored, base=base, location=True)
    prefer = _prefer(request).return_
    if prefer == "minimal":
        return Response(status_code=status, headers=headers)
    if prefer == "OperationOutcome":
        verb = "Created" if result.created else ("Found" if result.matched_existing else "Updated")
        diagnostics = f"{verb} {result.stored.reference} version {result.stored.version}"
        outcome = operation_outcome(issue("information", "informational", diagnostics))
        return FhirResponse(outcome, status_code=status, headers=headers)
    return FhirResponse(result.stored.content, status_code=status, headers=headers)


async def _resource_body(
    request: Request, resource_type: str, expected_id: str | None
) -> dict[str, Any]:
    check_content_type(request.headers.get("content-type"))
    body = parse_json_body(await request.body())
    validate_resource(body, expected_type=resource_type, expected_id=expected_id)
    return body


def _strict_condition(request: Request, resource_type: str, query: str, what: str) -> SearchRequest:
    """Parse a condition (If-None-Exist or a conditional update's query); unknown params fail."""
    pairs = iter_pairs(parse_qsl(query, keep_blank_values=True))
    settings = _settings(request)
    condition = parse_search(
        resource_type,
        pairs,
        fhir_base=settings.fhir_base,
        default_count=settings.default_page_size,
        max_count=settings.max_page_size,
        strict=True,
    )
    if not condition.criteria:
        raise FhirError(400, f"{what} has no search criteria", code="invalid")
    return condition


def _bundle(
    bundle_type: str, total: int | None, links: list[dict[str, str]], entries: list[dict[str, Any]]
) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": format_instant(datetime.now(UTC))},
        "type": bundle_type,
    }
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return bundle


def _page_links(
    url: str, applied: list[tuple[str, str]], count: int, offset: int, total: int
) -> list[dict[str, str]]:
    def link(relation: str, at: int) -> dict[str, str]:
        query = urlencode([*applied, ("_count", str(count)), ("_offset", str(at))])
        return {"relation": relation, "url": f"{url}?{query}"}

    links = [link("self", offset)]
    if count > 0:
        links.append(link("first", 0))
        if offset > 0:
            links.append(link("previous", max(0, offset - count)))
        if offset + count < total:
            links.append(link("next", offset + count))
        links.append(link("last", max(0, (total - 1) // count * count)))
    return links


def _match_entry(base: str, stored: StoredResource, mode: str) -> dict[str, Any]:
    return {
        "fullUrl": f"{base}/{stored.reference}",
        "resource": stored.content,
        "search": {"mode": mode},
    }


# -- capabilities -------------------------------------------------------------------------


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    """The CapabilityStatement (public, like every FHIR server's)."""
    return FhirResponse(capability_statement(_settings(request)))


# -- $everything --------------------------------------------------------------------------


@router.get("/Patient/{patient_id}/$everything")
async def patient_everything(request: Request, patient_id: str) -> Response:
    """The patient and every resource that references them, paged, with supporting resources."""
    check_id(patient_id)
    await authorize(request, "Patient", "operation")
    store, settings = _store(request), _settings(request)
    await store.read("Patient", patient_id)  # 404/410 for an unknown or deleted patient
    query = request.query_params
    count = _bounded_int(
        query.get("_count"), "_count", settings.default_page_size, settings.max_page_size
    )
    offset = _bounded_int(query.get("_offset"), "_offset", 0, None)
    since = _instant_param(query.get("_since"), "_since")
    types = [t for t in (query.get("_type") or "").split(",") if t]
    for resource_type in types:
        check_resource_type(resource_type)
    keys = await store.compartment_keys(patient_id, since=since, types=types or None)
    page_keys = keys[offset : offset + count]
    matches = await store.read_many(page_keys)
    members = set(keys)
    supporting = [
        key
        for key in await store.references_of(page_keys)
        if key not in members and key[0] != "Patient"
    ]
    included = await store.read_many(supporting)
    base = settings.fhir_base
    applied = [(k, v) for k, v in query.multi_items() if k in ("_since", "_type")]
    links = _page_links(
        f"{base}/Patient/{patient_id}/$everything", applied, count, offset, len(keys)
    )
    entries = [_match_entry(base, s, "match") for s in matches]
    entries += [_match_entry(base, s, "include") for s in included]
    return FhirResponse(_bundle("searchset", len(keys), links, entries))


def _bounded_int(raw: str | None, name: str, default: int, maximum: int | None) -> int:
    if raw is None:
        return default
    value = int_param(name, raw, 0, MAX_OFFSET)
    return min(value, maximum) if maximum is not None else value


def _instant_param(raw: str | None, name: str) -> datetime | None:
    if raw is None:
        return None
    try:
        return date_range(raw)[0]
    except ValueError as exc:
        raise FhirError(400, f"{name} must be a FHIR instant", expression=[name]) from exc


# -- history ------------------------------------------------------------------------------


def _history_entry(base: str, stored: StoredResource) -> dict[str, Any]:
    reference = stored.reference
    if stored.deleted:
        method, url, status = "DELETE", reference, "204 No Content"
    elif stored.method == "POST":
        method, url, status = "POST", stored.resource_type, "201 Created"
    else:
        method, url = "PUT", reference
        status = "201 Created" if stored.version == 1 else "200 OK"
    entry: dict[str, Any] = {"fullUrl": f"{base}/{reference}"}
    if not stored.deleted:
        entry["resource"] = stored.content
    entry["request"] = {"method": method, "url": url}
    entry["response"] = {
        "status": status,
        "etag": stored.etag,
        "lastModified": format_instant(stored.last_updated),
        "location": f"{reference}/_history/{stored.version}",
    }
    return entry


async def _history(request: Request, resource_type: str, resource_id: str | None) -> Response:
    check_resource_type(resource_type)
    if resource_id is not None:
        check_id(resource_id)
    await authorize(request, resource_type, "history")
    settings = _settings(request)
    query = request.query_params
    count = _bounded_int(
        query.get("_count"), "_count", settings.default_page_size, settings.max_page_size
    )
    offset = _bounded_int(query.get("_offset"), "_offset", 0, None)
    since = _instant_param(query.get("_since"), "_since")
    page = await _store(request).history(
        resource_type, resource_id, since=since, count=count, offset=offset
    )
    base = settings.fhir_base
    url = f"{base}/{resource_type}" + (f"/{resource_id}" if resource_id else "") + "/_history"
    applied = [("_since", query["_since"])] if "_since" in query else []
    links = _page_links(url, applied, count, offset, page.total)
    entries = [_history_entry(base, stored) for stored in page.entries]
    return FhirResponse(_bundle("history", page.total, links, entries))


@router.get("/{resource_type}/_history")
async def type_history(request: Request, resource_type: str) -> Response:
    """Every version of every resource of a type, newest first."""
    return await _history(request, resource_type, None)


@router.get("/{resource_type}/{resource_id}/_history")
async def instance_history(request: Request, resource_type: str, resource_id: str) -> Response:
    """Every version of one resource, newest first."""
    return await _history(request, resource_type, resource_id)


@router.get("/{resource_type}/{resource_id}/_history/{version_id}")
async def vread(
    request: Request, resource_type: str, resource_id: str, version_id: str
) -> Response:
    """One version of a resource."""
    check_resource_type(resource_type)
    check_id(resource_id)
    await authorize(request, resource_type, "vread")
    if not version_id.isdigit() or len(version_id) > 9:
        raise FhirError(404, f"{resource_type}/{resource_id}/_history/{version_id} is not known")
    stored = await _store(request).vread(resource_type, resource_id, int(version_id))
    headers = _version_headers(stored, base=_settings(request).fhir_base, location=False)
    return FhirResponse(stored.content, headers=headers)


# -- search -------------------------------------------------------------------------------


async def _search(request: Request, resource_type: str, pairs: list[tuple[str, str]]) -> Response:
    settings = _settings(request)
    search = parse_search(
        resource_type,
        pairs,
        fhir_base=settings.fhir_base,
        default_count=settings.default_page_size,
        max_count=settings.max_page_size,
        strict=_prefer(request).strict,
    )
    result = await _store(request).search(search)
    base = settings.fhir_base
    links = _page_links(
        f"{base}/{resource_type}", search.applied, search.count, search.offset, result.total
    )
    entries = [_match_entry(base, s, "match") for s in result.matches]
    entries += [_match_entry(base, s, "include") for s in result.included]
    if search.ignored:
        outcome = operation_outcome(
            *(issue("warning", "not-supported", f"Ignored {why}") for why in search.ignored)
        )
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": outcome,
                "search": {"mode": "outcome"},
            }
        )
    return FhirResponse(_bundle("searchset", result.total, links, entries))


@router.post("/{resource_type}/_search")
async def search_post(request: Request, resource_type: str) -> Response:
    """Search with parameters in a form body (and/or the query string)."""
    check_resource_type(resource_type)
    await authorize(request, resource_type, "search")
    body = await request.body()
    pairs = iter_pairs(request.query_params.multi_items())
    if body.strip():
        if media_type(request.headers.get("content-type")) != FORM_MEDIA_TYPE:
            raise FhirError(
                415, f"POST _search needs a {FORM_MEDIA_TYPE} body", code="not-supported"
            )
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FhirError(400, "Search body is not UTF-8", code="structure") from exc
        pairs += iter_pairs(parse_qsl(text, keep_blank_values=True))
    return await _search(request, resource_type, pairs)


@router.get("/{resource_type}")
async def search_get(request: Request, resource_type: str) -> Response:
    """Search a type."""
    check_resource_type(resource_type)
    await authorize(request, resource_type, "search")
    return await _search(request, resource_type, iter_pairs(request.query_params.multi_items()))


# -- create / update / delete / read ------------------------------------------------------


@router.post("/{resource_type}")
async def create(request: Request, resource_type: str) -> Response:
    """Create (the server assigns the id); conditional with If-None-Exist."""
    check_resource_type(resource_type)
    await authorize(request, resource_type, "create")
    resource = await _resource_body(request, resource_type, None)
    condition_header = request.headers.get("if-none-exist")
    condition = None
    if condition_header is not None:
        condition = _strict_condition(request, resource_type, condition_header, "If-None-Exist")
    result = await _store(request).create(
        resource_type, resource, if_none_exist=condition, condition_key=condition_header or ""
    )
    return _write_response(request, result, status=200 if result.matched_existing else 201)


@router.put("/{resource_type}")
async def conditional_update(request: Request, resource_type: str) -> Response:
    """Update the single resource matching the query (create it when none does)."""
    check_resource_type(resource_type)
    await authorize(request, resource_type, "update")
    resource = await _resource_body(request, resource_type, None)
    query = request.url.query
    condition = _strict_condition(request, resource_type, query, "Conditional update")
    result = await _store(request).conditional_update(
        resource_type, condition, resource, condition_key=query, if_match=_if_match(request)
    )
    return _write_response(request, result, status=201 if result.created else 200)


@router.get("/{resource_type}/{resource_id}")
async def read(request: Request, resource_type: str, resource_id: str) -> Response:
    """The current version of a resource (304 when If-None-Match names it)."""
    check_resource_type(resource_type)
    check_id(resource_id)
    await authorize(request, resource_type, "read")
    stored = await _store(request).read(resource_type, resource_id)
    headers = _version_headers(stored, base=_settings(request).fhir_base, location=False)
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and if_none_match.strip() in (stored.etag, f'"{stored.version}"'):
        return Response(status_code=304, headers=headers)
    return FhirResponse(stored.content, headers=headers)


@router.put("/{resource_type}/{resource_id}")
async def update(request: Request, resource_type: str, resource_id: str) -> Response:
    """Update, or create with the client's id; honours If-Match."""
    check_resource_type(resource_type)
    check_id(resource_id)
    await authorize(request, resource_type, "update")
    resource = await _resource_body(request, resource_type, resource_id)
    result = await _store(request).update(
        resource_type, resource_id, resource, if_match=_if_match(request)
    )
    return _write_response(request, result, status=201 if result.created else 200)


@router.delete("/{resource_type}/{resource_id}")
async def delete(request: Request, resource_type: str, resource_id: str) -> Response:
    """Delete (a versioned tombstone); later reads answer 410."""
    check_resource_type(resource_type)
    check_id(resource_id)
    await authorize(request, resource_type, "delete")
    result = await _store(request).delete(resource_type, resource_id, if_match=_if_match(request))
    if result is None:
        return Response(status_code=204)
    stored = result.stored
    headers = {"ETag": stored.etag, "Last-Modified": _http_date(stored.last_updated)}
    outcome = operation_outcome(
        issue(
            "information", "informational", f"Deleted {stored.reference} (version {stored.version})"
        )
    )
    return FhirResponse(outcome, headers=headers)
