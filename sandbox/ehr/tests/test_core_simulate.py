"""Simulated clinician and lab actions write real resources and fire the change feed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ehr_sandbox.fhir.changes import ResourceChange
from ehr_sandbox.testing import Sandbox


@pytest.fixture
async def changes(seeded: Sandbox) -> AsyncIterator[list[ResourceChange]]:
    seen: list[ResourceChange] = []

    async def listener(change: ResourceChange) -> None:
        seen.append(change)

    unsubscribe = seeded.app.state.change_feed.subscribe(listener)
    yield seen
    unsubscribe()


async def _simulate(
    seeded: Sandbox, action: str, body: dict[str, Any] | None = None
) -> list[dict[str, str]]:
    response = await seeded.client.post(f"/sandbox/simulate/{action}", json=body or {})
    assert response.status_code == 201, response.text
    written: list[dict[str, str]] = response.json()["written"]
    return written


async def _read(seeded: Sandbox, reference: str) -> dict[str, Any]:
    response = await seeded.client.get(f"/fhir/{reference}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_lab_result_files_observations_then_a_final_report(
    seeded: Sandbox, changes: list[ResourceChange]
) -> None:
    written = await _simulate(
        seeded, "lab-result", {"patient": "demo-bob", "panel": "cbc", "abnormal": True}
    )
    types = [w["reference"].split("/")[0] for w in written]
    assert types == ["Observation"] * 5 + ["DiagnosticReport"]
    assert [(c.resource_type, c.interaction) for c in changes] == [(t, "create") for t in types]
    report = await _read(seeded, written[-1]["reference"])
    # Each entry says when its version was written, as the version's own meta does.
    assert written[-1]["lastUpdated"] == report["meta"]["lastUpdated"]
    assert written[-1]["versionId"] == report["meta"]["versionId"]
    assert report["status"] == "final"
    assert report["subject"] == {"reference": "Patient/demo-bob"}
    assert report["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "58410-2",
        "display": "CBC panel - Blood by Automated count",
    }
    assert [r["reference"] for r in report["result"]] == [w["reference"] for w in written[:-1]]
    interpretations = set()
    for ref in report["result"]:
        observation = await _read(seeded, ref["reference"])
        assert observation["code"]["coding"][0]["system"] == "http://loinc.org"
        assert observation["valueQuantity"]["system"] == "http://unitsofmeasure.org"
        assert observation["referenceRange"][0]
        interpretations.add(observation["interpretation"][0]["coding"][0]["code"])
    assert interpretations & {"H", "L"}
    assert report["conclusion"].startswith("Abnormal")
    found = await seeded.search(
        "/fhir/DiagnosticReport",
        patient="demo-bob",
        _include="DiagnosticReport:result",
        status="final",
    )
    assert written[-1]["reference"].split("/")[1] in seeded.ids(found)


async def test_lab_result_defaults_to_a_demo_patient(seeded: Sandbox) -> None:
    written = await _simulate(seeded, "lab-result")
    report = await _read(seeded, written[-1]["reference"])
    assert report["subject"]["reference"] == "Patient/demo-alice"
    assert report["status"] == "final"


async def test_lab_result_amendment(seeded: Sandbox, changes: list[ResourceChange]) -> None:
    written = await _simulate(seeded, "lab-result", {"amend": "alice-a1c-3-dr"})
    assert [w["reference"] for w in written] == [
        "Observation/alice-a1c-3-obs-1",
        "DiagnosticReport/alice-a1c-3-dr",
    ]
    assert [c.interaction for c in changes] == ["update", "update"]
    assert (await _read(seeded, "DiagnosticReport/alice-a1c-3-dr"))["status"] == "amended"
    assert (await _read(seeded, "Observation/alice-a1c-3-obs-1"))["status"] == "amended"


async def test_medication_change_redoses_then_stops(
    seeded: Sandbox, changes: list[ResourceChange]
) -> None:
    body = {"patient": "demo-bob", "medication": "albuterol"}
    written = await _simulate(seeded, "medication-change", {**body, "action": "dose-change"})
    assert [(w["reference"], w["versionId"]) for w in written] == [
        ("MedicationRequest/bob-med-albuterol", "2")
    ]
    assert changes[-1].interaction == "update"
    assert changes[-1].previous is not None
    redosed = await _read(seeded, "MedicationRequest/bob-med-albuterol")
    assert "dose changed" in redosed["dosageInstruction"][0]["text"]
    stopped = await _simulate(seeded, "medication-change", {**body, "action": "stop"})
    assert stopped[0]["versionId"] == "3"
    assert (await _read(seeded, "MedicationRequest/bob-med-albuterol"))["status"] == "stopped"
    # Nothing active left for Bob: the default action starts a new prescription.
    started = await _simulate(seeded, "medication-change", {"patient": "demo-bob"})
    new = await _read(seeded, started[0]["reference"])
    assert new["status"] == "active"
    assert new["intent"] == "order"
    assert (
        new["medicationCodeableConcept"]["coding"][0]["system"]
        == "http://www.nlm.nih.gov/research/umls/rxnorm"
    )
    assert changes[-1].interaction == "create"


async def test_message_reply_threads_on_the_latest_message(
    seeded: Sandbox, changes: list[ResourceChange]
) -> None:
    written = await _simulate(
        seeded, "message-reply", {"patient": "demo-alice", "text": "See you soon."}
    )
    reply = await _read(seeded, written[0]["reference"])
    assert reply["sender"] == {"reference": "Practitioner/dr-adams"}
    assert reply["recipient"] == [{"reference": "Patient/demo-alice"}]
    assert reply["payload"] == [{"contentString": "See you soon."}]
    assert reply["partOf"] == [{"reference": "Communication/alice-msg-1"}]
    assert reply["inResponseTo"][0]["reference"].startswith("Communication/")
    assert [c.resource_type for c in changes] == ["Communication"]
    # A patient with no messages gets a fresh thread.
    fresh = await _simulate(seeded, "message-reply", {"patient": "demo-carol"})
    first = await _read(seeded, fresh[0]["reference"])
    assert "partOf" not in first
    assert "inResponseTo" not in first


async def test_appointment_cancel_frees_the_slot(
    seeded: Sandbox, changes: list[ResourceChange]
) -> None:
    appointment = await _read(seeded, "Appointment/alice-appt-next")
    slot_ref = appointment["slot"][0]["reference"]
    assert (await _read(seeded, slot_ref))["status"] == "busy"
    written = await _simulate(seeded, "appointment-cancel", {"patient": "demo-alice"})
    assert [w["reference"] for w in written] == ["Appointment/alice-appt-next", slot_ref]
    assert [(c.resource_type, c.interaction) for c in changes] == [
        ("Appointment", "update"),
        ("Slot", "update"),
    ]
    cancelled = await _read(seeded, "Appointment/alice-appt-next")
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelationReason"]["coding"][0]["code"] == "prov"
    assert (await _read(seeded, slot_ref))["status"] == "free"
    again = await seeded.client.post(
        "/sandbox/simulate/appointment-cancel", json={"patient": "demo-alice"}
    )
    assert again.status_code == 404
    seeded.outcome(again)


@pytest.mark.parametrize(
    ("action", "body", "status"),
    [
        ("teleport", {}, 404),
        ("lab-result", {"patient": "nobody"}, 404),
        ("lab-result", {"panel": "dna"}, 422),
        ("lab-result", {"surprise": 1}, 422),
        ("message-reply", {"sender": "no-such-doctor"}, 404),
        ("appointment-cancel", {"patient": "demo-carol"}, 404),
        ("medication-change", {"medication_request": "nope"}, 404),
    ],
)
async def test_bad_simulation_requests(
    seeded: Sandbox, action: str, body: dict[str, Any], status: int
) -> None:
    response = await seeded.client.post(f"/sandbox/simulate/{action}", json=body)
    assert response.status_code == status, response.text
    seeded.outcome(response)


async def test_simulation_needs_the_admin_token(seeded: Sandbox) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=seeded.app), base_url="http://test"
    ) as anonymous:
        assert (await anonymous.post("/sandbox/simulate/lab-result")).status_code == 401
        other = {"Authorization": "Bearer someone-else"}
        assert (
            await anonymous.post("/sandbox/simulate/lab-result", headers=other)
        ).status_code == 403
