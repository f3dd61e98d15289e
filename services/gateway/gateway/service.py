"""The gateway's use cases that are more than forwarding: a patient's account.

The first visit of a token's patient links the account: the EHR is asked, with the
patient's own token, whether that Patient exists; then the link and `patient.linked` (so
the connector back-fills the history) are written in one transaction. Routes (`api/`)
turn the refusals into HTTP answers; everything else the gateway does is forwarding a
patient's read or command to the service that owns the data (`api/`).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

import httpx
from sqlalchemy.exc import IntegrityError

from contracts.patient import PatientLinkedV1
from gateway import store
from gateway.caching import Lru
from gateway.settings import Settings
from servicekit.app import Service
from servicekit.logging import get_logger

log = get_logger(__name__)


class LinkRefused(Exception):
    """No account for this token's patient (403): the EHR does not know them, or a
    caregiver's patient has never signed in."""


class EhrUnconfirmed(Exception):
    """The EHR could not be asked about the patient now (503: try again)."""


_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# Patients' links kept in memory (a link never changes once made).
LINKS_CACHED = 100_000


async def confirm_patient_in_ehr(service: Service, raw_token: str, patient_fhir_id: str) -> None:
    """Refuse to link a token whose `patient` the EHR does not know: the EHR is asked
    for `Patient/<id>` with the patient's own token (their compartment), so a token for a
    made-up or deleted patient never gets an account, a `patient.linked` event or a
    back-fill."""
    settings: Settings = service.settings  # type: ignore[assignment]
    if not _FHIR_ID.match(patient_fhir_id):
        raise LinkRefused("The token's patient is not a valid FHIR id.")
    base = (settings.ehr_fhir_url or settings.oidc_issuer.rstrip("/") + "/fhir").rstrip("/")
    http: httpx.AsyncClient = service.state["http"]
    try:
        response = await http.get(
            f"{base}/Patient/{quote(patient_fhir_id, safe='')}",
            headers={"Authorization": f"Bearer {raw_token}", "Accept": "application/fhir+json"},
            timeout=settings.ehr_timeout_s,
        )
    except httpx.HTTPError as exc:
        raise EhrUnconfirmed("The EHR could not confirm the patient; try again.") from exc
    if response.status_code == 200:
        try:
            body = response.json()
        except ValueError:
            body = None
        if (
            isinstance(body, dict)
            and body.get("resourceType") == "Patient"
            and body.get("id") == patient_fhir_id
        ):
            return
    if response.status_code in (200, 401, 403, 404, 410):
        log.warning("gateway.link_refused", status=response.status_code)
        raise LinkRefused("The EHR does not confirm the token's patient.")
    raise EhrUnconfirmed("The EHR could not confirm the patient; try again.")


async def ensure_link(
    service: Service, issuer: str, patient_fhir_id: str, raw_token: str = "", may_link: bool = True
) -> str:
    """The internal id of a token's patient; the first visit links the account (and
    publishes `patient.linked`, so the connector back-fills the history) once the EHR has
    confirmed the patient exists. A link never changes once made, so the ones seen are
    kept in memory (bounded) instead of read on every request."""
    links: Lru[tuple[str, str], str] | None = service.state.get("links")
    if links is None:
        links = service.state["links"] = Lru(LINKS_CACHED)
    known = links.get((issuer, patient_fhir_id))
    if known is not None:
        return known
    async with service.db.reads() as session:
        link = await store.link_for_identity(session, issuer, patient_fhir_id)
    if link is not None:
        links.put((issuer, patient_fhir_id), link.patient_id)
        return link.patient_id
    if not may_link:
        # Only the patient opens their account: a caregiver of a patient who never signed
        # in has no grant either.
        raise LinkRefused("The patient has not given this caregiver access.")
    await confirm_patient_in_ehr(service, raw_token, patient_fhir_id)
    patient_id = f"pat-{uuid.uuid4().hex[:20]}"
    now = datetime.now(UTC)
    try:
        async with service.db.transaction() as session:
            session.add(
                store.PatientLink(
                    patient_id=patient_id,
                    issuer=issuer,
                    patient_fhir_id=patient_fhir_id,
                    linked_at=now,
                )
            )
            service.outbox.add(
                session,
                PatientLinkedV1(
                    patient_id=patient_id, patient_fhir_id=patient_fhir_id, linked_at=now
                ),
                subject=patient_id,
            )
    except IntegrityError:
        # A concurrent first request linked the account: use that link.
        async with service.db.reads() as session:
            link = await store.link_for_identity(session, issuer, patient_fhir_id)
        assert link is not None
        links.put((issuer, patient_fhir_id), link.patient_id)
        return link.patient_id
    links.put((issuer, patient_fhir_id), patient_id)
    log.info("gateway.patient_linked", patient_id=patient_id)
    return patient_id
