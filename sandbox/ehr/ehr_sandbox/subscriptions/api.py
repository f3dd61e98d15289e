"""FHIR routes of topic-based Subscriptions.

- `GET|POST /fhir/Subscription/$status` (`id`, `status` filters) and
  `GET|POST /fhir/Subscription/{id}/$status`: a `searchset` Bundle of status resources
  (type `query-status`);
- `GET|POST /fhir/Subscription/{id}/$events?eventsSinceNumber=&eventsUntilNumber=&content=`:
  a `history` Bundle of the retained events in the `query-event` form, with the payload
  content asked for (default: the Subscription's own);
- `POST /fhir/Subscription`, `PUT /fhir/Subscription[/{id}]`: the generic REST handlers,
  after the Subscription has been checked (422 for an unknown topic, an unsupported
  channel or a malformed backport extension).

Operation parameters come from the query string, or for POST also from a `Parameters`
body. Every route authorises like any FHIR route (`Subscription` / `operation`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_sandbox.auth import authorize
from ehr_sandbox.fhir import api as fhir_api
from ehr_sandbox.fhir.outcomes import FhirError, FhirResponse
from ehr_sandbox.fhir.validation import check_content_type, parse_json_body
from ehr_sandbox.search import SearchRequest
from ehr_sandbox.store import StoredResource
from ehr_sandbox.subscriptions.bundles import (
    StatusInfo,
    notification_bundle,
    status_resource,
    status_search_bundle,
)
from ehr_sandbox.subscriptions.delivery import event_views
from ehr_sandbox.subscriptions.manager import SubscriptionManager
from ehr_sandbox.subscriptions.model import (
    PAYLOAD_CONTENTS,
    PayloadContent,
    SubscriptionInvalid,
    parse_subscription,
)

MAX_EVENTS_PER_QUERY = 1000
MAX_STATUS_RESULTS = 1000

router = APIRouter()


def _manager(request: Request) -> SubscriptionManager:
    manager: SubscriptionManager | None = getattr(request.app.state, "subscriptions", None)
    if manager is None:
        raise FhirError(503, "Subscriptions are starting; retry shortly", code="transient")
    return manager


async def _operation_params(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        params.setdefault(name, []).append(value)
    if request.method != "POST":
        return params
    raw = await request.body()
    if not raw.strip():
        return params
    check_content_type(request.headers.get("content-type"))
    body = parse_json_body(raw)
    if body.get("resourceType") != "Parameters":
        raise FhirError(400, "An operation body must be a Parameters resource", code="invalid")
    for parameter in body.get("parameter") or []:
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise FhirError(400, "Every parameter needs a name", code="invalid")
        values = [
            v for k, v in parameter.items() if k.startswith("value") and isinstance(v, str | int)
        ]
        if len(values) != 1:
            raise FhirError(
                400, f"Parameter {parameter['name']} needs one primitive value", code="invalid"
            )
        params.setdefault(parameter["name"], []).append(str(values[0]))
    return params


def _single(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name, [])
    if len(values) > 1:
        raise FhirError(400, f"{name} may be given only once", code="invalid", expression=[name])
    return values[0] if values else None


def _event_number(params: dict[str, list[str]], name: str) -> int | None:
    raw = _single(params, name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise FhirError(
            400, f"{name} must be a non-negative integer", code="invalid", expression=[name]
        )
    return int(raw)


async def _status_of(manager: SubscriptionManager, stored: StoredResource) -> dict[str, Any]:
    state = await manager.log.state(stored.id)
    content = stored.content
    error = content.get("error") if content.get("status") == "error" else None
    info = StatusInfo(
        subscription_id=stored.id,
        topic=str(content.get("criteria", "")),
        status=str(content.get("status", "")),
        events_since_start=state.events_since_start,
        error=str(error) if error else None,
    )
    return status_resource(
        manager.fhir_base, info, "query-status", [], "id-only", manager.settings.notification_format
    )


@router.get("/fhir/Subscription/$status", include_in_schema=False)
@router.post("/fhir/Subscription/$status", include_in_schema=False)
async def status_all(request: Request) -> Response:
    """`$status` at type level: every Subscription the caller may see, or those asked for."""
    await authorize(request, "Subscription", "operation")
    manager = _manager(request)
    params = await _operation_params(request)
    ids = [i for value in params.get("id", []) for i in value.split(",") if i]
    wanted = {s for value in params.get("status", []) for s in value.split(",") if s}
    found: list[StoredResource] = []
    if ids:
        for sub_id in dict.fromkeys(ids):
            try:
                found.append(await manager.store.read("Subscription", sub_id))
            except FhirError as exc:
                if exc.status not in (404, 410):
                    raise
    else:
        result = await manager.store.search(SearchRequest("Subscription", count=MAX_STATUS_RESULTS))
        found = result.matches
    if wanted:
        found = [s for s in found if s.content.get("status") in wanted]
    statuses = [await _status_of(manager, stored) for stored in found]
    return FhirResponse(status_search_bundle(manager.fhir_base, statuses, str(request.url)))


@router.get("/fhir/Subscription/{subscription_id}/$status", include_in_schema=False)
@router.post("/fhir/Subscription/{subscription_id}/$status", include_in_schema=False)
async def status_one(request: Request, subscription_id: str) -> Response:
    """`$status` of one Subscription."""
    await authorize(request, "Subscription", "operation")
    manager = _manager(request)
    await _operation_params(request)
    stored = await manager.store.read("Subscription", subscription_id)
    status = await _status_of(manager, stored)
    return FhirResponse(status_search_bundle(manager.fhir_base, [status], str(request.url)))


@router.get("/fhir/Subscription/{subscription_id}/$events", include_in_schema=False)
@router.post("/fhir/Subscription/{subscription_id}/$events", include_in_schema=False)
async def events(request: Request, subscription_id: str) -> Response:
    """`$events`: retained events of one Subscription, as a query-event notification."""
    await authorize(request, "Subscription", "operation")
    manager = _manager(request)
    params = await _operation_params(request)
    since = _event_number(params, "eventsSinceNumber")
    until = _event_number(params, "eventsUntilNumber")
    if since is not None and until is not None and since > until:
        raise FhirError(400, "eventsSinceNumber is after eventsUntilNumber", code="invalid")
    stored = await manager.store.read("Subscription", subscription_id)
    try:
        config = parse_subscription(stored.content)
    except SubscriptionInvalid as exc:
        raise FhirError(422, f"This Subscription cannot be served: {exc}") from exc
    content: PayloadContent = config.content
    requested = _single(params, "content")
    if requested is not None:
        if requested not in PAYLOAD_CONTENTS:
            raise FhirError(
                400,
                "content must be empty, id-only or full-resource",
                code="invalid",
                expression=["content"],
            )
        content = next(c for c in PAYLOAD_CONTENTS if c == requested)
    retained = await manager.log.range(subscription_id, since, until, MAX_EVENTS_PER_QUERY)
    state = await manager.log.state(subscription_id)
    views = await event_views(retained, content, manager.load_context)
    bundle = notification_bundle(
        fhir_base=manager.fhir_base,
        info=StatusInfo(
            subscription_id=subscription_id,
            topic=config.topic.canonical,
            status=str(stored.content.get("status", "")),
            events_since_start=state.events_since_start,
        ),
        kind="query-event",
        events=views,
        content=content,
        fmt=manager.settings.notification_format,
    )
    return FhirResponse(bundle)


async def _check_subscription_body(request: Request, interaction: str) -> None:
    await authorize(request, "Subscription", interaction)
    check_content_type(request.headers.get("content-type"))
    body = parse_json_body(await request.body())
    if body.get("resourceType") != "Subscription":
        return  # the generic handler answers the mismatch with its own 400
    try:
        parse_subscription(body)
    except SubscriptionInvalid as exc:
        raise exc.to_fhir_error() from exc


@router.post("/fhir/Subscription", include_in_schema=False)
async def create_subscription(request: Request) -> Response:
    """Create a Subscription (validated against the topics and channels served)."""
    await _check_subscription_body(request, "create")
    return await fhir_api.create(request, "Subscription")


@router.put("/fhir/Subscription/{subscription_id}", include_in_schema=False)
async def update_subscription(request: Request, subscription_id: str) -> Response:
    """Update a Subscription (validated like a create)."""
    await _check_subscription_body(request, "update")
    return await fhir_api.update(request, "Subscription", subscription_id)


@router.put("/fhir/Subscription", include_in_schema=False)
async def conditional_update_subscription(request: Request) -> Response:
    """Conditional update of a Subscription (validated like a create)."""
    await _check_subscription_body(request, "update")
    return await fhir_api.conditional_update(request, "Subscription")
