"""Outbound end to end: events on the real broker become FHIR writes in the sandbox (over
HTTP), read back over HTTP; replays never write twice; the EHR's answers come back as
`appointment.updated`."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from contracts.appointment import (
    AppointmentCancelledV1,
    AppointmentRescheduledV1,
    AppointmentStatus,
    AppointmentUpdatedV1,
)
from contracts.base import Coding
from contracts.intake import IntakeAnswer, IntakeSubmittedV1
from contracts.message import MessageSentV1
from contracts.triage import TriageCompletedV1, TriageFlag, Urgency
from ehr_connector import store
from ehr_connector.ehr.fhir_client import FhirClient
from ehr_connector.ehr.port import FhirJson, Versioned, WriteResult
from ehr_connector.outbound.domain.identifiers import (
    APPOINTMENT_ID,
    INTAKE_ID,
    MESSAGE_ID,
    TRIAGE_SESSION_ID,
)
from ehr_connector.outbound.domain.tags import has_origin_tag
from ehr_connector.outbound.service.booking import NEW_SLOT_TAKEN
from servicekit.app import Service
from servicekit.testing import eventually

from .conftest import T0, Harness

pytestmark = [pytest.mark.integration]
INTAKE = "http://example.org/fhir/ehr-sandbox/Questionnaire/intake|1"


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _duplicates(consumer: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "consumer_messages_total",
            {"service": "ehr-connector", "consumer": consumer, "outcome": "duplicate"},
        )
        or 0.0
    )


async def _interactions(service: Service, event_type: str, our_id: str) -> list[str]:
    async with service.db.sessions() as session:
        return [w.interaction for w in await store.writes_for(session, event_type, our_id)]


def _for(appointment_id: str, status: AppointmentStatus | None = None) -> Any:
    def found(updates: list[AppointmentUpdatedV1]) -> bool:
        return any(
            u.appointment_id == appointment_id and (status is None or u.status is status)
            for u in updates
        )

    return found


async def test_each_event_type_is_written_once_however_often_it_is_replayed(
    harness: Harness,
) -> None:
    booking = harness.booking("pat-alice", "demo-alice", harness.next_slot())
    intake = IntakeSubmittedV1(
        intake_id=_new_id("intake"),
        appointment_id=booking.appointment_id,
        patient_id="pat-alice",
        questionnaire_canonical=INTAKE,
        answers=[
            IntakeAnswer(link_id="reason", value_string="Knee pain after running"),
            IntakeAnswer(
                link_id="duration",
                value_coding=Coding(system="http://example.org/duration", code="weeks"),
            ),
            IntakeAnswer(link_id="pain", value_integer=4),
            IntakeAnswer(link_id="medications-changed", value_boolean=False),
        ],
        submitted_at=T0,
    )
    thread_id = _new_id("thread")
    first_message = MessageSentV1(
        message_id=_new_id("msg"),
        thread_id=thread_id,
        patient_id="pat-alice",
        recipient_pool="primary",
        subject="Knee",
        body="Should I rest before the visit?",
        sent_at=T0,
    )
    triage = TriageCompletedV1(
        session_id=_new_id("triage"),
        patient_id="pat-alice",
        urgency=Urgency.URGENT,
        summary="Knee swelling for two weeks",
        findings=[Coding(system="http://snomed.info/sct", code="202381003", display="Knee pain")],
        rule_set_version="2026.11",
        recommended_pool="primary",
        completed_at=T0,
        flags=[TriageFlag(id="joint-long", level="amber", text="Swollen joint", evidence=["knee"])],
        patient_text="My knee has been swollen for two weeks",
    )
    consumers = ("book_appointment", "file_intake", "send_message_to_care_team", "file_triage")
    duplicates_before = {c: _duplicates(c) for c in consumers}

    async with harness.connector() as (service, _):
        await harness.remember_patient(service, "pat-alice", "demo-alice")
        # The same event three times (redelivery), then once more as a new event with the
        # same business id (an operator's replay, a re-publish): the inbox absorbs the
        # first kind, the conditional create the second.
        for payload in (booking, triage, first_message):
            event_id = str(uuid.uuid4())
            await harness.produce([("pat-alice", payload)] * 3, event_ids=[event_id] * 3)
            await harness.produce([("pat-alice", payload)])
        await harness.updates(_for(booking.appointment_id, AppointmentStatus.BOOKED))
        event_id = str(uuid.uuid4())
        await harness.produce([("pat-alice", intake)] * 3, event_ids=[event_id] * 3)
        await harness.produce([("pat-alice", intake)])

        async def replays_handled() -> bool:
            logs = [
                await _interactions(service, "appointment.booked", booking.appointment_id),
                await _interactions(service, "intake.submitted", intake.intake_id),
                await _interactions(service, "message.sent", first_message.message_id),
                await _interactions(service, "triage.completed", triage.session_id),
            ]
            dups = [_duplicates(c) - duplicates_before[c] for c in consumers]
            return all("match" in log for log in logs) and all(d >= 2 for d in dups)

        await eventually(replays_handled, timeout=90)
        second_message = first_message.model_copy(
            update={
                "message_id": _new_id("msg"),
                "body": "And ice?",
                "sent_at": T0 + timedelta(minutes=5),
            }
        )
        await harness.produce([("pat-alice", second_message)])

        async def second_filed() -> bool:
            found = await harness.with_identifier(
                "Communication", MESSAGE_ID, second_message.message_id
            )
            return bool(found)

        await eventually(second_filed, timeout=60)
        assert await _interactions(service, "appointment.booked", booking.appointment_id) == [
            "create",
            "update",  # the Slot marked busy
            "match",
        ]

    [appointment] = await harness.with_identifier(
        "Appointment", APPOINTMENT_ID, booking.appointment_id
    )
    assert appointment["status"] == "booked"
    assert has_origin_tag(appointment)
    assert appointment["slot"] == [{"reference": f"Slot/{booking.slot_fhir_id}"}]
    actors = {p["actor"]["reference"] for p in appointment["participant"]}
    assert actors == {"Patient/demo-alice", f"Practitioner/{booking.practitioner_fhir_id}"}
    assert _when(appointment["start"]) == booking.start
    assert appointment["reasonCode"] == [{"text": "Knee pain after running"}]
    slot = await harness.read(f"Slot/{booking.slot_fhir_id}")
    assert slot["status"] == "busy"
    assert has_origin_tag(slot)

    [response] = await harness.with_identifier("QuestionnaireResponse", INTAKE_ID, intake.intake_id)
    assert response["questionnaire"] == INTAKE
    assert response["subject"] == {"reference": "Patient/demo-alice"}
    assert response["extension"][0]["valueReference"] == {
        "reference": f"Appointment/{appointment['id']}"
    }
    assert [i["linkId"] for i in response["item"]] == [
        "reason",
        "duration",
        "pain",
        "medications-changed",
    ]

    [first] = await harness.with_identifier("Communication", MESSAGE_ID, first_message.message_id)
    [second] = await harness.with_identifier("Communication", MESSAGE_ID, second_message.message_id)
    assert first["recipient"] == [{"reference": "CareTeam/care-team-primary"}]
    assert first["sender"] == {"reference": "Patient/demo-alice"}
    assert first["payload"] == [{"contentString": "Should I rest before the visit?"}]
    assert "partOf" not in first
    assert second["partOf"] == [{"reference": f"Communication/{first['id']}"}]

    [filed] = await harness.with_identifier(
        "QuestionnaireResponse", TRIAGE_SESSION_ID, triage.session_id
    )
    [task] = await harness.with_identifier("Task", TRIAGE_SESSION_ID, triage.session_id)
    assert task["priority"] == "asap"
    assert task["status"] == "requested"
    assert task["focus"] == {"reference": f"QuestionnaireResponse/{filed['id']}"}
    assert task["owner"] == {"reference": "CareTeam/care-team-primary"}
    assert task["for"] == {"reference": "Patient/demo-alice"}
    assert 'AMBER flag: Swollen joint ("knee")' in task["description"]
    assert task["description"].endswith('"My knee has been swollen for two weeks"')
    assert all(has_origin_tag(r) for r in (response, first, second, filed, task))

    updates = await harness.updates(_for(booking.appointment_id))
    confirmation = next(u for u in updates if u.appointment_id == booking.appointment_id)
    assert confirmation.appointment_fhir_id == appointment["id"]
    assert confirmation.source is not None and confirmation.source.version_id == "1"
    assert confirmation.slot_fhir_ids == [booking.slot_fhir_id]


async def test_booking_a_busy_slot_is_rejected_with_the_reason(harness: Harness) -> None:
    seeded = await harness.read("Appointment/alice-appt-next")
    busy_slot = await harness.read(seeded["slot"][0]["reference"])
    assert busy_slot["status"] == "busy"
    refused = harness.booking("pat-bob", "demo-bob", busy_slot)
    free = harness.next_slot()
    first = harness.booking("pat-carol", "demo-carol", free)
    second = harness.booking("pat-bob", "demo-bob", free)

    async with harness.connector():
        await harness.produce([("pat-bob", refused)])
        await harness.produce([("pat-carol", first)])
        await harness.updates(_for(first.appointment_id, AppointmentStatus.BOOKED))
        await harness.produce([("pat-bob", second)])
        updates = await harness.updates(
            lambda us: _for(refused.appointment_id)(us) and _for(second.appointment_id)(us)
        )

    by_id = {u.appointment_id: u for u in updates}
    for rejected in (by_id[refused.appointment_id], by_id[second.appointment_id]):
        assert rejected.status is AppointmentStatus.REJECTED
        assert rejected.reason == "The slot is busy in the EHR"
        assert rejected.appointment_fhir_id is None
    assert by_id[second.appointment_id].slot_fhir_ids == [free["id"]]
    assert not await harness.with_identifier("Appointment", APPOINTMENT_ID, refused.appointment_id)
    assert not await harness.with_identifier("Appointment", APPOINTMENT_ID, second.appointment_id)


async def test_reschedule_and_cancel_update_with_if_match_and_move_the_slots(
    harness: Harness,
) -> None:
    first_slot, second_slot, taken_slot = (harness.next_slot() for _ in range(3))
    booking = harness.booking("pat-alice", "demo-alice", first_slot)
    other = harness.booking("pat-bob", "demo-bob", taken_slot)

    async with harness.connector() as (service, _):
        await harness.produce([("pat-alice", booking), ("pat-bob", other)])
        updates = await harness.updates(
            lambda us: _for(booking.appointment_id)(us) and _for(other.appointment_id)(us)
        )
        confirmed = next(u for u in updates if u.appointment_id == booking.appointment_id)
        assert confirmed.source is not None
        fhir_id = confirmed.appointment_fhir_id

        moved = AppointmentRescheduledV1(
            appointment_id=booking.appointment_id,
            patient_id="pat-alice",
            appointment_fhir_id=fhir_id,
            based_on_version=confirmed.source.version_id,
            old_slot_fhir_id=first_slot["id"],
            new_slot_fhir_id=second_slot["id"],
            start=_when(second_slot["start"]),
            end=_when(second_slot["end"]),
            rescheduled_at=T0,
        )
        onto_taken = moved.model_copy(
            update={
                "old_slot_fhir_id": second_slot["id"],
                "new_slot_fhir_id": taken_slot["id"],
                "start": _when(taken_slot["start"]),
                "end": _when(taken_slot["end"]),
            }
        )
        await harness.produce([("pat-alice", moved), ("pat-alice", onto_taken)])

        def reasons(us: list[AppointmentUpdatedV1]) -> list[str | None]:
            return [u.reason for u in us if u.appointment_id == booking.appointment_id]

        updates = await harness.updates(lambda us: NEW_SLOT_TAKEN in reasons(us))
        mine = [u for u in updates if u.appointment_id == booking.appointment_id]
        assert [u.slot_fhir_ids for u in mine] == [
            [first_slot["id"]],
            [second_slot["id"]],
            [second_slot["id"]],  # the taken slot left the appointment where it was
        ]
        assert mine[1].start == _when(second_slot["start"])
        appointment = await harness.read(f"Appointment/{fhir_id}")
        assert appointment["meta"]["versionId"] == "2"
        assert (await harness.read(f"Slot/{first_slot['id']}"))["status"] == "free"
        assert (await harness.read(f"Slot/{second_slot['id']}"))["status"] == "busy"

        cancel = AppointmentCancelledV1(
            appointment_id=booking.appointment_id,
            patient_id="pat-alice",
            appointment_fhir_id=fhir_id,
            based_on_version="2",
            cancelled_at=T0,
        )
        await harness.produce([("pat-alice", cancel)])
        await harness.updates(_for(booking.appointment_id, AppointmentStatus.CANCELLED))
        await harness.produce([("pat-alice", cancel)])  # replayed under a new event id

        async def replay_skipped() -> bool:
            log = await _interactions(service, "appointment.cancelled", booking.appointment_id)
            return log.count("noop") == 1

        await eventually(replay_skipped, timeout=60)

    appointment = await harness.read(f"Appointment/{fhir_id}")
    assert appointment["status"] == "cancelled"
    assert appointment["meta"]["versionId"] == "3"  # the replay wrote nothing
    assert appointment["cancelationReason"]["coding"][0]["code"] == "pat-cpp"
    assert (await harness.read(f"Slot/{second_slot['id']}"))["status"] == "free"
    assert (await harness.read(f"Slot/{taken_slot['id']}"))["status"] == "busy"


async def test_moving_an_appointment_the_clinic_closed_is_refused_with_the_reason(
    harness: Harness,
) -> None:
    first_slot, second_slot = harness.next_slot(), harness.next_slot()
    booking = harness.booking("pat-alice", "demo-alice", first_slot)
    async with harness.connector():
        await harness.produce([("pat-alice", booking)])
        updates = await harness.updates(_for(booking.appointment_id))
        confirmed = next(u for u in updates if u.appointment_id == booking.appointment_id)
        fhir_id = confirmed.appointment_fhir_id
        closed = await harness.read(f"Appointment/{fhir_id}")
        put = await harness.admin.put(
            f"/fhir/Appointment/{fhir_id}", json={**closed, "status": "fulfilled"}
        )
        assert put.status_code == 200
        moved = AppointmentRescheduledV1(
            appointment_id=booking.appointment_id,
            patient_id="pat-alice",
            appointment_fhir_id=fhir_id,
            based_on_version="1",
            old_slot_fhir_id=first_slot["id"],
            new_slot_fhir_id=second_slot["id"],
            start=_when(second_slot["start"]),
            end=_when(second_slot["end"]),
            rescheduled_at=T0,
        )
        await harness.produce([("pat-alice", moved)])
        updates = await harness.updates(
            lambda us: any(u.reason and u.appointment_id == booking.appointment_id for u in us)
        )
        refused = next(u for u in updates if u.reason)
        assert refused.status == AppointmentStatus.FULFILLED
        assert "cannot be rescheduled" in (refused.reason or "")
        assert refused.slot_fhir_ids == [first_slot["id"]]
    assert (await harness.read(f"Slot/{second_slot['id']}"))["status"] == "free"


class ClinicianEditsFirst:
    """An EhrPort that lets a clinician change a resource right before our first update
    of that type (as if both edited the chart at the same moment)."""

    def __init__(self, inner: FhirClient, harness: Harness, resource_type: str) -> None:
        self._inner = inner
        self._harness = harness
        self._resource_type = resource_type
        self.interfered = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def update(self, resource: FhirJson, *, if_match: str | None = None) -> WriteResult:
        if resource["resourceType"] == self._resource_type and not self.interfered:
            self.interfered = True
            await self._interfere(resource)
        return await self._inner.update(resource, if_match=if_match)

    async def _interfere(self, resource: FhirJson) -> None:
        admin = self._harness.admin
        if self._resource_type == "Appointment":
            current = await self._harness.read(f"Appointment/{resource['id']}")
            current["comment"] = "Bring the knee X-ray"
            response = await admin.put(f"/fhir/Appointment/{resource['id']}", json=current)
        else:
            # Another booking for the same slot is written first and takes the slot.
            rival = {
                "resourceType": "Appointment",
                "status": "booked",
                "slot": [{"reference": f"Slot/{resource['id']}"}],
                "start": resource["start"],
                "end": resource["end"],
                "participant": [
                    {"actor": {"reference": "Patient/demo-carol"}, "status": "accepted"}
                ],
            }
            assert (await admin.post("/fhir/Appointment", json=rival)).status_code == 201
            slot = await self._harness.read(f"Slot/{resource['id']}")
            response = await admin.put(
                f"/fhir/Slot/{resource['id']}", json={**slot, "status": "busy"}
            )
        assert response.status_code == 200


async def test_a_concurrent_clinician_edit_is_kept_when_the_cancel_is_reapplied(
    harness: Harness,
) -> None:
    booking = harness.booking("pat-alice", "demo-alice", harness.next_slot())
    wrappers: list[ClinicianEditsFirst] = []

    def wrap(client: FhirClient) -> ClinicianEditsFirst:
        wrappers.append(ClinicianEditsFirst(client, harness, "Appointment"))
        return wrappers[-1]

    async with harness.connector(wrap_ehr=wrap):
        await harness.produce([("pat-alice", booking)])
        updates = await harness.updates(_for(booking.appointment_id, AppointmentStatus.BOOKED))
        fhir_id = updates[-1].appointment_fhir_id
        cancel = AppointmentCancelledV1(
            appointment_id=booking.appointment_id,
            patient_id="pat-alice",
            appointment_fhir_id=fhir_id,
            based_on_version="1",
            cancelled_at=T0,
        )
        await harness.produce([("pat-alice", cancel)])
        updates = await harness.updates(_for(booking.appointment_id, AppointmentStatus.CANCELLED))

    assert wrappers[0].interfered
    appointment = await harness.read(f"Appointment/{fhir_id}")
    # Our If-Match (v1) lost to the clinician's v2; the cancel was re-applied onto v2.
    assert appointment["meta"]["versionId"] == "3"
    assert appointment["status"] == "cancelled"
    assert appointment["comment"] == "Bring the knee X-ray"
    cancelled = next(u for u in updates if u.status is AppointmentStatus.CANCELLED)
    assert cancelled.source is not None and cancelled.source.version_id == "3"


async def test_losing_the_slot_to_a_concurrent_booking_withdraws_ours(harness: Harness) -> None:
    booking = harness.booking("pat-bob", "demo-bob", harness.next_slot())

    async with harness.connector(
        wrap_ehr=lambda client: ClinicianEditsFirst(client, harness, "Slot")
    ):
        await harness.produce([("pat-bob", booking)])
        updates = await harness.updates(_for(booking.appointment_id, AppointmentStatus.REJECTED))

    rejected = next(u for u in updates if u.appointment_id == booking.appointment_id)
    assert rejected.reason == "Another booking took the slot"
    assert rejected.appointment_fhir_id is not None
    ours = await harness.read(f"Appointment/{rejected.appointment_fhir_id}")
    assert ours["status"] == "cancelled"
    holders = await harness.search(
        "Appointment", slot=f"Slot/{booking.slot_fhir_id}", status="booked"
    )
    assert [h["participant"][0]["actor"]["reference"] for h in holders] == ["Patient/demo-carol"]
    assert (await harness.read(f"Slot/{booking.slot_fhir_id}"))["status"] == "busy"


def test_versioned_exposes_what_if_match_needs() -> None:
    versioned = Versioned({"resourceType": "Slot", "id": "s1", "meta": {"versionId": "4"}})
    assert (versioned.reference, versioned.version_id) == ("Slot/s1", "4")
