"""A permanent failure on the way out: the event is dead-lettered at once with the EHR's
reason, that patient's later events wait behind it, other patients' events flow; an
operator's decision releases the waiting ones in order."""

from __future__ import annotations

import pytest

from contracts.appointment import AppointmentCancelledV1, AppointmentStatus
from servicekit.testing import eventually, read_topic

from .conftest import T0, Harness

pytestmark = [pytest.mark.integration]
OPS = {"Authorization": "Bearer dev-ops-token"}


def _cancel(appointment_id: str, patient_id: str, fhir_id: str | None) -> AppointmentCancelledV1:
    return AppointmentCancelledV1(
        appointment_id=appointment_id,
        patient_id=patient_id,
        appointment_fhir_id=fhir_id,
        cancelled_at=T0,
    )


async def test_a_refused_cancel_is_dead_lettered_and_parks_only_that_patient(
    harness: Harness,
) -> None:
    fulfilled = harness.booking("pat-alice", "demo-alice", harness.next_slot())
    later = harness.booking("pat-alice", "demo-alice", harness.next_slot())
    other = harness.booking("pat-bob", "demo-bob", harness.next_slot())

    async with harness.connector() as (_, ops):
        await harness.produce([("pat-alice", fulfilled), ("pat-alice", later), ("pat-bob", other)])
        updates = await harness.updates(
            lambda us: (
                {u.appointment_id for u in us if u.status is AppointmentStatus.BOOKED}
                >= {fulfilled.appointment_id, later.appointment_id, other.appointment_id}
            )
        )
        fhir = {u.appointment_id: u.appointment_fhir_id for u in updates}
        # The visit took place: the clinic marks it fulfilled in the EHR.
        visit = await harness.read(f"Appointment/{fhir[fulfilled.appointment_id]}")
        put = await harness.admin.put(
            f"/fhir/Appointment/{visit['id']}", json={**visit, "status": "fulfilled"}
        )
        assert put.status_code == 200

        await harness.produce(
            [
                (
                    "pat-alice",
                    _cancel(fulfilled.appointment_id, "pat-alice", fhir[fulfilled.appointment_id]),
                ),
                (
                    "pat-alice",
                    _cancel(later.appointment_id, "pat-alice", fhir[later.appointment_id]),
                ),
                ("pat-bob", _cancel(other.appointment_id, "pat-bob", fhir[other.appointment_id])),
                ("pat-carol", _cancel("appt-unknown", "pat-carol", "no-such-appointment")),
            ]
        )

        async def bob_cancelled() -> bool:
            found = await harness.read(f"Appointment/{fhir[other.appointment_id]}")
            return found["status"] == "cancelled"

        await eventually(bob_cancelled, timeout=90)

        async def dead_letters() -> list[dict[str, object]]:
            response = await ops.get("/ops/dead-letters", headers=OPS)
            listed: list[dict[str, object]] = response.json()
            return listed

        async def settled() -> bool:
            letters = await dead_letters()
            alice = [d for d in letters if d["key"] == "pat-alice"]
            return len(letters) == 2 and bool(alice) and alice[0]["parked_behind"] == 1

        await eventually(settled, timeout=90)
        letters = {d["key"]: d for d in await dead_letters()}
        assert letters["pat-alice"]["error_kind"] == "permanent"
        assert letters["pat-alice"]["attempts"] == 1
        assert (
            f"Appointment/{fhir[fulfilled.appointment_id]} is fulfilled in the EHR; "
            "a fulfilled appointment cannot be cancelled (business-rule)"
        ) in str(letters["pat-alice"]["error"])
        # A refusal by the EHR itself carries its OperationOutcome's text.
        assert letters["pat-carol"]["error_kind"] == "permanent"
        assert "EHR answered 404 to read Appointment: " in str(letters["pat-carol"]["error"])

        dlq = await read_topic(
            harness.bootstrap,
            harness.prefix + "appointment.cancelled.dlq",
            until=lambda seen: len(seen) >= 2,
        )
        alice_dlq = next(r for r in dlq if r.key == "pat-alice")
        assert "is fulfilled in the EHR" in alice_dlq.headers["dlq_error"]
        assert alice_dlq.headers["dlq_error_kind"] == "permanent"
        # Alice's later cancel waits behind her dead letter: still booked in the EHR.
        assert (await harness.read(f"Appointment/{fhir[later.appointment_id]}"))[
            "status"
        ] == "booked"

        # The operator accepts that the visit cannot be cancelled: the parked cancel runs.
        released = await ops.post(
            f"/ops/dead-letters/{letters['pat-alice']['id']}/discard", headers=OPS
        )
        assert released.json()["released"] == 1

        async def later_cancelled() -> bool:
            found = await harness.read(f"Appointment/{fhir[later.appointment_id]}")
            return found["status"] == "cancelled"

        await eventually(later_cancelled, timeout=60)
    assert (await harness.read(f"Appointment/{fhir[fulfilled.appointment_id]}"))[
        "status"
    ] == "fulfilled"
    assert (await harness.read(f"Slot/{later.slot_fhir_id}"))["status"] == "free"
