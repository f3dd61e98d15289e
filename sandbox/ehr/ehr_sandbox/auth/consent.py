"""The EHR's own enforcement of a patient's Consent for a caregiver's token.

A caregiver (the token's `fhirUser` is a RelatedPerson, its `patient` the patient they act
for) may read in the patient's compartment only while an active privacy Consent of that
patient permits them (`provision.type` permit, the RelatedPerson among `provision.actor`,
now within `provision.period`), and only the resource types the Consent lists in
`provision.class` (system `http://hl7.org/fhir/resource-types`); the Patient itself is
readable under any such Consent (whose record it is). Without one: 403. This is what a real
EHR does with its Consents; the portal's gateway enforces its own copy of the grant as well
(at once on revocation, while this follows when the connector has filed the change).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request

from ehr_sandbox.fhir.outcomes import FhirError
from ehr_sandbox.search import parse_search

RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
ALWAYS = frozenset({"Patient"})
MAX_CONSENTS = 50


def related_person_of(fhir_user: object) -> str | None:
    """The RelatedPerson id a `fhirUser` claim names, else None."""
    if not isinstance(fhir_user, str):
        return None
    parts = fhir_user.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "RelatedPerson" and parts[-1]:
        return parts[-1]
    return None


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def permits(
    consent: dict[str, Any], related_person: str, resource_type: str, now: datetime
) -> bool:
    """Whether one Consent lets the RelatedPerson read `resource_type` at `now`."""
    if consent.get("status") != "active":
        return False
    provision = consent.get("provision") or {}
    if provision.get("type", "permit") != "permit":
        return False
    actors = provision.get("actor") or []
    wanted = f"RelatedPerson/{related_person}"
    if not any(
        str((a.get("reference") or {}).get("reference", "")).endswith(wanted)
        for a in actors
        if isinstance(a, dict)
    ):
        return False
    period = provision.get("period") or {}
    start, end = _instant(period.get("start")), _instant(period.get("end"))
    if (start is not None and now < start) or (end is not None and now >= end):
        return False
    if resource_type in ALWAYS:
        return True
    return any(
        isinstance(c, dict) and c.get("system") == RESOURCE_TYPES and c.get("code") == resource_type
        for c in provision.get("class") or []
    )


async def check_caregiver_consent(
    request: Request, resource_type: str, patient: str, related_person: str
) -> None:
    """403 unless an active Consent of the patient permits the caregiver this type."""
    store = request.app.state.store
    search = parse_search(
        "Consent",
        [
            ("patient", f"Patient/{patient}"),
            ("actor", f"RelatedPerson/{related_person}"),
            ("status", "active"),
        ],
        fhir_base=request.app.state.settings.fhir_base,
        default_count=MAX_CONSENTS,
        max_count=MAX_CONSENTS,
        strict=True,
    )
    result = await store.search(search)
    now = datetime.now(UTC)
    if any(permits(dict(m.content), related_person, resource_type, now) for m in result.matches):
        return
    raise FhirError(
        403,
        f"No active Consent of Patient/{patient} lets RelatedPerson/{related_person} "
        f"read {resource_type}",
        code="forbidden",
        headers={"WWW-Authenticate": 'Bearer realm="ehr-sandbox", error="insufficient_scope"'},
    )
