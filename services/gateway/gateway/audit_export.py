"""The access log as FHIR R4 `AuditEvent` resources (IHE Basic Audit Log Patterns, BALP).

`GET /ops/audit/export` and `portalctl audit export` hand a patient's (or everyone's)
access-log rows to an auditor or to the EHR's audit repository as one `Bundle` of type
`collection`, one `AuditEvent` per row, oldest first. Each row maps to a BALP pattern:

* a read naming a record (`resource_id`) → `PatientRead` (subtype `read`, action `R`;
  the client is the Destination Role ID, the gateway the Source Role ID, as BALP has it);
* a read of a list or summary → `PatientQuery` (subtype `search-type`, action `E`; the
  client is the Source Role ID) with the query entity (`object-role#24`, base64 query);
* a write → `PatientCreate` (subtype `create`, action `C`); the gateway records a change
  and a new record alike as `write` (booking, cancelling, a message, an intake), so only
  rows recorded as `update` / `delete` map to `PatientUpdate` / `PatientDelete`;
* a refused attempt (`outcome = denied`) keeps its pattern's shape with outcome `4`
  (minor failure) and `outcomeDesc`, and claims no BALP profile (they fix outcome `0`),
  as FHIR's "access denied" guidance has it.

Agents: the user (who the token names: the patient themself as `Patient/<id>`, someone
acting for them as `RelatedPerson/<id>`, with the issuer's subject as identifier;
`IRCP` information recipient for reads, `AUT` author for writes, `requestor = true`), the
client app (the token's `client_id`) and the gateway (server). When the row says on whose
behalf the user acted, the patient entity names that patient. `source.observer` is the
gateway; the trace id, when recorded, is the BALP transaction entity. The client's network
address is not recorded by the gateway, so the client agent has no `network`.
"""

from __future__ import annotations

import base64
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import store

BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
OUTCOME = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
# Identifier systems of this portal's own ids.
CLIENT_SYSTEM = "http://portal.example.org/fhir/sid/oauth-client-id"
TRACE_SYSTEM = "http://portal.example.org/fhir/sid/trace-id"
PORTAL_PATIENT_SYSTEM = "http://portal.example.org/fhir/sid/portal-patient-id"
# Namespace of the fullUrls: a row exports to the same urn:uuid every time.
_NAMESPACE = uuid.UUID("6f1c2d8e-7a41-5b0c-9e55-3c1f0b2a9d47")
# Actors (the row's `actor`) that act for the patient rather than being the patient.
_SELF = frozenset({"self", "patient"})

_PATTERNS: dict[str, tuple[str, str, str, str]] = {
    # action recorded → (BALP profile, restful interaction, AuditEvent.action, user role)
    "read": ("PatientRead", "read", "R", "IRCP"),
    "query": ("PatientQuery", "search-type", "E", "IRCP"),
    "write": ("PatientCreate", "create", "C", "AUT"),
    "create": ("PatientCreate", "create", "C", "AUT"),
    "update": ("PatientUpdate", "update", "U", "AUT"),
    "delete": ("PatientDelete", "delete", "D", "AUT"),
}
_ROLE_DISPLAY = {"IRCP": "information recipient", "AUT": "author"}
_FHIR_TYPES_NOT_RESOURCES = frozenset({"summary"})


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _instant(at: datetime) -> str:
    aware = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return aware.isoformat(timespec="seconds")


def _pattern(row: Any) -> tuple[str, str, str, str]:
    action = str(row.action)
    if action == "read" and not row.resource_id:
        action = "query"
    return _PATTERNS.get(action, _PATTERNS["read"])


def _is_resource_type(name: str) -> bool:
    return name[:1].isupper() and name.isalnum() and name not in _FHIR_TYPES_NOT_RESOURCES


def _user_agent(row: Any, issuer: str, role: str) -> dict[str, Any]:
    who: dict[str, Any] = {}
    acting_for = row.actor not in _SELF
    if row.actor_id:
        who["identifier"] = {"system": issuer, "value": row.actor_id}
        # The patient themself, or a related person (a caregiver, a parent) acting for them.
        who["reference"] = f"{'RelatedPerson' if acting_for else 'Patient'}/{row.actor_id}"
    else:
        who["display"] = str(row.actor)
    agent: dict[str, Any] = {
        "type": {"coding": [_coding(PARTICIPATION, role, _ROLE_DISPLAY[role])]},
        "who": who,
        "requestor": True,
    }
    if acting_for:
        agent["role"] = [
            {"coding": [_coding(PARTICIPATION, "RESP", "responsible party")], "text": row.actor}
        ]
    return agent


def _device_agent(code: str, display: str, who: dict[str, Any], host: str | None) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "type": {"coding": [_coding(DICOM, code, display)]},
        "who": who,
        "requestor": False,
    }
    if host:
        agent["network"] = {"address": host, "type": "1"}  # machine name
    return agent


def audit_event(
    row: Any, *, patient_fhir_id: str | None, issuer: str, observer: str, host: str
) -> dict[str, Any]:
    """One access-log row as a BALP `AuditEvent` (R4)."""
    profile, interaction, action, role = _pattern(row)
    allowed = row.outcome == "allowed"
    query = interaction == "search-type"
    # BALP: for a read the client is the Destination Role ID; for a query or a write the
    # Source Role ID (the DICOM convention it follows).
    client_code, server_code = (
        ("110152", "110153") if interaction == "read" else ("110153", "110152")
    )
    names = {"110152": "Destination Role ID", "110153": "Source Role ID"}
    client_who: dict[str, Any] = (
        {"identifier": {"system": CLIENT_SYSTEM, "value": row.client_id}}
        if row.client_id
        else {"display": "unknown client"}
    )
    server_who = {"identifier": {"system": "urn:ietf:rfc:3986", "value": observer}}
    patient_what: dict[str, Any] = (
        {"reference": f"Patient/{patient_fhir_id}"}
        if patient_fhir_id
        else {"identifier": {"system": PORTAL_PATIENT_SYSTEM, "value": row.patient_id}}
    )
    entities: list[dict[str, Any]] = [
        {
            "what": patient_what,
            "type": _coding(ENTITY_TYPE, "1", "Person"),
            "role": _coding(OBJECT_ROLE, "1", "Patient"),
        }
    ]
    resource = str(row.resource)
    if query:
        asked = f"{resource}?patient={patient_fhir_id or row.patient_id}"
        entities.append(
            {
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "24", "Query"),
                "description": asked,
                "query": base64.b64encode(asked.encode()).decode("ascii"),
            }
        )
    else:
        what: dict[str, Any] = (
            {"reference": f"{resource}/{row.resource_id}"}
            if row.resource_id and _is_resource_type(resource)
            else {"display": resource + (f" {row.resource_id}" if row.resource_id else "")}
        )
        entities.append(
            {
                "what": what,
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
            }
        )
    if row.trace_id:
        entities.append(
            {
                "what": {"identifier": {"system": TRACE_SYSTEM, "value": row.trace_id}},
                "type": _coding(BALP_ENTITY_TYPE, "XrequestId", "X-Request-Id"),
            }
        )
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"gateway-access-{row.id}",
        "type": _coding(AUDIT_EVENT_TYPE, "rest", "Restful Operation"),
        "subtype": [_coding(RESTFUL_INTERACTION, interaction, interaction)],
        "action": action,
        "recorded": _instant(row.at),
        "outcome": "0" if allowed else "4",
        "agent": [
            _user_agent(row, issuer, role),
            _device_agent(client_code, names[client_code], client_who, None),
            _device_agent(server_code, names[server_code], server_who, host),
        ],
        "source": {
            "site": "patient-portal",
            "observer": {"identifier": {"system": "urn:ietf:rfc:3986", "value": observer}},
            "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
        },
        "entity": entities,
    }
    if allowed:
        event["meta"] = {"profile": [BALP + profile]}
    else:
        event["outcomeDesc"] = f"denied: the {row.action} of {resource} was refused"
    return event


async def rows_for(
    session: AsyncSession,
    *,
    patient: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> tuple[list[store.AccessLogEntry], dict[str, str]]:
    """Access-log rows (oldest first) of a patient (portal id or FHIR id) in a period, and
    each portal patient id's FHIR id (from its link)."""
    log = store.AccessLogEntry
    stmt = select(log).order_by(log.id).limit(limit)
    if patient:
        linked = select(store.PatientLink.patient_id).where(
            store.PatientLink.patient_fhir_id == patient
        )
        stmt = stmt.where(or_(log.patient_id == patient, log.patient_id.in_(linked)))
    if since is not None:
        stmt = stmt.where(log.at >= since)
    if until is not None:
        stmt = stmt.where(log.at < until)
    rows = list((await session.execute(stmt)).scalars())
    ids = sorted({r.patient_id for r in rows})
    links: dict[str, str] = {}
    if ids:
        found = await session.execute(
            select(store.PatientLink.patient_id, store.PatientLink.patient_fhir_id).where(
                store.PatientLink.patient_id.in_(ids)
            )
        )
        links = dict(found.tuples().all())
    return rows, links


def bundle(
    rows: Sequence[Any], links: dict[str, str], *, issuer: str, observer: str
) -> dict[str, Any]:
    """The rows as a `Bundle` (type collection) of BALP AuditEvents, oldest first."""
    host = socket.gethostname()
    entries = []
    for row in rows:
        # The FHIR id the token named (on_behalf_of) is the patient the access was for;
        # rows from before it was recorded fall back to the patient's link.
        fhir_id = row.on_behalf_of or links.get(row.patient_id)
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{row.id}:{row.hash}')}",
                "resource": audit_event(
                    row, patient_fhir_id=fhir_id, issuer=issuer, observer=observer, host=host
                ),
            }
        )
    out: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "collection",
        "timestamp": _instant(datetime.now(UTC)),
    }
    if entries:  # FHIR JSON has no empty arrays
        out["entry"] = entries
    return out
