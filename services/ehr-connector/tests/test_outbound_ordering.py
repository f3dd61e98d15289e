"""Events that depend on a booking travel on other topics than the booking: an intake or a
cancel sent right after it may be handled first. They wait for the booking (bounded) instead
of spending their retries and being dead-lettered; one whose booking never comes is
dead-lettered saying which booking it waited for. Real broker, the sandbox over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from contracts.appointment import AppointmentCancelledV1, AppointmentStatus
from contracts.intake import IntakeAnswer, IntakeSubmittedV1
from contracts.message import MessageSentV1
from ehr_connector import store
from ehr_connector.ehr.errors import EhrRejected
from ehr_connector.ehr.fhir_client import FhirClient
from ehr_connector.ehr.port import FhirJson, SearchPage, WriteResult
from ehr_connector.outbound.domain.identifiers import APPOINTMENT_ID, INTAKE_ID, MESSAGE_ID
from ehr_connector.outbound.domain.intake import INTAKE_APPOINTMENT
from servicekit.testing import eventually

from .conftest import T0, Harness

pytestmark = [pytest.mark.integration]
OPS = {"Authorization": "Bearer dev-ops-token"}
INTAKE = "http://example.org/fhir/ehr-sandbox/Questionnaire/intake|1"


class BookingAfterItsFollowers:
    """An EhrPort that holds each booking's Appointment create until an event depending on
    that appointment has looked for it in the EHR and not found it: the order in which two
    topics' consumers may run, made certain."""

    def __init__(self, inner: FhirClient, appointment_ids: set[str]) -> None:
        self._inner = inner
        self._missed = {a: asyncio.Event() for a in appointment_ids}
        self.held: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def search(self, resource_type: str, params: Sequence[tuple[str, str]]) -> SearchPage:
        page = await self._inner.search(resource_type, params)
        for name, value in params:
            system, _, our_id = value.rpartition("|")
            missed = name == "identifier" and system == APPOINTMENT_ID and not page.matches
            if missed and our_id in self._missed:
                self._missed[our_id].set()
        return page

    async def create(self, resource: FhirJson, *, if_none_exist: str | None = None) -> WriteResult:
        if resource["resourceType"] == "Appointment":
            our_id = resource["identifier"][0]["value"]
            if our_id in self._missed:
                await asyncio.wait_for(self._missed[our_id].wait(), timeout=60)
                self.held.add(our_id)
        return await self._inner.create(resource, if_none_exist=if_none_exist)


async def test_an_intake_and_a_cancel_sent_right_after_their_booking_wait_for_it(
    harness: Harness,
) -> None:
    for_intake = harness.booking("pat-alice", "demo-alice", harness.next_slot())
    for_cancel = harness.booking("pat-bob", "demo-bob", harness.next_slot())
    intake = IntakeSubmittedV1(
        intake_id=f"intake-{uuid.uuid4().hex[:12]}",
        appointment_id=for_intake.appointment_id,
        patient_id="pat-alice",
        questionnaire_canonical=INTAKE,
        answers=[IntakeAnswer(link_id="reason", value_string="Knee pain after running")],
        submitted_at=T0,
    )
    # Scheduling does not know the EHR id yet: the booking has not come back.
    cancel = AppointmentCancelledV1(
        appointment_id=for_cancel.appointment_id, patient_id="pat-bob", cancelled_at=T0
    )
    wrappers: list[BookingAfterItsFollowers] = []

    def wrap(client: FhirClient) -> BookingAfterItsFollowers:
        ids = {for_intake.appointment_id, for_cancel.appointment_id}
        wrappers.append(BookingAfterItsFollowers(client, ids))
        return wrappers[-1]

    # One attempt per event: waiting for the booking must not depend on the retry budget
    # (it used to be spent in about a second, then the intake was dead-lettered).
    async with harness.connector(wrap_ehr=wrap, consumer_max_attempts=1) as (_, ops):
        await harness.produce(
            [
                ("pat-alice", for_intake),
                ("pat-alice", intake),
                ("pat-bob", for_cancel),
                ("pat-bob", cancel),
            ]
        )
        updates = await harness.updates(
            lambda us: any(
                u.appointment_id == for_cancel.appointment_id
                and u.status is AppointmentStatus.CANCELLED
                for u in us
            )
        )

        async def intake_filed() -> list[dict[str, Any]]:
            return await harness.with_identifier(
                "QuestionnaireResponse", INTAKE_ID, intake.intake_id
            )

        await eventually(intake_filed, timeout=60)
        letters = (await ops.get("/ops/dead-letters", headers=OPS)).json()

    assert wrappers[0].held == {for_intake.appointment_id, for_cancel.appointment_id}
    assert letters == []
    booked = {
        u.appointment_id: u.appointment_fhir_id
        for u in updates
        if u.status is AppointmentStatus.BOOKED
    }
    (response,) = await intake_filed()
    assert {
        "url": INTAKE_APPOINTMENT,
        "valueReference": {"reference": f"Appointment/{booked[for_intake.appointment_id]}"},
    } in response["extension"]
    cancelled = await harness.read(f"Appointment/{booked[for_cancel.appointment_id]}")
    assert cancelled["status"] == "cancelled"
    assert (await harness.read(f"Slot/{for_cancel.slot_fhir_id}"))["status"] == "free"


async def test_an_intake_whose_booking_never_comes_is_dead_lettered_saying_so(
    harness: Harness,
) -> None:
    intake = IntakeSubmittedV1(
        intake_id=f"intake-{uuid.uuid4().hex[:12]}",
        appointment_id=f"appt-{uuid.uuid4().hex[:12]}",
        patient_id="pat-alice",
        questionnaire_canonical=INTAKE,
        answers=[IntakeAnswer(link_id="reason", value_string="Knee pain")],
        submitted_at=T0,
    )
    async with harness.connector(outbound_booking_wait_s=0.5) as (service, ops):
        await harness.remember_patient(service, "pat-alice", "demo-alice")
        await harness.produce([("pat-alice", intake)])

        async def dead_letters() -> list[dict[str, Any]]:
            listed: list[dict[str, Any]] = (await ops.get("/ops/dead-letters", headers=OPS)).json()
            return listed

        await eventually(dead_letters, timeout=60)
        (letter,) = await dead_letters()

    assert letter["key"] == "pat-alice"
    assert letter["error_kind"] == "permanent"
    assert letter["attempts"] == 1
    assert (
        f"appointment {intake.appointment_id} is not in the EHR: its appointment.booked was "
        "not handled within 0.5 s"
    ) in letter["error"]
    assert await harness.with_identifier("QuestionnaireResponse", INTAKE_ID, intake.intake_id) == []


class RefusesAppointment:
    """An EhrPort whose EHR refuses to create one appointment (a 422, as an EHR answers a
    booking it will never take): that booking is dead-lettered."""

    def __init__(self, inner: FhirClient, appointment_id: str) -> None:
        self._inner = inner
        self._refused = appointment_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def create(self, resource: FhirJson, *, if_none_exist: str | None = None) -> WriteResult:
        if resource["resourceType"] == "Appointment" and any(
            i.get("value") == self._refused for i in resource.get("identifier", [])
        ):
            raise EhrRejected(
                "refused", status=422, interaction="create", resource_type="Appointment"
            )
        return await self._inner.create(resource, if_none_exist=if_none_exist)


async def test_an_intake_stops_waiting_when_its_booking_is_dead_lettered(
    harness: Harness,
) -> None:
    booking = harness.booking("pat-carol", "demo-carol", harness.next_slot())
    intake = IntakeSubmittedV1(
        intake_id=f"intake-{uuid.uuid4().hex[:12]}",
        appointment_id=booking.appointment_id,
        patient_id="pat-carol",
        questionnaire_canonical=INTAKE,
        answers=[IntakeAnswer(link_id="reason", value_string="Knee pain")],
        submitted_at=T0,
    )
    # A wait far longer than the test's own deadline: only the dead letter can end it.
    async with harness.connector(
        wrap_ehr=lambda client: RefusesAppointment(client, booking.appointment_id),
        outbound_booking_wait_s=3600,
    ) as (_, ops):
        await harness.produce([("pat-carol", booking), ("pat-carol", intake)])

        async def dead_letters() -> list[dict[str, Any]]:
            listed: list[dict[str, Any]] = (await ops.get("/ops/dead-letters", headers=OPS)).json()
            return listed

        await eventually(lambda: _two(dead_letters), timeout=60)
        letters = {d["consumer"].rsplit(".", 1)[-1]: d for d in await dead_letters()}

    assert letters["book_appointment"]["error_kind"] == "permanent"
    assert (
        f"appointment {booking.appointment_id} is not in the EHR and its booking cannot be "
        "handled: the patient's bookings have an open dead letter"
    ) in letters["file_intake"]["error"]


async def _two(listing: Any) -> bool:
    return len(await listing()) == 2


async def test_a_first_message_handled_before_the_patients_link_waits_for_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after a first sign-in, `message.sent` may be handled before `patient.linked`
    (another topic): the message waits for the link instead of being dead-lettered."""
    message = MessageSentV1(
        message_id=f"msg-{uuid.uuid4().hex[:12]}",
        thread_id=f"thread-{uuid.uuid4().hex[:12]}",
        patient_id="pat-new",
        recipient_pool="primary",
        subject="First question",
        body="Is my referral through?",
        sent_at=T0,
    )
    # The link is made only once the handler has looked for the patient and not found it.
    looked = asyncio.Event()
    lookup = store.patient_fhir_id_of

    async def watched(session: Any, patient_id: str) -> str | None:
        found = await lookup(session, patient_id)
        if patient_id == "pat-new" and found is None:
            looked.set()
        return found

    monkeypatch.setattr(store, "patient_fhir_id_of", watched)
    async with harness.connector(consumer_max_attempts=1) as (service, ops):
        await harness.produce([("pat-new", message)])
        await asyncio.wait_for(looked.wait(), timeout=60)
        await harness.remember_patient(service, "pat-new", "demo-alice")

        async def filed() -> list[dict[str, Any]]:
            return await harness.with_identifier("Communication", MESSAGE_ID, message.message_id)

        await eventually(filed, timeout=60)
        letters = (await ops.get("/ops/dead-letters", headers=OPS)).json()
    assert letters == []
    (communication,) = await filed()
    assert communication["subject"] == {"reference": "Patient/demo-alice"}
