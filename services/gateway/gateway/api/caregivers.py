"""The patient's caregivers (`/v1/me/caregivers`): list, grant and revoke proxy access.

A caregiver is a RelatedPerson the EHR records for the patient (a parent of a child, a
family member of an adult). The patient grants one access to chosen parts of the portal
(`results`, `records`, `appointments`, `messages`, `triage`) for a period, and may revoke
it at any time. Only the patient themself may do this (a caregiver's token is refused,
gateway.consent). A minor's grant ends at their 18th birthday at the latest.

The gateway keeps the authoritative copy (`caregiver_grants`): every caregiver request and
every push to a caregiver's stream is checked against it, so a revocation counts from its
commit. In the same transaction it publishes `consent.granted` / `consent.revoked`; the
ehr-connector records the consent in the EHR as a FHIR `Consent` (the only writer to the
EHR). The RelatedPerson is read from the EHR with the patient's own token, as the profile
is: a patient can only name someone the EHR relates to them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Header, HTTPException, Request
from pydantic import AwareDatetime, BaseModel, Field

from contracts.consent import CaregiverPart, ConsentGrantedV1, ConsentRevokedV1
from gateway import audit, store
from gateway.api.access import Caller, Id, Me, grant_of, requires, service_of
from gateway.consent import GrantStatus, grant_end
from gateway.domain import profile_of
from gateway.hub import NotificationHub
from gateway.settings import Settings
from servicekit.app import Service

router = APIRouter(prefix="/v1/me", tags=["caregivers"])
FhirId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
RESOURCE = "Consent"


class GrantIn(BaseModel):
    """Whom to let in, to what, and until when."""

    related_person: FhirId = Field(description="The RelatedPerson's id in the EHR")
    parts: list[CaregiverPart] = Field(min_length=1, max_length=len(CaregiverPart))
    start: AwareDatetime | None = Field(default=None, description="From (default: now)")
    end: AwareDatetime = Field(description="Until (exclusive); at most CAREGIVER_MAX_DAYS")


class GrantOut(BaseModel):
    """One grant, as the patient sees it."""

    id: str
    related_person: str
    parts: list[CaregiverPart]
    start: datetime
    end: datetime
    granted_at: datetime
    revoked_at: datetime | None
    status: GrantStatus


class PersonOut(BaseModel):
    """Someone the EHR records as related to the patient (whom they may grant access)."""

    id: str
    name: str
    relationship: str | None


class CaregiversOut(BaseModel):
    """The patient's grants (newest first) and the people they may grant access to."""

    grants: list[GrantOut]
    related_persons: list[PersonOut]
    warnings: list[str] = Field(default_factory=list)


def _out(row: store.CaregiverGrant, now: datetime) -> GrantOut:
    return GrantOut(
        id=row.id,
        related_person=row.related_person_fhir_id,
        parts=[CaregiverPart(p) for p in row.parts],
        start=row.start,
        end=row.end,
        granted_at=row.granted_at,
        revoked_at=row.revoked_at,
        status=grant_of(row).status(now),
    )


async def _ehr_get(service: Service, authorization: str, path: str, params: Any = None) -> Any:
    """A FHIR read from the EHR with the patient's own token (their compartment only)."""
    settings: Settings = service.settings  # type: ignore[assignment]
    base = (settings.ehr_fhir_url or settings.oidc_issuer.rstrip("/") + "/fhir").rstrip("/")
    http: httpx.AsyncClient = service.state["http"]
    try:
        response = await http.get(
            f"{base}/{path}",
            params=params,
            headers={"Authorization": authorization, "Accept": "application/fhir+json"},
            timeout=settings.ehr_timeout_s,
        )
    except httpx.HTTPError as exc:
        raise HTTPException(503, "The EHR is unavailable; try again.") from exc
    if response.status_code in (403, 404, 410):
        return None
    if response.status_code != 200:
        raise HTTPException(502, f"The EHR answered {response.status_code}.")
    try:
        return response.json()
    except ValueError as exc:
        raise HTTPException(502, "The EHR's answer was not JSON.") from exc


def _relationship(person: dict[str, Any]) -> str | None:
    for concept in person.get("relationship") or []:
        if not isinstance(concept, dict):
            continue
        for coding in concept.get("coding") or []:
            if isinstance(coding, dict) and coding.get("code"):
                return str(coding.get("display") or coding["code"])[:100]
        if concept.get("text"):
            return str(concept["text"])[:100]
    return None


def _name(person: dict[str, Any]) -> str:
    for name in person.get("name") or []:
        if isinstance(name, dict):
            if name.get("text"):
                return str(name["text"])[:200]
            text = " ".join([*name.get("given", []), name.get("family", "")]).strip()
            if text:
                return text[:200]
    return "Unnamed"


def _related_to(person: Any, caller: Caller) -> bool:
    """Whether a RelatedPerson is an active relation of the caller's patient."""
    if not isinstance(person, dict) or person.get("resourceType") != "RelatedPerson":
        return False
    reference = str((person.get("patient") or {}).get("reference", ""))
    return person.get("active") is not False and reference.rsplit("/", 2)[-2:] == [
        "Patient",
        caller.token.patient_fhir_id,
    ]


@router.get(
    "/caregivers",
    response_model=CaregiversOut,
    dependencies=[requires("patient/Consent.s")],
)
async def caregivers(
    caller: Me, request: Request, authorization: Annotated[str, Header()]
) -> CaregiversOut:
    """Who may act for the patient, to what and until when; and whom they could add."""
    service = service_of(request)
    async with service.db.sessions() as session:
        rows = await store.grants_of(session, caller.patient_id)
    warnings: list[str] = []
    people: list[PersonOut] = []
    try:
        bundle = await _ehr_get(
            service,
            authorization,
            "RelatedPerson",
            {"patient": caller.token.patient_fhir_id, "_count": "50"},
        )
    except HTTPException as exc:
        warnings.append(f"The EHR's list of related persons is unavailable: {exc.detail}")
        bundle = None
    for entry in (bundle or {}).get("entry") or []:
        person = entry.get("resource") if isinstance(entry, dict) else None
        if _related_to(person, caller):
            assert isinstance(person, dict)
            people.append(
                PersonOut(
                    id=str(person["id"]), name=_name(person), relationship=_relationship(person)
                )
            )
    await audit.record(request, "read", RESOURCE)
    now = datetime.now(UTC)
    return CaregiversOut(
        grants=[_out(r, now) for r in rows], related_persons=people, warnings=warnings
    )


@router.post(
    "/caregivers",
    response_model=GrantOut,
    status_code=201,
    dependencies=[requires("patient/Consent.c")],
)
async def grant(
    caller: Me, request: Request, body: GrantIn, authorization: Annotated[str, Header()]
) -> GrantOut:
    """Let a caregiver act for the patient in the chosen parts during a period."""
    service = service_of(request)
    settings: Settings = service.settings  # type: ignore[assignment]
    now = datetime.now(UTC)
    start = max(body.start or now, now)
    if body.end <= start:
        raise HTTPException(422, "The grant must end after it starts.")
    if body.end > now + timedelta(days=settings.caregiver_max_days):
        raise HTTPException(
            422, f"A grant may last at most {settings.caregiver_max_days} days; renew it later."
        )
    person = await _ehr_get(
        service, authorization, f"RelatedPerson/{quote(body.related_person, safe='')}"
    )
    if not _related_to(person, caller):
        raise HTTPException(
            422, "The EHR does not record this person as an active relation of the patient."
        )
    patient = await _ehr_get(
        service, authorization, f"Patient/{quote(caller.token.patient_fhir_id, safe='')}"
    )
    birth: date | None = (
        profile_of(patient, now.date()).birth_date if isinstance(patient, dict) else None
    )
    end = grant_end(body.end, birth, now)
    if end <= start:
        raise HTTPException(422, "The patient is of age: a parent's grant has ended.")
    parts = sorted(set(body.parts))
    row = store.CaregiverGrant(
        id=f"cg-{uuid.uuid4().hex[:20]}",
        patient_id=caller.patient_id,
        patient_fhir_id=caller.token.patient_fhir_id,
        related_person_fhir_id=body.related_person,
        parts=[p.value for p in parts],
        start=start,
        end=end,
        granted_at=now,
    )
    async with service.db.transaction() as session:
        await store.lock_caregiver(session, caller.patient_id, body.related_person)
        live = await store.live_grants(session, caller.patient_id, body.related_person, now)
        if live:
            raise HTTPException(
                409,
                f"This caregiver already has a grant ({live[0].id}); revoke it to change it.",
            )
        session.add(row)
        service.outbox.add(
            session,
            ConsentGrantedV1(
                consent_id=row.id,
                patient_id=caller.patient_id,
                patient_fhir_id=caller.token.patient_fhir_id,
                related_person_fhir_id=body.related_person,
                parts=parts,
                start=start,
                end=end,
                granted_at=now,
            ),
            subject=caller.patient_id,
        )
    await audit.record(request, "write", RESOURCE, resource_id=row.id)
    return _out(row, now)


@router.delete(
    "/caregivers/{grant_id}",
    response_model=GrantOut,
    dependencies=[requires("patient/Consent.u")],
)
async def revoke(caller: Me, request: Request, grant_id: Id) -> GrantOut:
    """End a caregiver's access now: their next request and their open streams are
    refused from this commit on. Revoking a revoked grant changes nothing."""
    service = service_of(request)
    now = datetime.now(UTC)
    async with service.db.transaction() as session:
        row = await session.get(store.CaregiverGrant, grant_id, with_for_update=True)
        if row is None or row.patient_id != caller.patient_id:
            await audit.record(request, "write", RESOURCE, outcome="denied")
            raise HTTPException(404, "No such caregiver grant.")
        if row.revoked_at is None:
            row.revoked_at = now
            service.outbox.add(
                session,
                ConsentRevokedV1(
                    consent_id=row.id,
                    patient_id=caller.patient_id,
                    patient_fhir_id=row.patient_fhir_id,
                    related_person_fhir_id=row.related_person_fhir_id,
                    revoked_at=now,
                ),
                subject=caller.patient_id,
            )
    # The caregiver's open streams re-check their grant now and end (the running service's
    # hub, its `deps`: none while it stops, when the streams are ending anyway).
    hub = service.deps
    if isinstance(hub, NotificationHub):
        hub.wake(caller.patient_id)
    await audit.record(request, "write", RESOURCE, resource_id=grant_id)
    return _out(row, now)
