"""Who calls and what they may do: the plumbing every `/v1` route uses.

The caller (`Me`: the patient of the bearer token, or a caregiver acting for them under a
live grant), the SMART scope a route requires (`requires`, checked exactly), the write
limit per patient, and how a read (`_read`) or a command (`command`) is forwarded to the
owning service and recorded in the access log. No route takes a patient id from the client.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Path, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes

from contracts.consent import CaregiverPart
from gateway import audit, observability, security_events, store
from gateway import service as accounts
from gateway.auth import AuthError, PatientToken, TokenVerifier
from gateway.consent import Access, Grant, related_person_of, route_access
from gateway.ratelimit import PatientWrites
from gateway.scopes import ScopeError, parse_scope
from gateway.settings import Settings
from gateway.upstream import UpstreamError, Upstreams
from servicekit.app import Service
from servicekit.idempotency import KEY_HEADER

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
    async with service.db.reads() as session:
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
) -> Response:
    await _require(request, caller, resource_type)
    try:
        data = await upstreams_of(request).get_json_bytes(service, path, params)
    except UpstreamError as exc:
        # By-id paths (`/patients/{me}/<things>/{id}...`); a list answering 404 is not a probe.
        if exc.status == 404 and params is None and path.rstrip("/").count("/") >= 4:
            observability.FOREIGN_ID_READS.labels(resource_type).inc()
            # Someone else's (or no) record: a refused attempt on that id.
            await audit.record(request, "read", resource_type, outcome="denied")
        raise HTTPException(exc.status, f"The {exc.service} service {exc.detail}.") from exc
    await audit.record(request, "read", resource_type)
    # The owning service's JSON as it sent it (the route's declared model documents it).
    return Response(data, media_type="application/json")


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
