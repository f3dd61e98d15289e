"""The access log exported as FHIR R4 AuditEvents (IHE Basic Audit Log Patterns): after real
reads, a write and refused attempts through the gateway, `portalctl audit export` (and
`GET /ops/audit/export` under it) gives a Bundle of type collection with every one of the
patient's rows exactly once, each mapped to its BALP pattern, and the sandbox's R4
validator accepts the Bundle and every AuditEvent in it."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from portalctl.cli import parser, run
from sqlalchemy import text

from ehr_sandbox.fhir.validation import validate_resource
from gateway.audit_export import BALP

from .harness import Attack, Stack

pytestmark = [pytest.mark.integration]
OPS = {"Authorization": "Bearer dev-ops-token"}
PATIENT = "sec-balp"


async def _rows(stack: Stack, patient_fhir_id: str) -> list[dict[str, Any]]:
    async with stack.gateway.db.sessions() as session:
        result = await session.execute(
            text("SELECT * FROM access_log WHERE on_behalf_of = :p ORDER BY id"),
            {"p": patient_fhir_id},
        )
        return [dict(r) for r in result.mappings()]


async def _portalctl(stack: Stack, monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str]:
    monkeypatch.setenv("PORTALCTL_GATEWAY_URL", stack.gateway_url)
    monkeypatch.setenv("PORTAL_OPS_TOKEN", "dev-ops-token")
    out, err = io.StringIO(), io.StringIO()
    code = await run(parser().parse_args(list(argv)), out, err)
    return code, out.getvalue() + err.getvalue()


def _entity(event: dict[str, Any], role: str) -> dict[str, Any] | None:
    return next((e for e in event["entity"] if e.get("role", {}).get("code") == role), None)


async def test_export_has_every_access_once_as_balp_audit_events_that_validate(
    stack: Stack, attack: Attack, monkeypatch: pytest.MonkeyPatch
) -> None:
    since = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    token = await stack.linked_token(PATIENT)
    narrow = (await stack.tokens(PATIENT, "patient/QuestionnaireResponse.c"))["access_token"]
    other = await stack.linked_token("sec-balp-other")
    symptoms = {"age": 39, "sex": "male", "text": "A dry cough for three days"}
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        full = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/v1/me/appointments", headers=full)).status_code == 200
        wrote = await client.post("/v1/me/triage/assess", json=symptoms, headers=full)
        assert wrote.status_code == 201, wrote.text
        refused = await client.get(
            "/v1/me/appointments", headers={"Authorization": f"Bearer {narrow}"}
        )
        assert refused.status_code == 403
        await client.get("/v1/me/appointments/apt-not-mine", headers=full)
        assert (await client.get("/v1/me/access-log", headers=full)).status_code == 200
        # Someone else's reads are not in this patient's export.
        other_read = await client.get(
            "/v1/me/appointments", headers={"Authorization": f"Bearer {other}"}
        )
        assert other_read.status_code == 200
        # The route itself: the ops token, and times with an offset.
        params = {"patient": PATIENT}
        assert (await client.get("/ops/audit/export", params=params)).status_code == 401
        naive = await client.get(
            "/ops/audit/export", params={"since": "2026-12-01T00:00:00"}, headers=OPS
        )
        assert naive.status_code == 422

    code, output = await _portalctl(
        stack, monkeypatch, "audit", "export", "--patient", PATIENT, "--since", since.isoformat()
    )
    assert code == 0, output
    bundle = json.loads(output)
    rows = await _rows(stack, PATIENT)
    events = [e["resource"] for e in bundle["entry"]]
    attack(
        "export the access log as FHIR AuditEvents after reads, a write and refusals",
        "every row once, BALP patterns, valid R4",
        f"{len(rows)} rows, {len(events)} AuditEvents",
    )

    # Valid FHIR R4 (the sandbox's validator: the R4B models), the Bundle and each event.
    validate_resource(bundle, expected_type="Bundle")
    for event in events:
        validate_resource(event, expected_type="AuditEvent")
    assert bundle["type"] == "collection"
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls)

    # Every row of the patient's, exactly once, in order; nobody else's.
    assert [e["id"] for e in events] == [f"gateway-access-{r['id']}" for r in rows]
    assert len(rows) >= 5
    for event, row in zip(events, rows, strict=True):
        patient = _entity(event, "1")
        assert patient is not None and patient["what"]["reference"] == f"Patient/{PATIENT}"
        assert event["recorded"].endswith("+00:00")
        user = event["agent"][0]
        assert user["requestor"] is True
        assert user["who"]["reference"] == f"Patient/{PATIENT}"  # the patient themself
        assert user["who"]["identifier"]["value"] == PATIENT
        client_agent = event["agent"][1]
        assert client_agent["who"]["identifier"]["value"] == "portal"
        assert event["source"]["observer"]["identifier"]["value"]
        assert event["source"]["type"][0]["code"] == "4"
        transaction = next(e for e in event["entity"] if e["type"]["code"] == "XrequestId")
        assert transaction["what"]["identifier"]["value"] == row["trace_id"]
        if row["outcome"] == "denied":
            assert event["outcome"] == "4" and "meta" not in event
            assert event["outcomeDesc"].startswith("denied")
        else:
            assert event["outcome"] == "0"

    by_kind = {
        (e["subtype"][0]["code"], e["outcome"], e.get("meta", {}).get("profile", [""])[0])
        for e in events
    }
    assert ("search-type", "0", BALP + "PatientQuery") in by_kind  # the appointments list
    assert ("create", "0", BALP + "PatientCreate") in by_kind  # the symptom check
    assert ("search-type", "4", "") in by_kind  # the list without its scope
    query = next(e for e in events if e["subtype"][0]["code"] == "search-type")
    query_entity = _entity(query, "24")
    assert query_entity is not None and query_entity["query"]
    assert query["action"] == "E"
    created = next(e for e in events if e["subtype"][0]["code"] == "create")
    data = _entity(created, "4")
    assert data is not None and data["what"]["reference"].startswith("QuestionnaireResponse/")
    assert created["action"] == "C"
    assert created["agent"][0]["type"]["coding"][0]["code"] == "AUT"

    # Nothing from before `since`, and the same export twice is the same rows.
    code, again = await _portalctl(
        stack, monkeypatch, "audit", "export", "--patient", PATIENT, "--since", since.isoformat()
    )
    assert [e["resource"]["id"] for e in json.loads(again)["entry"]][: len(events)] == [
        e["id"] for e in events
    ]
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    code, empty = await _portalctl(
        stack, monkeypatch, "audit", "export", "--patient", PATIENT, "--since", later
    )
    assert code == 0
    assert "entry" not in json.loads(empty)  # FHIR JSON has no empty arrays
