"""The patients' API (`/v1`): every route is scoped to the patient of the bearer token;
no route takes a patient id from the client. Reads are recorded in the access log."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Request, Security
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from opentelemetry import trace
from pydantic import BaseModel, Field

from contracts.consent import CaregiverPart
from gateway import audit, observability, security_events, store
from gateway import service as accounts
from gateway.auth import AuthError, PatientToken, TokenVerifier
from gateway.consent import SUMMARY_PARTS, Access, Grant, related_person_of, route_access
from gateway.domain import Notification, NotificationKind, profile_of
from gateway.hub import NotificationHub
from gateway.ratelimit import PatientWrites
from gateway.scopes import ScopeError, parse_scope
from gateway.settings import Settings
from gateway.upstream import UpstreamError, Upstreams
from servicekit.app import Service
from servicekit.consumer import running_deps
from servicekit.idempotency import KEY_HEADER
from servicekit.logging import get_logger

router = APIRouter(prefix="/v1", tags=["patient"])
log = get_logger(__name__)
Id = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


@dataclass(frozen=True)
class Caller:
    """The authenticated patient (or a caregiver acting for them)."""

    patient_id: str
    token: PatientToken
    # A caregiver's grant from the patient, read for this request (None for the patient).
    grant: Grant | None = None

    @property
    def related_person(self) -> str | None:
        """The caregiver's RelatedPerson id when the token's user is one (SMART `fhirUser`)."""
        return related_person_of(self.token.fhir_user)

    @property
    def actor(self) -> str:
        """Who is reading: the patient themself, a caregiver, or someone else for them."""
        if self.related_person is not None:
            return "caregiver"
        return "self" if self.token.subject == self.token.patient_fhir_id else "delegate"

    @property
    def actor_id(self) -> str:
        """Who acted, for the access log: `RelatedPerson/<id>` for a caregiver, else the
        token's subject."""
        related = self.related_person
        return f"RelatedPerson/{related}" if related is not None else self.token.subject


def service_of(request: Request) -> Service:
    """The running gateway service of a request."""
    service: Service = request.app.state.service
    return service


def settings_of(request: Request) -> Settings:
    """The running gateway's settings."""
    settings: Settings = service_of(request).settings  # type: ignore[assignment]
    return settings


def upstreams_of(request: Request) -> Upstreams:
    """The clients of the owning services."""
    upstreams: Upstreams = service_of(request).state["upstreams"]
    return upstreams


async def current_patient(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    """Verify the bearer token and resolve the patient it speaks for (once per request:
    the route's scope dependency and its `Me` parameter share the result)."""
    cached: Caller | None = getattr(request.state, "caller", None)
    if cached is not None:
        return cached
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPException(401, "A bearer token is required.", {"WWW-Authenticate": "Bearer"})
    service = service_of(request)
    verifier: TokenVerifier = service.state["verifier"]
    raw = authorization[7:].strip()
    try:
        token = await verifier.verify(raw)
    except AuthError as exc:
        observability.auth_failed(exc.status)
        security_events.count(service, "invalid_token" if exc.status == 401 else "forbidden")
        headers = (
            {"WWW-Authenticate": 'Bearer error="invalid_token"'} if exc.status == 401 else None
        )
        raise HTTPException(exc.status, exc.detail, headers) from exc
    settings: Settings = service.settings  # type: ignore[assignment]
    caregiver = related_person_of(token.fhir_user) is not None
    try:
        patient_id = await accounts.ensure_link(
            service, settings.oidc_issuer, token.patient_fhir_id, raw, may_link=not caregiver
        )
    except accounts.LinkRefused as exc:
        security_events.count(service, "consent_denied" if caregiver else "unknown_patient")
        raise HTTPException(403, str(exc)) from exc
    except accounts.EhrUnconfirmed as exc:
        raise HTTPException(503, str(exc)) from exc
    caller = Caller(patient_id=patient_id, token=token)
    request.state.caller = caller
    if caller.related_person is not None:
        caller = await _caregiver_allowed(request, caller)
        request.state.caller = caller
    return caller


async def current_grant(service: Service, caller: Caller, now: datetime) -> Grant | None:
    """The caregiver's grant from the patient that is active now, read from the database on
    every call (no cache: a revocation counts from its commit). Overlapping grants (one
    starting as another ends) open the union of their parts."""
    related = caller.related_person
    if related is None:
        return None
    async with service.db.sessions() as session:
        rows = await store.live_grants(session, caller.patient_id, related, now)
    active = [g for g in map(grant_of, rows) if g.covers_any(now)]
    if not active:
        return None
    return replace(
        active[0],
        parts=frozenset().union(*(g.parts for g in active)),
        end=max(g.end for g in active),
    )


def grant_of(row: store.CaregiverGrant) -> Grant:
    """The rules' view of a stored grant."""
    return Grant(
        id=row.id,
        related_person=row.related_person_fhir_id,
        parts=frozenset(CaregiverPart(p) for p in row.parts),
        start=row.start,
        end=row.end,
        revoked_at=row.revoked_at,
    )


async def _caregiver_allowed(request: Request, caller: Caller) -> Caller:
    """403 unless the patient's active grant opens this route to the caregiver; the
    refusal is recorded in the access log as the caregiver's."""
    service = service_of(request)
    template = str(getattr(request.scope.get("route"), "path", ""))
    access, part = route_access(template)
    now = datetime.now(UTC)
    grant = await current_grant(service, caller, now) if access is not Access.PATIENT_ONLY else None
    if access is Access.PATIENT_ONLY:
        detail = "Only the patient may do this, not a caregiver."
    elif grant is None:
        detail = "The patient has not given this caregiver access (or it has ended)."
    elif part is not None and not grant.covers(part, now):
        detail = f"The patient has not given this caregiver access to {part.value}."
    else:
        return replace(caller, grant=grant)
    security_events.count(service, "consent_denied")
    await audit.record(
        request,
        "read" if request.method in READ_METHODS else "write",
        _resource_of(request),
        outcome="denied",
    )
    raise HTTPException(403, detail)


Me = Annotated[Caller, Depends(current_patient)]

# Documents the bearer scheme in the OpenAPI document; each route's `security` lists the
# SMART scope it requires (tests/security reads them to prove every route enforces its own).
bearer_scheme = HTTPBearer(
    scheme_name="smart",
    bearerFormat="JWT",
    description="A SMART on FHIR patient access token from the EHR's issuer.",
    auto_error=False,
)


async def _check_scopes(
    security_scopes: SecurityScopes,
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    caller = await current_patient(request, authorization)
    missing = [s for s in security_scopes.scopes if not caller.token.allows(s)]
    if missing:
        security_events.count(service_of(request), "insufficient_scope")
        for scope in missing:
            observability.SCOPE_DENIALS.labels(parse_scope(scope).resource_type).inc()
        await audit.record(
            request,
            "read" if request.method in READ_METHODS else "write",
            parse_scope(missing[0]).resource_type,
            outcome="denied",
        )
        raise HTTPException(
            403,
            f"The token's scopes do not include {' '.join(missing)}.",
            {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{" ".join(missing)}"'},
        )
    if request.method not in READ_METHODS:
        await _limit_writes(request, caller)


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def _limit_writes(request: Request, caller: Caller) -> None:
    """429 with Retry-After once the patient is over their write limit."""
    service = service_of(request)
    writes: PatientWrites | None = service.state.get("patient_writes")
    if writes is None:
        settings: Settings = service.settings  # type: ignore[assignment]
        writes = PatientWrites(
            settings.rate_limit_patient_writes_per_min, settings.rate_limit_patient_write_burst
        )
        service.state["patient_writes"] = writes
    wait = writes.wait(caller.patient_id)
    if wait:
        security_events.count(service, "rate_limited_patient")
        await audit.record(request, "write", _resource_of(request), outcome="denied")
        raise HTTPException(
            429,
            f"Too many changes for this patient; retry after {wait} s.",
            {"Retry-After": str(wait)},
        )


def requires(scope: str) -> Any:
    """Route-level dependency: a valid patient token (401) granting `scope` exactly (403),
    e.g. `dependencies=[requires("patient/Appointment.c")]`."""
    try:
        parse_scope(scope)
    except ScopeError as exc:  # a typo in a route is a start-up error, not an open door
        raise ValueError(f"Route scope {scope!r} is not a SMART scope") from exc
    return Security(_check_scopes, scopes=[scope])


async def _require(request: Request, caller: Caller, resource_type: str) -> None:
    if not caller.token.allows_read(resource_type):
        observability.SCOPE_DENIALS.labels(resource_type).inc()
        await audit.record(request, "read", resource_type, outcome="denied")
        raise HTTPException(403, f"The token's scopes do not allow reading {resource_type}.")


def _resource_of(request: Request) -> str:
    """The resource type a route's scope names (its `security` in the OpenAPI document)."""
    route = request.scope.get("route")
    for dependency in getattr(route, "dependencies", []) or []:
        for scope in getattr(dependency, "scopes", None) or []:
            return parse_scope(scope).resource_type
    return "unknown"


async def _read(
    request: Request,
    caller: Caller,
    resource_type: str,
    service: str,
    path: str,
    params: Any = None,
) -> Any:
    await _require(request, caller, resource_type)
    try:
        data = await upstreams_of(request).get(service, path, params)
    except UpstreamError as exc:
        # By-id paths (`/patients/{me}/<things>/{id}...`); a list answering 404 is not a probe.
        if exc.status == 404 and params is None and path.rstrip("/").count("/") >= 4:
            observability.FOREIGN_ID_READS.labels(resource_type).inc()
            # Someone else's (or no) record: a refused attempt on that id.
            await audit.record(request, "read", resource_type, outcome="denied")
        raise HTTPException(exc.status, f"The {exc.service} service {exc.detail}.") from exc
    await audit.record(request, "read", resource_type)
    return data


async def command(
    request: Request,
    caller: Caller,
    service: str,
    method: str,
    path: str,
    *,
    action: str,
    resource: str,
    json: Any = None,
    params: Any = None,
    key: str | None = None,
) -> JSONResponse:
    """A patient's command, passed to the owning service with the client's
    `Idempotency-Key`; the service's answer comes back as it is (its status, a replay's
    `Idempotent-Replayed`, its problem details) and a success is recorded in the access
    log (a refused attempt on another patient's id, too)."""
    headers = {KEY_HEADER: key} if key else None
    try:
        answer = await upstreams_of(request).forward(
            service, method, path, json=json, params=params, headers=headers
        )
    except UpstreamError as exc:
        raise HTTPException(exc.status, f"The {service} service {exc.detail}.") from exc
    if answer.status < 400:
        body = answer.body if isinstance(answer.body, dict) else {}
        message = body.get("message")
        made = (
            body.get("id")
            or body.get("session_id")
            or (message.get("id") if isinstance(message, dict) else None)
        )
        await audit.record(request, action, resource, resource_id=str(made) if made else None)
    elif answer.status == 404 and request.path_params:
        # Another patient's (or no) record by id: a refused attempt on that id.
        await audit.record(request, action, resource, outcome="denied")
    return answer.response()


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
    parts: dict[str, tuple[str, str, str]] = {
        "lab_results": ("DiagnosticReport", "records", f"/patients/{pid}/lab-results?limit=5"),
        "medications": ("MedicationRequest", "records", f"/patients/{pid}/medications"),
        "allergies": ("AllergyIntolerance", "records", f"/patients/{pid}/allergies"),
        "appointments": ("Appointment", "scheduling", f"/patients/{pid}/appointments"),
        "threads": ("Communication", "messaging", f"/patients/{pid}/threads"),
    }
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

    calls: list[Awaitable[Any]] = [part(svc, path) for _, svc, path in allowed.values()]
    # The summary is recorded whatever its parts bring, so its record is committed while
    # the parts are fetched (the answer still waits for that commit; a failed one is 503).
    results, _ = await asyncio.gather(
        asyncio.gather(*calls, return_exceptions=True),
        audit.record(request, "read", "summary"),
    )
    out: dict[str, Any] = {"patient_id": pid, "warnings": []}
    for name, result in zip(allowed, results, strict=True):
        if isinstance(result, BaseException):
            detail = result.detail if isinstance(result, UpstreamError) else "failed"
            out["warnings"].append({"part": name, "detail": f"{allowed[name][1]} {detail}"})
            out[name] = None
        else:
            # Lab results come a page at a time: the summary shows the newest page's items.
            out[name] = result["items"] if name == "lab_results" else result
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
    async with service_of(request).db.sessions() as session:
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


def _sse(note: store.PatientNotification) -> str:
    body = {
        "kind": note.kind,
        "ref": note.ref,
        "status": note.status,
        "text": Notification(NotificationKind(note.kind), note.ref, note.status).text(),
        "at": note.created_at.isoformat(),
    }
    return f"id: {note.id}\nevent: notification\ndata: {json.dumps(body)}\n\n"


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
        try:
            with observability.stream_open():
                yield "retry: 3000\n: connected\n\n"
                while not await request.is_disconnected():
                    waiter.clear()
                    if caregiver and await still_granted() is None:
                        yield _access_ended()
                        return
                    async with service.db.sessions() as session:
                        notes = await store.notifications_since(session, caller.patient_id, after)
                    for note in notes:
                        after = note.id
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
                        yield _sse(note)
                        observability.pushed(
                            note.kind,
                            note.traceparent,
                            note.source_time,
                            stream_span,
                            live=note.created_at.replace(tzinfo=note.created_at.tzinfo or UTC)
                            >= opened_at,
                        )
                    if notes:
                        continue
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
