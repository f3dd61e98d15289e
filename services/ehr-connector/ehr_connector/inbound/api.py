"""HTTP routes of the inbound side: the EHR's rest-hook endpoint and the ops endpoints.

`POST /fhir/notifications` is called by the EHR (authenticated by the channel token and the
`X-Signature` JWS, never by the ops token); everything under `/ops` needs the ops bearer
token, like the kit's own ops routes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from contracts.base import FhirId
from ehr_connector import store as connector_store
from ehr_connector.ehr.errors import EhrError, EhrUnavailable
from ehr_connector.inbound import store
from ehr_connector.inbound.service.backfill import BackfillConflict, Progress, progress_of
from ehr_connector.inbound.service.lifecycle import inbound_of
from ehr_connector.inbound.service.runtime import INSTANCE_HEADER, Inbound
from servicekit.app import Service
from servicekit.http import PatientId, ReadSession
from servicekit.ops_api import Ops, encryption_routes
from servicekit.sealing import KitSealing

router = APIRouter()


def _sealing(request: Request) -> KitSealing:
    service: Service = request.app.state.service
    assert service.outbox.cipher is not None  # the connector is built with one (app.py)
    return KitSealing(service.db, service.outbox.cipher)


# `GET /ops/encryption`, `POST /ops/encryption/reencrypt`: the sealed outbox after a rotation.
router.include_router(encryption_routes(_sealing))
FHIR_JSON = "application/fhir+json"
MAX_BODY_BYTES = 64 * 1024 * 1024


def _inbound(request: Request) -> Inbound:
    inbound = inbound_of(request.app.state.service)
    if inbound is None:
        raise HTTPException(503, "The inbound side is not running yet.", {"Retry-After": "2"})
    return inbound


@router.post(
    "/fhir/notifications",
    tags=["fhir"],
    status_code=204,
    response_class=Response,
    responses={
        400: {"description": "Not a notification (OperationOutcome)"},
        401: {"description": "Channel token or signature refused (OperationOutcome)"},
        404: {"description": "Unknown Subscription (OperationOutcome)"},
        503: {"description": "The EHR could not be read; retry (OperationOutcome)"},
    },
)
async def receive_notification(request: Request) -> Response:
    """The rest-hook endpoint of the connector's Subscriptions (handshake, heartbeat,
    event-notification); 204 only once the events are recorded and queued for publishing."""
    inbound = _inbound(request)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise HTTPException(413, "The notification is too large.")
    body = await request.body()
    answer = await inbound.webhook.accept(request.headers, body)
    if answer.status < 300:
        return Response(status_code=answer.status, headers=dict(answer.headers))
    return JSONResponse(
        answer.outcome(),
        status_code=answer.status,
        media_type=FHIR_JSON,
        headers=dict(answer.headers),
    )


@router.post(
    "/fhir/notifications/criteria/{resource_type}",
    tags=["fhir"],
    status_code=204,
    response_class=Response,
    responses={
        401: {"description": "Channel token refused (OperationOutcome)"},
        404: {"description": "No Subscription of ours for this type (OperationOutcome)"},
    },
)
async def receive_criteria_notification(
    request: Request,
    resource_type: Annotated[str, Path(pattern=r"^[A-Z][A-Za-z]{1,63}$")],
) -> Response:
    """The endpoint of classic (criteria-based) Subscriptions, one per focus type: the EHR's
    empty notification schedules a `_lastUpdated` search of that type."""
    inbound = _inbound(request)
    answer = await inbound.webhook.accept_ping(request.headers, resource_type)
    if answer.status < 300:
        return Response(status_code=answer.status)
    return JSONResponse(answer.outcome(), status_code=answer.status, media_type=FHIR_JSON)


@router.get("/fhir/notifications", tags=["fhir"], status_code=204)
async def webhook_probe(request: Request) -> Response:
    """Reachability probe of the webhook: 204 with the answering process's instance id."""
    inbound = _inbound(request)
    return Response(status_code=204, headers={INSTANCE_HEADER: inbound.instance_id})


# -- ops: subscriptions ----------------------------------------------------------------------


class SubscriptionOut(BaseModel):
    """One topic's Subscription as the connector knows it."""

    topic: str
    subscription_id: str | None = Field(description="None while the topic is `missing`")
    resource_type: str
    status: str = Field(description="requested, active, error, off, or missing (not created)")
    payload: str
    heartbeat_period_s: int
    last_event_number: int = Field(description="Highest event number processed with no gap")
    highest_event_number: int
    events_since_start: int = Field(description="As the EHR last reported it")
    last_notification_at: datetime | None
    heartbeat_missed_since: datetime | None


class EnsureOut(BaseModel):
    """What ensuring did for one topic."""

    topic: str
    subscription_id: str | None
    action: str
    status: str | None
    error: str | None = Field(default=None, description="Why the action failed, if it did")


@router.get("/ops/subscriptions", tags=["ops"], response_model=list[SubscriptionOut])
async def list_subscriptions(
    _: Ops, request: Request, session: ReadSession
) -> list[SubscriptionOut]:
    """The connector's Subscriptions with their event numbers and heartbeat state.

    A configured topic the connector has not created yet is listed as `missing` (no id):
    while the first ensure works through the topics, the ones it has done must not make
    the whole set look healthy. The EHR is not asked here: until its profile has been read
    (the first ensure), a connector with no Subscriptions yet lists every configured topic
    by its canonical.
    """
    rows = await store.subscriptions(session)
    listed = [
        SubscriptionOut(
            topic=r.topic,
            subscription_id=r.subscription_id,
            resource_type=r.resource_type,
            status=r.status,
            payload=r.payload,
            heartbeat_period_s=r.heartbeat_period_s,
            last_event_number=r.last_event_number,
            highest_event_number=r.highest_event_number,
            events_since_start=r.events_since_start,
            last_notification_at=r.last_notification_at,
            heartbeat_missed_since=r.heartbeat_missed_since,
        )
        for r in rows
    ]
    inbound = inbound_of(request.app.state.service)
    if inbound is None or not inbound.settings.inbound_enabled:
        return listed
    targets = inbound.manager.known_targets()
    if targets is None:
        if rows:
            # Rows of an earlier start, named by its EHR profile: which topics are missing
            # is known once this start's first ensure has read the profile.
            return listed
        targets = dict(inbound.settings.inbound_topics)
    recorded = {r.topic for r in rows}
    settings = inbound.settings
    listed += [
        SubscriptionOut(
            topic=topic,
            subscription_id=None,
            resource_type=resource_type,
            status="missing",
            payload=settings.inbound_payload,
            heartbeat_period_s=settings.inbound_heartbeat_period_s,
            last_event_number=0,
            highest_event_number=0,
            events_since_start=0,
            last_notification_at=None,
            heartbeat_missed_since=None,
        )
        for resource_type, topic in targets.items()
        if topic not in recorded
    ]
    return sorted(listed, key=lambda s: s.topic)


@router.post("/ops/subscriptions/ensure", tags=["ops"], response_model=list[EnsureOut])
async def ensure_subscriptions(_: Ops, request: Request) -> list[EnsureOut]:
    """Create missing Subscriptions, re-activate ones in error, switch off orphans, then
    catch up on gaps; each topic is reported with its own action (`failed` with an error)."""
    try:
        results = await _inbound(request).ensure_and_catch_up()
    except EhrError as exc:
        raise _ehr_failed(exc) from exc
    return [
        EnsureOut(
            topic=r.topic,
            subscription_id=r.subscription_id,
            action=r.action,
            status=r.status,
            error=r.error,
        )
        for r in results
    ]


def _ehr_failed(exc: EhrError) -> HTTPException:
    # The EHR refused or failed: a gateway error naming the EHR's status, never a 500.
    status = 503 if isinstance(exc, EhrUnavailable) else 502
    return HTTPException(status, f"The EHR answered {type(exc).__name__} (HTTP {exc.status}).")


@router.post("/ops/subscriptions/{subscription_id}/recover", tags=["ops"], status_code=202)
async def recover_subscription(
    _: Ops,
    request: Request,
    subscription_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9\-.]{1,64}$")],
) -> dict[str, str]:
    """Ask the EHR for the Subscription's status and recover any missing events now."""
    inbound = _inbound(request)
    async with inbound.db.sessions() as session:
        if await store.subscription_by_id(session, subscription_id) is None:
            raise HTTPException(404, "No such Subscription of the connector.")
    try:
        await inbound.manager.status(subscription_id)
    except EhrError as exc:
        raise _ehr_failed(exc) from exc
    inbound.recovery.schedule(subscription_id, grace=False)
    return {"subscription_id": subscription_id, "recovery": "scheduled"}


# -- ops: rejections --------------------------------------------------------------------------


class RejectionOut(BaseModel):
    """A resource the connector could not turn into an event (no resource content)."""

    id: int
    subscription_id: str | None
    event_number: int | None
    resource: str
    version_id: str | None
    reason: str
    created_at: datetime


@router.get("/ops/inbound/rejections", tags=["ops"], response_model=list[RejectionOut])
async def list_rejections(
    _: Ops,
    session: ReadSession,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, description="Page: ids below this one")] = None,
) -> list[RejectionOut]:
    """Rejected notifications' resources and why, newest first."""
    rows = await store.rejections(session, limit, before)
    return [
        RejectionOut(
            id=r.id,
            subscription_id=r.subscription_id,
            event_number=r.event_number,
            resource=r.resource_ref,
            version_id=r.version_id,
            reason=r.reason,
            created_at=r.created_at,
        )
        for r in rows
    ]


# -- ops: back-fill ---------------------------------------------------------------------------


class BackfillRequest(BaseModel):
    """Which EHR Patient to import, when the patient is not linked yet."""

    patient_fhir_id: FhirId | None = None


class BackfillOut(BaseModel):
    """A back-fill's progress: resources looked at (`done`) out of `total`."""

    backfill_id: str
    patient_id: str
    state: str
    trigger: str
    done: int
    total: int | None
    entries_published: int
    batches_published: int
    current_type: str | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def _out(progress: Progress) -> BackfillOut:
    return BackfillOut(**progress.__dict__)


@router.post(
    "/ops/backfill/{patient_id}", tags=["ops"], status_code=202, response_model=BackfillOut
)
async def start_backfill(
    _: Ops,
    request: Request,
    patient_id: PatientId,
    body: Annotated[BackfillRequest | None, Body()] = None,
) -> BackfillOut:
    """Import the patient's history again (409 while a back-fill of theirs is running)."""
    inbound = _inbound(request)
    fhir_id = body.patient_fhir_id if body is not None else None
    async with inbound.db.transaction() as session:
        known = await connector_store.patient_fhir_id_of(session, patient_id)
        if fhir_id is not None and known != fhir_id:
            await connector_store.remember_patient(session, patient_id, fhir_id)
    fhir_id = fhir_id or known
    if fhir_id is None:
        raise HTTPException(404, "The patient is not linked to an EHR Patient; name it.")
    try:
        job = await inbound.backfill.start_backfill(patient_id, fhir_id, "ops")
    except BackfillConflict as exc:
        raise HTTPException(409, f"Back-fill {exc} of this patient is still running.") from exc
    return _out(progress_of(job))


@router.get("/ops/backfill/{patient_id}", tags=["ops"], response_model=BackfillOut)
async def backfill_progress(_: Ops, session: ReadSession, patient_id: PatientId) -> BackfillOut:
    """The patient's latest back-fill: state and counts."""
    job = await store.latest_backfill(session, patient_id)
    if job is None:
        raise HTTPException(404, "No back-fill of this patient.")
    return _out(progress_of(job))


# -- ops: canary ------------------------------------------------------------------------------


@router.post("/ops/canary", tags=["ops"])
async def run_canary(_: Ops, request: Request) -> dict[str, float | None]:
    """Run the synthetic canary once now; answers its latency (null: timed out)."""
    latency = await _inbound(request).canary.run_once()
    return {"latency_s": latency}
