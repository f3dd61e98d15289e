"""The seed clinic, the dev endpoints, and the health/metrics endpoints."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import delete

from ehr_sandbox.seed import (
    DEMO_PATIENTS,
    OFFICIAL_EXAMPLES,
    SLOT_MINUTES,
    examples_dir,
    seed_clinic,
)
from ehr_sandbox.store.tables import resource_heads, resources, search_index
from ehr_sandbox.testing import Sandbox, running

STABLE_IDS = [
    "Organization/clinic",
    "Organization/clinic-lab",
    "Location/clinic-main",
    "Location/clinic-lab-draw",
    "Practitioner/dr-adams",
    "Practitioner/dr-baker",
    "Practitioner/np-chen",
    "Practitioner/dr-okafor",
    "PractitionerRole/role-dr-adams",
    "CareTeam/care-team-primary",
    "Schedule/sched-dr-adams",
    "Schedule/sched-dr-baker",
    "Schedule/sched-np-chen",
    "Questionnaire/intake",
    "Patient/demo-alice",
    "Patient/demo-bob",
    "Patient/demo-carol",
    "Patient/canary",
    "Patient/pat1",
    "Condition/alice-cond-diabetes",
    "MedicationRequest/alice-med-metformin",
    "AllergyIntolerance/alice-allergy-penicillin",
    "Immunization/alice-imm-flu",
    "DiagnosticReport/alice-a1c-1-dr",
    "Observation/alice-a1c-1-obs-1",
    "DocumentReference/alice-doc-visit-summary",
    "Appointment/alice-appt-past",
    "Encounter/alice-enc-1",
    "Communication/alice-msg-1",
    "Communication/alice-msg-2",
    "MedicationRequest/medrx0306",
]


async def test_seed_has_stable_ids(seeded: Sandbox) -> None:
    for reference in STABLE_IDS:
        response = await seeded.client.get(f"/fhir/{reference}")
        assert response.status_code == 200, reference


async def test_official_examples_are_loaded_verbatim(seeded: Sandbox) -> None:
    directory = examples_dir()
    assert directory is not None
    for name in OFFICIAL_EXAMPLES:
        example = json.loads((directory / name).read_text(encoding="utf-8"))
        stored = (
            await seeded.client.get(f"/fhir/{example['resourceType']}/{example['id']}")
        ).json()
        assert {k: v for k, v in stored.items() if k != "meta"} == example, name


async def test_canary_has_no_history(seeded: Sandbox) -> None:
    everything = await seeded.search("/fhir/Patient/canary/$everything")
    assert seeded.ids(everything) == ["canary"]


async def test_alice_has_a_realistic_history(seeded: Sandbox) -> None:
    a1c = await seeded.search(
        "/fhir/Observation", patient="demo-alice", code="http://loinc.org|4548-4", _sort="-date"
    )
    assert a1c["total"] == 3
    latest = a1c["entry"][0]["resource"]
    assert latest["valueQuantity"]["unit"] == "%"
    assert latest["interpretation"][0]["coding"][0]["code"] == "H"
    assert latest["referenceRange"][0]["high"]["value"] == 5.6
    meds = await seeded.search("/fhir/MedicationRequest", patient="demo-alice", status="active")
    assert meds["total"] >= 2
    assert (await seeded.search("/fhir/Communication", patient="demo-alice"))["total"] >= 2
    assert (await seeded.search("/fhir/Appointment", patient="demo-alice", status="fulfilled"))[
        "total"
    ] == 1


async def test_free_slots_cover_weekdays_during_opening_hours(seeded: Sandbox) -> None:
    now = datetime.now(UTC)
    bundle = await seeded.search(
        "/fhir/Slot",
        schedule="Schedule/sched-np-chen",
        status="free",
        start=f"ge{now.date().isoformat()}",
        _sort="start",
        _count=200,
    )
    assert bundle["total"] > 200  # ~24 per weekday for the next 30 days
    zone = ZoneInfo("America/New_York")
    for entry in bundle["entry"]:
        start = datetime.fromisoformat(entry["resource"]["start"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(entry["resource"]["end"].replace("Z", "+00:00"))
        local = start.astimezone(zone)
        assert end - start == timedelta(minutes=SLOT_MINUTES)
        assert local.weekday() < 5
        assert 9 <= local.hour < 17
        assert start > now


async def test_seed_is_idempotent(tmp_path: Path) -> None:
    async with running(tmp_path, seed=True) as first:
        store = first.app.state.store
        assert await seed_clinic(store) == 0
        before = (await first.search("/fhir/Patient", _summary="count"))["total"]
        await first.client.delete("/fhir/Patient/demo-carol")
    async with running(tmp_path, seed=True) as second:
        after = (await second.search("/fhir/Patient", _summary="count"))["total"]
        assert after == before - 1  # a restart neither duplicates nor resurrects anything
        assert (await second.client.get("/fhir/Patient/demo-carol")).status_code == 410


async def test_a_store_seeded_by_an_older_seed_gets_the_new_demo_resources(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, seed=True) as first:
        # As a store seeded before the demo caregiver existed: it never had that row.
        store = first.app.state.store
        async with store._write_transaction() as conn:
            for table in (search_index, resources, resource_heads):
                await conn.execute(delete(table).where(table.c.res_type == "RelatedPerson"))
        assert (await first.client.get("/fhir/RelatedPerson/demo-alice-son")).status_code == 404
    async with running(tmp_path, seed=True) as second:
        son = await second.client.get("/fhir/RelatedPerson/demo-alice-son")
        assert son.status_code == 200, son.text
        assert son.json()["patient"]["reference"] == "Patient/demo-alice"


async def test_dev_patients(seeded: Sandbox) -> None:
    response = await seeded.client.get("/dev/patients")
    assert response.status_code == 200
    patients = response.json()
    assert [p["id"] for p in patients] == [p.id for p in DEMO_PATIENTS]
    by_id = {p["id"]: p for p in patients}
    assert by_id["demo-alice"] == {
        "id": "demo-alice",
        "name": "Alice May Nakamura",
        "has_history": True,
    }
    assert by_id["demo-carol"]["has_history"] is False
    assert by_id["canary"]["has_history"] is False


async def test_dev_patient_token(seeded: Sandbox) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=seeded.app), base_url="http://test"
    ) as anonymous:
        response = await anonymous.post("/dev/patient-token", json={"patient": "demo-alice"})
        assert response.status_code == 200
        token = response.json()["access_token"]
        assert token.count(".") == 2  # a JWT
        own = await anonymous.get(
            "/fhir/Patient/demo-alice", headers={"Authorization": f"Bearer {token}"}
        )
        assert own.status_code == 200
        unknown = await anonymous.post("/dev/patient-token", json={"patient": "nobody"})
        assert unknown.status_code == 404
        seeded.outcome(unknown)
        assert (await anonymous.post("/dev/patient-token", json={})).status_code == 422
        assert (
            await anonymous.post(
                "/dev/patient-token", content=b"{", headers={"Content-Type": "application/json"}
            )
        ).status_code == 400


async def test_dev_endpoints_are_hidden_outside_dev_mode(tmp_path: Path) -> None:
    async with running(tmp_path, dev_mode=False) as box:
        assert (await box.client.get("/dev/patients")).status_code == 404
        response = await box.client.post("/dev/patient-token", json={"patient": "x"})
        assert response.status_code == 404
        box.outcome(response)


async def test_health_ready_and_metrics(seeded: Sandbox) -> None:
    assert (await seeded.client.get("/healthz")).json() == {"status": "ok"}
    ready = await seeded.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["database"] is True
    await seeded.client.get("/fhir/Patient/demo-alice")
    metrics = await seeded.client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert (
        'ehr_sandbox_http_requests_total{method="GET",route="/fhir/{resource_type}/{resource_id}",status="200"}'
        in text
    )
    assert "demo-alice" not in text  # labels are route templates, never ids
    assert "ehr_sandbox_writes_total" in text
