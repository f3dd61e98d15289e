"""A patient's caregiver grant becomes a FHIR Consent in the EHR (the sandbox over HTTP),
once whatever the replays, and its revocation makes it inactive (consumer's own path
without a broker, on a real PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from asgi_lifespan import LifespanManager

from contracts.consent import CaregiverPart, ConsentGrantedV1, ConsentRevokedV1
from ehr_connector.app import build
from ehr_connector.outbound.service.consents import CONSENT_ID, PART_SYSTEM
from ehr_connector.settings import Settings
from ehr_sandbox.testing.http import RunningSandbox
from servicekit.testing import broker_less_settings, deliver

from .conftest import T0

pytestmark = [pytest.mark.integration]


async def _consents(ehr: RunningSandbox, consent_id: str) -> list[dict[str, Any]]:
    found = await ehr.admin.get(
        "/fhir/Consent", params={"identifier": f"{CONSENT_ID}|{consent_id}"}
    )
    assert found.status_code == 200, found.text
    return [e["resource"] for e in found.json().get("entry", [])]


async def test_a_grant_is_filed_once_as_a_consent_and_its_revocation_ends_it(
    ehr: RunningSandbox, database_url: str
) -> None:
    put = await ehr.admin.put(
        "/fhir/RelatedPerson/rp-alice-son",
        json={
            "resourceType": "RelatedPerson",
            "id": "rp-alice-son",
            "patient": {"reference": "Patient/demo-alice"},
        },
        headers={"Content-Type": "application/fhir+json"},
    )
    assert put.status_code in (200, 201), put.text
    consent_id = f"cg-{uuid.uuid4().hex[:12]}"
    granted = ConsentGrantedV1(
        consent_id=consent_id,
        patient_id="pat-alice",
        patient_fhir_id="demo-alice",
        related_person_fhir_id="rp-alice-son",
        parts=[CaregiverPart.APPOINTMENTS, CaregiverPart.MESSAGES],
        start=T0,
        end=T0 + timedelta(days=30),
        granted_at=T0,
    )
    revoked = ConsentRevokedV1(
        consent_id=consent_id,
        patient_id="pat-alice",
        patient_fhir_id="demo-alice",
        related_person_fhir_id="rp-alice-son",
        revoked_at=T0 + timedelta(days=2),
    )
    settings = Settings(
        **broker_less_settings(database_url),
        environment="test",
        ehr_base_url=ehr.fhir,
        inbound_enabled=False,
        canary_enabled=False,
        slot_sync_enabled=False,
    )
    minted = await ehr.admin.post(
        "/dev/patient-token", json={"patient": "demo-alice", "related_person": "rp-alice-son"}
    )
    assert minted.status_code == 200, minted.text
    son = {"Authorization": f"Bearer {minted.json()['access_token']}"}

    async def son_reads(path: str, **params: str) -> int:
        return (await ehr.admin.get(path, headers=son, params=params)).status_code

    # The EHR itself lets the caregiver read nothing before the Consent is filed.
    assert await son_reads("/fhir/Patient/demo-alice") == 403
    service = build(settings)
    async with LifespanManager(service.app, startup_timeout=60, shutdown_timeout=60):
        assert await deliver(service, granted, subject="pat-alice") == "handled"
        # Another delivery of the same grant (a replay with a new event id) finds it.
        assert await deliver(service, granted, subject="pat-alice") == "handled"
        (consent,) = await _consents(ehr, consent_id)
        assert consent["status"] == "active"
        assert consent["patient"] == {"reference": "Patient/demo-alice"}
        provision = consent["provision"]
        assert provision["type"] == "permit"
        assert provision["actor"][0]["reference"] == {"reference": "RelatedPerson/rp-alice-son"}
        assert provision["actor"][0]["role"]["coding"][0]["code"] == "PRCP"
        parts = {c["code"] for c in provision["class"] if c["system"] == PART_SYSTEM}
        assert parts == {"appointments", "messages"}
        types = {c["code"] for c in provision["class"] if c["system"] != PART_SYSTEM}
        assert "DiagnosticReport" not in types and "Communication" in types
        by_actor = await ehr.admin.get(
            "/fhir/Consent",
            params={"patient": "demo-alice", "actor": "RelatedPerson/rp-alice-son"},
        )
        assert consent["id"] in {e["resource"]["id"] for e in by_actor.json()["entry"]}
        # Filed: the EHR lets him read what was granted, and only that.
        assert await son_reads("/fhir/Patient/demo-alice") == 200
        assert await son_reads("/fhir/Appointment", patient="demo-alice") == 200
        assert await son_reads("/fhir/DiagnosticReport", patient="demo-alice") == 403

        assert await deliver(service, revoked, subject="pat-alice") == "handled"
        assert await deliver(service, revoked, subject="pat-alice") == "handled"  # no-op
        (ended,) = await _consents(ehr, consent_id)
        assert ended["status"] == "inactive"
        assert ended["provision"]["period"]["end"] == revoked.revoked_at.isoformat()
        assert ended["meta"]["versionId"] == "2"  # the replayed revocation wrote nothing
        assert await son_reads("/fhir/Patient/demo-alice") == 403
