"""BALP mapping of access-log rows (pure rules): who acted for whom, each pattern, and the
sandbox's R4 validator accepting the result. The export over HTTP after real accesses is
tests/security/test_audit_export.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ehr_sandbox.fhir.validation import validate_resource
from gateway.audit_export import BALP, audit_event, bundle
from gateway.domain import AccessRecord

AT = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)


def _row(n: int, **fields: Any) -> AccessRecord:
    base: dict[str, Any] = {
        "patient_id": "pat-internal-9",
        "actor": "self",
        "action": "read",
        "resource": "Appointment",
        "at": AT,
        "prev_hash": "0" * 64,
        "hash": f"{n:064x}",
        "chain": 2,
        "actor_id": "pat-9",
        "on_behalf_of": "pat-9",
        "resource_id": "apt-1",
        "client_id": "portal",
        "trace_id": "ab" * 16,
        "id": n,
    }
    return AccessRecord(**(base | fields))


def _event(row: AccessRecord) -> dict[str, Any]:
    return audit_event(
        row, patient_fhir_id=row.on_behalf_of, issuer="http://idp", observer="urn:gw", host="h"
    )


def test_someone_acting_for_the_patient_is_a_related_person_and_the_patient_the_entity() -> None:
    event = _event(_row(1, actor="caregiver", actor_id="rp-7"))
    user = event["agent"][0]
    assert user["who"]["reference"] == "RelatedPerson/rp-7"
    assert user["who"]["identifier"] == {"system": "http://idp", "value": "rp-7"}
    assert user["role"][0]["text"] == "caregiver"
    patient = next(e for e in event["entity"] if e["role"]["code"] == "1")
    assert patient["what"] == {"reference": "Patient/pat-9"}
    validate_resource(event, expected_type="AuditEvent")


def test_each_action_maps_to_its_balp_pattern() -> None:
    cases = {
        ("read", "apt-1"): ("read", "R", "PatientRead", "110152"),
        ("read", None): ("search-type", "E", "PatientQuery", "110153"),
        ("write", "qr-1"): ("create", "C", "PatientCreate", "110153"),
        ("update", "apt-1"): ("update", "U", "PatientUpdate", "110153"),
        ("delete", "apt-1"): ("delete", "D", "PatientDelete", "110153"),
    }
    for (action, resource_id), (subtype, code, profile, client_role) in cases.items():
        event = _event(_row(2, action=action, resource_id=resource_id))
        assert event["subtype"][0]["code"] == subtype
        assert event["action"] == code
        assert event["meta"]["profile"] == [BALP + profile]
        assert event["agent"][1]["type"]["coding"][0]["code"] == client_role
        validate_resource(event, expected_type="AuditEvent")


def test_a_refusal_has_outcome_4_and_claims_no_profile_and_the_bundle_validates() -> None:
    rows = [_row(3), _row(4, outcome="denied", resource_id=None, on_behalf_of=None)]
    out = bundle(rows, {"pat-internal-9": "pat-9"}, issuer="http://idp", observer="urn:gw")
    validate_resource(out, expected_type="Bundle")
    refused = out["entry"][1]["resource"]
    assert refused["outcome"] == "4" and "meta" not in refused
    # No on-behalf-of recorded (older rows): the patient's link names them.
    patient = next(e for e in refused["entity"] if e["role"]["code"] == "1")
    assert patient["what"] == {"reference": "Patient/pat-9"}
    assert "entry" not in bundle([], {}, issuer="http://idp", observer="urn:gw")
