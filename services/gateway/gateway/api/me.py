"""The patient's own routes (`/v1/me`...): who the token speaks for, the profile, the
home screen's summary, message threads, the access log and the live notification stream.
Reads are recorded in the access log."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import StreamingResponse
from opentelemetry import trace
from pydantic import BaseModel, Field

from contracts.consent import CaregiverPart
from gateway import audit, observability, store
from gateway.api.access import (
    Id,
    Me,
    _read,
    current_grant,
    requires,
    service_of,
    settings_of,
    upstreams_of,
)
from gateway.consent import SUMMARY_PARTS, Grant
from gateway.domain import Notification, NotificationKind, profile_of
from gateway.hub import NotificationHub
from gateway.settings import Settings
from gateway.upstream import UpstreamError
from servicekit.consumer import running_deps

router = APIRouter(prefix="/v1", tags=["patient"])

# A note stored this long ago that has not committed yet is not waited for by an open
# stream (a consumer's transaction is far shorter); a reconnect starts from its cursor.
LATE_NOTE_S = 60.0
NOTES_PER_QUERY = 100


class MeOut(BaseModel):
    """Who the token speaks for."""

    patient_id: str
    scopes: list[str]
    actor: str = Field(
        default="self", description="self, or caregiver (a RelatedPerson acting for them)"
    )
    parts: list[CaregiverPart] | None = Field(
        default=None, description="A caregiver's: the parts the patient's grant opens now"
    )
    until: datetime | None = Field(default=None, description="A caregiver's: the grant's end")


@router.get("/me", response_model=MeOut, dependencies=[requires("patient/Patient.r")])
async def me(caller: Me) -> MeOut:
    """The caller's internal patient id and granted scopes (links the account on first use);
    for a caregiver, what the patient's grant opens and until when."""
    grant = caller.grant
    return MeOut(
        patient_id=caller.patient_id,
        scopes=sorted(caller.token.scopes),
        actor=caller.actor,
        parts=sorted(grant.parts) if grant is not None else None,
        until=grant.end if grant is not None else None,
    )


class ProfileOut(BaseModel):
    """How the portal greets the patient, and what the symptom check pre-fills."""

    name: str
    given_name: str
    birth_date: date | None
    age: int | None
    sex: str


@router.get("/me/profile", response_model=ProfileOut, dependencies=[requires("patient/Patient.r")])
async def profile(
    caller: Me, request: Request, authorization: Annotated[str, Header()]
) -> ProfileOut:
    """The patient's name, birth date, age and sex, read from the EHR with their own token."""
    service = service_of(request)
    settings: Settings = service.settings  # type: ignore[assignment]
    base = (settings.ehr_fhir_url or settings.oidc_issuer.rstrip("/") + "/fhir").rstrip("/")
    http: httpx.AsyncClient = service.state["http"]
    fhir_id = quote(caller.token.patient_fhir_id, safe="")
    try:
        response = await http.get(
            f"{base}/Patient/{fhir_id}",
            headers={"Authorization": authorization, "Accept": "application/fhir+json"},
            timeout=settings.ehr_timeout_s,
        )
    except httpx.HTTPError as exc:
        raise HTTPException(503, "The EHR is unavailable; try again.") from exc
    if response.status_code == 403:
        # A caregiver before the EHR has the patient's Consent on file (or after it ended).
        raise HTTPException(403, "The EHR does not let this user read the patient's details.")
    if response.status_code != 200:
        raise HTTPException(502, f"The EHR answered {response.status_code}.")
    try:
        patient = response.json()
    except ValueError as exc:
        raise HTTPException(502, "The EHR's answer was not JSON.") from exc
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise HTTPException(502, "The EHR did not return a Patient.")
    found = profile_of(patient, datetime.now(UTC).date())
    await audit.record(request, "read", "Patient")
    return ProfileOut(
        name=found.name,
        given_name=found.given_name,
        birth_date=found.birth_date,
        age=found.age,
        sex=found.sex,
    )


@router.get("/me/threads", dependencies=[requires("patient/Communication.s")])
async def threads(caller: Me, request: Request) -> Any:
    """The patient's message threads."""
    return await _read(
        request, caller, "Communication", "messaging", f"/patients/{caller.patient_id}/threads"
    )


@router.get("/me/threads/{thread_id}/messages", dependencies=[requires("patient/Communication.s")])
async def thread_messages(caller: Me, request: Request, thread_id: Id) -> Any:
    """The messages of one thread, oldest first."""
    path = f"/patients/{caller.patient_id}/threads/{thread_id}/messages"
    return await _read(request, caller, "Communication", "messaging", path)


@router.get("/me/summary", dependencies=[requires("patient/Patient.r")])
async def summary(caller: Me, request: Request) -> dict[str, Any]:
    """Everything at a glance; a part whose service fails is left out with a warning."""
    upstreams = upstreams_of(request)
    pid = caller.patient_id
    # Each part: the resource type its scope names, and the service that owns it.
    parts: dict[str, tuple[str, str]] = {
        "lab_results": ("DiagnosticReport", "records"),
        "medications": ("MedicationRequest", "records"),
        "allergies": ("AllergyIntolerance", "records"),
        "appointments": ("Appointment", "scheduling"),
        "threads": ("Communication", "messaging"),
    }
    paths = {"appointments": f"/patients/{pid}/appointments", "threads": f"/patients/{pid}/threads"}
    allowed = {
        k: v
        for k, v in parts.items()
        if caller.token.allows_read(v[0])
        and (caller.grant is None or SUMMARY_PARTS[k] in caller.grant.parts)
    }
    budget = settings_of(request).summary_part_timeout_s

    async def part(service: str, path: str) -> Any:
        try:
            return await asyncio.wait_for(upstreams.get(service, path), budget)
        except TimeoutError as exc:
            raise UpstreamError(service, 504, f"did not answer within {budget:g} s") from exc

    # Records' parts come in one call (its /summary: one request and one read instead of
    # three); every other part is its service's own call.
    from_records = [k for k, v in allowed.items() if v[1] == "records"]
    calls: list[tuple[list[str], Awaitable[Any]]] = []
    if from_records:
        query = "&".join(f"part={k}" for k in from_records)
        calls.append((from_records, part("records", f"/patients/{pid}/summary?{query}")))
    calls += [([k], part(v[1], paths[k])) for k, v in allowed.items() if v[1] != "records"]
    # The summary is recorded whatever its parts bring, so its record is committed while
    # the parts are fetched (the answer still waits for that commit; a failed one is 503).
    results, _ = await asyncio.gather(
        asyncio.gather(*(call for _, call in calls), return_exceptions=True),
        audit.record(request, "read", "summary"),
    )
    out: dict[str, Any] = {"patient_id": pid, "warnings": []}
    for (names, _), result in zip(calls, results, strict=True):
        for name in names:
            if isinstance(result, BaseException):
                detail = result.detail if isinstance(result, UpstreamError) else "failed"
                out["warnings"].append({"part": name, "detail": f"{allowed[name][1]} {detail}"})
                out[name] = None
            else:
                out[name] = result.get(name) if name in from_records else result
    if isinstance(out.get("threads"), list):
        # Unread messages from the care team, over every thread (messaging counts them).
        out["unread_messages"] = sum(int(t.get("unread", 0)) for t in out["threads"])
    return out


class AccessLogOut(BaseModel):
    """One recorded read of the patient's data."""

    at: datetime
    actor: str = Field(description="self, caregiver (someone the patient let in) or delegate")
    actor_id: str | None = Field(
        default=None, description="Who acted: the token's user (`RelatedPerson/<id>`...)"
    )
    action: str
    resource: str
    resource_id: str | None = None
    outcome: str = Field(default="allowed", description="allowed, or denied (a refused attempt)")
    client_id: str | None = Field(default=None, description="The app the token was issued to")


@router.get(
    "/me/access-log",
    response_model=list[AccessLogOut],
    dependencies=[requires("patient/AuditEvent.s")],
)
async def access_log(caller: Me, request: Request) -> list[AccessLogOut]:
    """Who read the patient's health data through the portal, newest first."""
    async with service_of(request).db.reads() as session:
        rows = await store.access_log_of(session, caller.patient_id)
    # Reading the log is itself recorded (after the read: it is not in its own answer).
    await audit.record(request, "read", "AuditEvent")
    return [
        AccessLogOut(
            at=r.at,
            actor=r.actor,
            actor_id=r.actor_id,
            action=r.action,
            resource=r.resource,
            resource_id=r.resource_id,
            outcome=r.outcome,
            client_id=r.client_id,
        )
        for r in rows
    ]


_EVENT_ID = re.compile(r"^[0-9]{1,19}$")
_MAX_EVENT_ID = 2**63 - 1  # notification ids are bigint


def _last_event_id(value: str | None) -> int:
    """The id to replay after; a malformed or out-of-range one is a 400 (it would fail
    in the database once the stream had started)."""
    if not value:
        return 0
    if not _EVENT_ID.match(value) or int(value) > _MAX_EVENT_ID:
        raise HTTPException(400, "Last-Event-ID must be an event id this stream sent.")
    return int(value)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _sse(note: store.PatientNotification, cursor: int) -> str:
    body = {
        "kind": note.kind,
        "ref": note.ref,
        "status": note.status,
        "text": Notification(NotificationKind(note.kind), note.ref, note.status).text(),
        "at": note.created_at.isoformat(),
    }
    return f"id: {cursor}\nevent: notification\ndata: {json.dumps(body)}\n\n"


def _access_ended() -> str:
    body = {"reason": "The patient's consent for this caregiver was revoked or has ended."}
    return f"event: access-ended\ndata: {json.dumps(body)}\n\n"


@router.get(
    "/me/events",
    response_class=StreamingResponse,
    dependencies=[requires("patient/Patient.r")],
)
async def events(
    caller: Me,
    request: Request,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-Sent Events: new lab results, messages and appointment changes, live.

    Reconnecting with `Last-Event-ID` replays what was missed, so nothing is lost while
    the connection is down.
    """
    service = service_of(request)
    settings: Settings = service.settings  # type: ignore[assignment]
    after = _last_event_id(last_event_id)
    # The running service's hub (its `deps`), which its handlers wake.
    hub = running_deps(service.deps, NotificationHub)

    stream_span = trace.get_current_span()
    opened_at = datetime.now(UTC)

    async def still_granted() -> Grant | None:
        # A caregiver's stream is authorised again at every delivery (and every wake-up):
        # a revoked or ended grant ends the stream at once.
        return await current_grant(service, caller, datetime.now(UTC))

    async def stream() -> AsyncIterator[str]:
        nonlocal after
        waiter = hub.listen(caller.patient_id)
        caregiver = caller.related_person is not None
        floor = after
        # Notes delivered while they could still be overtaken (see `store.LateNotes`).
        delivered: dict[int, datetime] = {}
        try:
            with observability.stream_open():
                yield "retry: 3000\n: connected\n\n"
                while not await request.is_disconnected():
                    waiter.clear()
                    if caregiver and await still_granted() is None:
                        yield _access_ended()
                        return
                    since = datetime.now(UTC) - timedelta(seconds=LATE_NOTE_S)
                    delivered = {i: at for i, at in delivered.items() if at >= since}
                    late = store.LateNotes(floor, since, frozenset(delivered))
                    async with service.db.reads() as session:
                        notes = await store.notifications_since(
                            session, caller.patient_id, after, NOTES_PER_QUERY, late=late
                        )
                    for note in notes:
                        # The cursor (the SSE id a reconnect sends back) never moves back:
                        # a note that committed late is sent under the cursor it arrived at.
                        after = max(after, note.id)
                        delivered[note.id] = _aware(note.created_at)
                        if caregiver:
                            grant = await still_granted()
                            if grant is None:
                                yield _access_ended()
                                return
                            if not grant.covers_notification(note.kind, datetime.now(UTC)):
                                continue  # a part the patient did not share
                        # Every delivery is a disclosure (which record changed, to whom):
                        # recorded before it is sent, as every read is.
                        await audit.record(
                            request, "read", "notification", resource_id=f"{note.kind}/{note.ref}"
                        )
                        yield _sse(note, after)
                        observability.pushed(
                            note.kind,
                            note.traceparent,
                            note.source_time,
                            stream_span,
                            live=_aware(note.created_at) >= opened_at,
                        )
                    if len(notes) == NOTES_PER_QUERY:
                        continue  # more are waiting: the waiter was cleared before the query
                    try:
                        await asyncio.wait_for(waiter.wait(), timeout=settings.sse_keepalive_s)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
        finally:
            hub.forget(caller.patient_id, waiter)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
