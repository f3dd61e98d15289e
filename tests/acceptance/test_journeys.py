"""The patient journeys, at volume, on the stack `make up` starts (see `stack.py`).

Each journey records what the system acknowledged and checks at the end that every
notification reached the right patient's stream once, in order per patient and kind, and
that the lists agree. A failure names the journey and what was lost. The table of all
journeys is printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from devstack.postgres import set_connections_allowed

from .checker import Checker, Key, PatientStream, Verdict
from .conftest import record
from .portal import Clinic, Patient
from .stack import GATEWAY, OPS_TOKEN, LocalStack

pytestmark = [
    pytest.mark.acceptance,
    pytest.mark.asyncio(loop_scope="session"),
    # A journey moves hundreds of events through the whole stack (and the first one waits
    # for the stack to start): more than the default per-test limit.
    pytest.mark.timeout(900),
]

PANELS = ("bmp", "cbc", "lipid", "a1c")
# Patients of the volume journey: the demo patients of the sandbox's seed.
VOLUME_PATIENTS = ("demo-alice", "demo-bob", "demo-carol")
DELIVERY_TIMEOUT_S = 180.0
LIST_CATCH_UP_S = 60.0
# RFC 3339 with an offset: every time the APIs give out says which zone it is in.
OFFSET = re.compile(r"(Z|[+-]\d{2}:\d{2})$")


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def patients(clinic: Clinic) -> AsyncIterator[dict[str, Patient]]:
    """The volume journey's patients, signed in, each with an open event stream."""
    signed_in = {p: await Patient.sign_in(clinic, p) for p in VOLUME_PATIENTS}
    for patient in signed_in.values():
        await patient.open_stream()
    yield signed_in
    for patient in signed_in.values():
        await patient.close()


def _streams(patients: dict[str, Patient]) -> dict[str, PatientStream]:
    return {p.id: p.stream for p in patients.values()}


def _finish(checker: Checker, streams: dict[str, PatientStream]) -> Verdict:
    verdict = checker.verify(streams)
    record(verdict.row())
    return verdict


def _key_of(reference: str) -> Key | None:
    """The notification a written EHR resource owes its patient (None: none)."""
    resource_type, _, resource_id = reference.partition("/")
    kind = {
        "DiagnosticReport": "lab-result",
        "MedicationRequest": "medication",
        "Communication": "message",
    }.get(resource_type)
    return (kind, resource_id, None) if kind else None


async def _free_slots(patient: Patient, count: int) -> list[dict[str, Any]]:
    """`count` free slots from two days on (the connector syncs them after it starts)."""
    start = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    slots: list[dict[str, Any]] = []

    async def offered() -> bool:
        nonlocal slots
        slots = (await patient.get("/v1/slots", start=start, limit=max(count, 20)))["items"]
        return len(slots) >= count

    await _until(offered, 120, f"{count} free slots offered")
    for slot in slots[:count]:
        for moment in (slot["start"], slot["end"]):
            assert OFFSET.search(moment), f"slot time without an offset: {moment}"
    return slots[:count]


async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s: {what}")
        await asyncio.sleep(0.5)


async def _book_confirmed(patient: Patient, slot_id: str) -> dict[str, Any]:
    response = await patient.http.post("/v1/me/appointments", json={"slot_id": slot_id})
    assert response.status_code == 201, response.text
    appointment: dict[str, Any] = response.json()

    async def booked() -> bool:
        current = await patient.get(f"/v1/me/appointments/{appointment['id']}")
        return bool(current["status"] == "booked")

    await _until(booked, 120, f"appointment on slot {slot_id} confirmed by the EHR")
    return appointment


async def _ehr_appointment(clinic: Clinic, patient: str, slot_id: str) -> dict[str, Any]:
    found = [
        a
        for a in await clinic.search("Appointment", patient=patient)
        if any(s.get("reference") == f"Slot/{slot_id}" for s in a.get("slot", []))
    ]
    booked = [a for a in found if a.get("status") == "booked"]
    assert len(booked) == 1, f"slot {slot_id}: {len(booked)} booked Appointments in the EHR"
    return booked[0]


async def _clinic_actions(
    clinic: Clinic,
    checker: Checker,
    patient: str,
    plan: list[tuple[str, Any]],
) -> None:
    """Run one patient's clinic actions in sequence, recording what each owes the patient."""
    reports: list[str] = []
    for action, argument in plan:
        if action == "lab":
            panel, abnormal = argument
            written = await clinic.simulate(
                "lab-result", patient=patient, panel=panel, abnormal=abnormal
            )
        elif action == "amend":
            if not reports:
                continue
            written = await clinic.simulate("lab-result", patient=patient, amend=reports[0])
        elif action == "medication":
            written = await clinic.simulate("medication-change", patient=patient)
        elif action == "reply":
            written = await clinic.simulate(
                "message-reply", patient=patient, text=f"Reply {argument} from the care team."
            )
        elif action == "cancel":
            appointment_id, fhir_id = argument
            await clinic.simulate("appointment-cancel", patient=patient, appointment=fhir_id)
            checker.acknowledged(
                patient, ("appointment", appointment_id, "cancelled"), "clinic cancellation"
            )
            continue
        else:  # pragma: no cover - the plan is built below
            raise AssertionError(action)
        for reference in written:
            key = _key_of(reference)
            if key is not None:
                checker.acknowledged(patient, key, action)
                if key[0] == "lab-result" and reference.split("/")[1] not in reports:
                    reports.append(reference.split("/")[1])


def _plan(
    labs: int, amends: int, medications: int, replies: int, cancels: list[tuple[str, str, str]]
) -> dict[str, list[tuple[str, Any]]]:
    """Spread the clinic's actions over the volume patients, shuffled with a fixed seed."""
    rng = random.Random(7)
    plans: dict[str, list[tuple[str, Any]]] = {p: [] for p in VOLUME_PATIENTS}
    for n in range(labs):
        plans[VOLUME_PATIENTS[n % 3]].append(("lab", (PANELS[n % 4], n % 3 == 0)))
    for n in range(medications):
        plans[VOLUME_PATIENTS[n % 3]].append(("medication", n))
    for n in range(replies):
        plans[VOLUME_PATIENTS[n % 3]].append(("reply", n))
    for patient, appointment_id, fhir_id in cancels:
        plans[patient].append(("cancel", (appointment_id, fhir_id)))
    for plan in plans.values():
        rng.shuffle(plan)
    for n in range(amends):
        # Amendments come after their patient's first results.
        plans[VOLUME_PATIENTS[n % 3]].append(("amend", n))
    return plans


async def _appointments_to_cancel(
    clinic: Clinic, patients: dict[str, Patient], count: int
) -> list[tuple[str, str, str]]:
    """Book `count` appointments through the portal and wait for the EHR to confirm them."""
    first = next(iter(patients.values()))
    slots = await _free_slots(first, count)
    booked = []
    for n, slot in enumerate(slots):
        patient = patients[VOLUME_PATIENTS[n % 3]]
        appointment = await _book_confirmed(patient, slot["id"])
        ehr = await _ehr_appointment(clinic, patient.id, slot["id"])
        booked.append((patient.id, appointment["id"], ehr["id"]))
    return booked


async def _volume(
    clinic: Clinic,
    patients: dict[str, Patient],
    name: str,
    *,
    labs: int,
    amends: int,
    medications: int,
    replies: int,
    cancels: int,
    during: Callable[[], Awaitable[None]] | None = None,
) -> Verdict:
    booked = await _appointments_to_cancel(clinic, patients, cancels) if cancels else []
    checker = Checker(name)
    plans = _plan(labs, amends, medications, replies, booked)
    work = [_clinic_actions(clinic, checker, p, plan) for p, plan in plans.items()]
    if during is not None:
        work.append(during())
    await asyncio.gather(*work)
    streams = _streams(patients)
    await checker.wait(streams, DELIVERY_TIMEOUT_S)
    await _lists_agree(patients, checker)
    return _finish(checker, streams)


async def _all_lab_results(patient: Patient) -> list[dict[str, Any]]:
    """Every page of the patient's lab results (newest first)."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = await patient.get(
            "/v1/me/lab-results", limit=100, **({"cursor": cursor} if cursor else {})
        )
        found += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return found


async def _lists_agree(patients: dict[str, Patient], checker: Checker) -> None:
    """Every lab result and medication change is in the patient's list, once."""
    for patient in patients.values():
        wanted = [e.key for e in checker.expected if e.patient == patient.id]
        reports = {k[1] for k in wanted if k[0] == "lab-result"}
        amended = {
            e.key[1] for e in checker.expected if e.patient == patient.id and e.what == "amend"
        }
        if reports:
            # Records and the gateway read `lab.resulted` each on their own (read models are
            # eventually consistent): the notification may come first, so the list gets a
            # bounded while to catch up (records served the burst of journey 6 meanwhile).
            deadline = time.monotonic() + LIST_CATCH_UP_S
            while True:
                results = await _all_lab_results(patient)
                if reports <= {r["id"] for r in results} or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            listed = Counter(r["id"] for r in results)
            for result in results:
                for field in ("effective", "issued"):
                    moment = result.get(field)
                    if moment and not OFFSET.search(moment):
                        checker.problem(f"{patient.id}: {field} without an offset: {moment}")
            stale = sorted(
                r["id"] for r in results if r["id"] in amended and r["status"] != "amended"
            )
            if stale:
                checker.problem(f"{patient.id}: amended results still shown as before: {stale[:5]}")
            missing = sorted(reports - set(listed))
            doubled = sorted(r for r in reports if listed.get(r, 0) > 1)
            if missing or doubled:
                checker.problem(
                    f"{patient.id}: lab list misses {missing[:5]} doubles {doubled[:5]}"
                )
        medications = {k[1] for k in wanted if k[0] == "medication"}
        if medications:
            listed = Counter(m["id"] for m in await patient.get("/v1/me/medications"))
            missing = sorted(medications - set(listed))
            if missing:
                checker.problem(f"{patient.id}: medication list misses {missing[:5]}")


async def test_journey_1_clinic_changes_reach_each_patient_once_in_order(
    clinic: Clinic, patients: dict[str, Patient]
) -> None:
    verdict = await _volume(
        clinic,
        patients,
        "1 clinic changes at volume",
        labs=100,
        amends=6,
        medications=30,
        replies=20,
        # Two bookings each: the clinic's rules allow a few open bookings per patient
        # (MAX_OPEN_BOOKINGS, 3 by default) and the demo patients may have one already.
        cancels=6,
    )
    assert verdict.ok, verdict.explain()


async def test_journey_2_concurrent_bookings_book_each_slot_once(clinic: Clinic) -> None:
    checker = Checker("2 booking race, reschedule, intake, cancel")
    # New patients: each wins two slots (all requests for one slot come from one patient),
    # within the clinic's limit of open bookings per patient.
    ids = [await clinic.new_patient(f"Booker{n}") for n in range(5)]
    people = [await Patient.sign_in(clinic, p) for p in ids]
    try:
        offered = await _free_slots(people[0], 11)
        slots, spare = offered[:10], offered[10]
        requests = [(people[n % 5], slots[n % 10]["id"]) for n in range(30)]

        async def book(patient: Patient, slot_id: str) -> tuple[Patient, str, httpx.Response]:
            response = await patient.http.post("/v1/me/appointments", json={"slot_id": slot_id})
            return patient, slot_id, response

        results = await asyncio.gather(*(book(p, s) for p, s in requests))
        statuses = Counter(r.status_code for _, _, r in results)
        winners = [(p, s, r.json()) for p, s, r in results if r.status_code == 201]
        checker.verdict.acknowledged = len(winners)
        if statuses.get(201) != 10 or statuses.get(409) != 20:
            checker.problem(f"answers {dict(statuses)}: want 10 x 201 and 20 x 409")
        won_slots = Counter(s for _, s, _ in winners)
        doubled = [s for s, n in won_slots.items() if n > 1]
        if doubled:
            checker.problem(f"slots booked twice locally: {doubled}")
        for patient, slot_id, appointment in winners:

            async def confirmed(p: Patient = patient, a: dict[str, Any] = appointment) -> bool:
                current = await p.get(f"/v1/me/appointments/{a['id']}")
                return bool(current["status"] == "booked")

            await _until(confirmed, 120, f"booking of slot {slot_id} confirmed")
            checker.verdict.delivered += 1
        for slot in slots:
            appointments = await clinic.search("Appointment", slot=f"Slot/{slot['id']}")
            holding = [a for a in appointments if a.get("status") in ("booked", "pending")]
            if len(holding) != 1:
                checker.problem(f"slot {slot['id']}: {len(holding)} appointments in the EHR")
            ehr_slot = await clinic.read(f"Slot/{slot['id']}")
            if ehr_slot.get("status") != "busy":
                checker.problem(f"slot {slot['id']} is {ehr_slot.get('status')} in the EHR")
        if winners:
            patient, slot_id, appointment = winners[0]
            new_slot = await _rescheduled(clinic, checker, patient, appointment, slot_id, spare)
            winners[0] = (patient, new_slot, appointment)
            await _intake(checker, patient, appointment)
        # Cancel: the EHR frees the slot.
        for patient, slot_id, appointment in winners:
            response = await patient.http.post(
                f"/v1/me/appointments/{appointment['id']}/cancel", json={}
            )
            if response.status_code != 200:
                checker.problem(f"cancel {appointment['id']}: {response.status_code}")
                continue

            async def freed(s: str = slot_id) -> bool:
                return bool((await clinic.read(f"Slot/{s}")).get("status") == "free")

            await _until(freed, 120, f"slot {slot_id} free again in the EHR after the cancel")
    finally:
        for person in people:
            await person.close()
    verdict = checker.verdict
    record(verdict.row())
    assert verdict.ok, verdict.explain()


async def _rescheduled(
    clinic: Clinic,
    checker: Checker,
    patient: Patient,
    appointment: dict[str, Any],
    old_slot: str,
    spare: dict[str, Any],
) -> str:
    """Move a booked appointment to `spare`: the EHR moves it and frees the old slot."""
    path = f"/v1/me/appointments/{appointment['id']}"
    moving = await patient.http.post(f"{path}/reschedule", json={"slot_id": spare["id"]})
    if moving.status_code != 202:
        checker.problem(f"reschedule: {moving.status_code} {moving.text[:200]}")
        return old_slot

    async def moved() -> bool:
        return bool((await patient.get(path))["slot"] == spare["id"])

    await _until(moved, 120, "the appointment moved to the new slot")
    if (await clinic.read(f"Slot/{old_slot}")).get("status") != "free":
        checker.problem(f"slot {old_slot} not freed in the EHR after the reschedule")
    if (await clinic.read(f"Slot/{spare['id']}")).get("status") != "busy":
        checker.problem(f"slot {spare['id']} not busy in the EHR after the reschedule")
    return str(spare["id"])


async def _intake(checker: Checker, patient: Patient, appointment: dict[str, Any]) -> None:
    """The intake form is validated (422 naming the item), accepted once, then 409."""
    path = f"/v1/me/appointments/{appointment['id']}/intake"
    form = await patient.get(path)
    items = {i["linkId"]: i for i in form["form"]["item"]}
    # Items asked only given other answers (`enableWhen`) are left out with those answers.
    required = [
        link for link, item in items.items() if item.get("required") and not item.get("enableWhen")
    ]
    if not required:
        checker.problem("the intake form has no required item to validate")
        return
    incomplete = await patient.http.post(path, json={"answers": []})
    if incomplete.status_code != 422 or required[0] not in incomplete.text:
        checker.problem(f"incomplete intake: {incomplete.status_code}, not a 422 naming it")
    answers = [_answer(link, items[link]) for link in required]
    sent = await patient.http.post(path, json={"answers": answers})
    if sent.status_code != 202:
        checker.problem(f"intake: {sent.status_code} {sent.text[:200]}")
    again = await patient.http.post(path, json={"answers": answers})
    if again.status_code != 409:
        checker.problem(f"a second intake was answered {again.status_code}, not 409")


def _answer(link_id: str, item: dict[str, Any]) -> dict[str, Any]:
    """A valid answer to one Questionnaire item."""
    kind = item.get("type")
    if kind == "integer":
        return {"link_id": link_id, "value_integer": 1}
    if kind == "boolean":
        return {"link_id": link_id, "value_boolean": False}
    if kind in ("choice", "coding") and item.get("answerOption"):
        coding = item["answerOption"][0].get("valueCoding", {})
        return {
            "link_id": link_id,
            "value_coding": {"system": coding.get("system", ""), "code": coding.get("code")},
        }
    return {"link_id": link_id, "value_string": "Routine check of my knee."}


async def _restart(stack: LocalStack, name: str) -> None:
    """Kill a process of the stack and wait until the supervisor has it ready again."""
    before = stack.restarts(name)
    stack.kill(name)
    deadline = time.monotonic() + 180
    while stack.restarts(name) <= before:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} was not restarted within 180 s")
        await asyncio.sleep(0.2)
    await stack.wait_ready(name)


async def _rotate_keys(stack: LocalStack, checker: Checker) -> None:
    """Rotate the encryption key as an operator would: a new active key in the keys file
    (the mounted Secret), the services restarted, the stored text re-wrapped; nothing
    stored before becomes unreadable."""
    key_id = stack.rotate_encryption_key()
    ops = {"Authorization": f"Bearer {OPS_TOKEN}"}
    for name, port in (("messaging", 8003), ("triage", 8004)):
        await _restart(stack, name)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            before = (await client.get("/ops/encryption", headers=ops)).json()
            if before["active_key_id"] != key_id:
                checker.problem(f"{name} did not take the new key: {before}")
            # Messaging holds this journey's messages under the old key (triage may have
            # nothing stored yet when the journey runs alone).
            if name == "messaging" and not any(before["not_on_active_key"].values()):
                checker.problem(f"{name} has nothing under the old key: {before}")
            run = (await client.post("/ops/encryption/reencrypt", headers=ops)).json()
            if any(run["not_on_active_key"].values()):
                checker.problem(f"{name} left rows on the old key: {run}")


async def test_journey_3_a_conversation_stays_one_thread_on_both_sides(
    clinic: Clinic, patients: dict[str, Patient], stack: LocalStack
) -> None:
    checker = Checker("3 conversation")
    alice = patients["demo-alice"]

    # Her history in the EHR comes in with the back-fill, as a thread of its own.
    async def history() -> bool:
        return any(
            t.get("origin") == "imported" and t["subject"] == "Question about metformin"
            for t in await alice.get("/v1/me/threads")
        )

    await _until(history, 120, "the patient's earlier EHR messages imported as a thread")
    subject = f"Question about metformin {random.randrange(10**6)}"
    started = await alice.http.post(
        "/v1/me/threads", json={"subject": subject, "body": "Can I take it with food?"}
    )
    assert started.status_code == 201, started.text
    thread_id = started.json()["thread"]["id"]
    threads_before = len(await alice.get("/v1/me/threads"))

    async def filed() -> bool:
        sent = await clinic.search("Communication", patient="demo-alice", _sort="-_lastUpdated")
        return any("Can I take it with food?" in str(c.get("payload", "")) for c in sent[:10])

    await _until(filed, 120, "the patient's message filed in the EHR")
    written = await clinic.simulate(
        "message-reply", patient="demo-alice", text="Yes, take it with a meal."
    )
    reply_ref = next(w for w in written if w.startswith("Communication/"))
    checker.acknowledged("demo-alice", ("message", reply_ref.split("/")[1], None), "reply")
    await checker.wait({"demo-alice": alice.stream}, DELIVERY_TIMEOUT_S)
    messages = await alice.get(f"/v1/me/threads/{thread_id}/messages")
    if not any(m["body"] == "Yes, take it with a meal." for m in messages):
        checker.problem("the clinician's reply is not in the patient's thread")
    threads_after = await alice.get("/v1/me/threads")
    if len(threads_after) != threads_before:
        checker.problem(f"threads went from {threads_before} to {len(threads_after)}")
    again = await alice.http.post(
        f"/v1/me/threads/{thread_id}/messages", json={"body": "Thank you, and at night?"}
    )
    assert again.status_code == 201, again.text
    reply = await clinic.read(reply_ref)
    root = (reply.get("partOf") or [{}])[0].get("reference")

    async def threaded() -> bool:
        recent = await clinic.search("Communication", patient="demo-alice", _sort="-_lastUpdated")
        mine = [c for c in recent[:10] if "at night?" in str(c.get("payload", ""))]
        return bool(mine) and any(
            p.get("reference") == root for c in mine for p in c.get("partOf", [])
        )

    try:
        await _until(threaded, 120, "the patient's second message in the same EHR thread")
    except AssertionError as exc:
        checker.problem(str(exc))

    # Emergency language is answered at once, and the message is still filed.
    urgent_text = f"I have crushing chest pain and I cannot breathe ({random.randrange(10**6)})"
    emergency = await alice.http.post(
        f"/v1/me/threads/{thread_id}/messages", json={"body": urgent_text}
    )
    assert emergency.status_code == 201, emergency.text
    check = emergency.json()["emergency_check"]
    if not (check["checked"] and check["emergency"] and check["advice"]):
        checker.problem(f"an emergency message got no emergency advice: {check}")

    async def emergency_filed() -> bool:
        recent = await clinic.search("Communication", patient="demo-alice", _sort="-_lastUpdated")
        return any(urgent_text in str(c.get("payload", "")) for c in recent[:10])

    try:
        await _until(emergency_filed, 120, "the emergency message filed in the EHR")
    except AssertionError as exc:
        checker.problem(str(exc))

    # The encryption key rotates; the conversation reads the same afterwards.
    await _rotate_keys(stack, checker)

    async def readable() -> bool:
        bodies = {m["body"] for m in await alice.get(f"/v1/me/threads/{thread_id}/messages")}
        return {"Can I take it with food?", "Yes, take it with a meal.", urgent_text} <= bodies

    try:
        await _until(readable, 60, "the conversation readable after the key rotation")
    except AssertionError as exc:
        checker.problem(str(exc))
    verdict = _finish(checker, {"demo-alice": alice.stream})
    assert verdict.ok, verdict.explain()


TRIAGE_CASES = (
    ("emergency", "stat", 60, "male", "Crushing pain in my chest spreading down my left arm."),
    ("urgent", "asap", 34, "female", "Burning when I pee and a fever of 38.5 since yesterday."),
)


async def test_journey_4_symptom_checks_reach_the_ehr_as_tasks_with_their_priority(
    clinic: Clinic, patients: dict[str, Patient]
) -> None:
    checker = Checker("4 triage to EHR")
    bob = patients["demo-bob"]
    before = {t["id"] for t in await clinic.search("Task", patient="demo-bob")}
    for urgency, _priority, age, sex, text in TRIAGE_CASES:
        response = await bob.http.post(
            "/v1/me/triage/assess", json={"age": age, "sex": sex, "text": text}
        )
        assert response.status_code == 201, response.text
        checker.verdict.acknowledged += 1
        if response.json()["urgency"] != urgency:
            checker.problem(f"{text!r}: {response.json()['urgency']}, expected {urgency}")

    async def tasks_filed() -> bool:
        tasks = [
            t for t in await clinic.search("Task", patient="demo-bob") if t["id"] not in before
        ]
        return len(tasks) >= len(TRIAGE_CASES)

    await _until(tasks_filed, 120, "the symptom checks filed as Tasks")
    tasks = [t for t in await clinic.search("Task", patient="demo-bob") if t["id"] not in before]
    checker.verdict.delivered = len(tasks)
    priorities = Counter(t.get("priority") for t in tasks)
    wanted = Counter(priority for _, priority, *_ in TRIAGE_CASES)
    if priorities != wanted:
        checker.problem(f"Task priorities {dict(priorities)}, expected {dict(wanted)}")
    verdict = checker.verdict
    record(verdict.row())
    assert verdict.ok, verdict.explain()


async def test_journey_5_every_process_killed_once_loses_and_doubles_nothing(
    clinic: Clinic, patients: dict[str, Patient], stack: LocalStack
) -> None:
    victims = ("records", "gateway", "messaging", "scheduling", "triage", "ehr-connector", "kafka")

    async def chaos() -> None:
        for victim in victims:
            await asyncio.sleep(2.0)
            before = stack.restarts(victim)
            stack.kill(victim)
            deadline = time.monotonic() + 180
            while True:
                if stack.restarts(victim) > before or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.2)
            if victim != "kafka":
                await stack.wait_ready(victim)

    verdict = await _volume(
        clinic,
        patients,
        "5 kill every process",
        labs=60,
        amends=3,
        medications=15,
        replies=10,
        cancels=0,
        during=chaos,
    )
    for victim in victims:
        assert stack.restarts(victim) >= 1, f"{victim} was not restarted by the supervisor"
    assert verdict.ok, verdict.explain()


async def test_journey_6_a_burst_of_readers_leaves_the_gateway_healthy(
    clinic: Clinic, patients: dict[str, Patient]
) -> None:
    tokens = [await p.auth.token() for p in patients.values()]
    statuses: Counter[int | str] = Counter()
    stop_at = time.monotonic() + 15

    async def reader(n: int) -> None:
        headers = {"Authorization": f"Bearer {tokens[n % len(tokens)]}"}
        path = "/v1/me/summary" if n % 2 else "/v1/me/lab-results"
        async with httpx.AsyncClient(base_url=GATEWAY, headers=headers, timeout=10) as client:
            while time.monotonic() < stop_at:
                try:
                    statuses[(await client.get(path)).status_code] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

    await asyncio.gather(*(reader(n) for n in range(100)))
    alice = patients["demo-alice"]
    # After the burst, everything answers again, promptly and completely.
    for path in ("/v1/me", "/v1/me/lab-results", "/v1/me/summary", "/v1/me/medications"):
        response = await alice.fetch(path)
        assert response.status_code == 200, f"{path} after the burst: {response.status_code}"
    verdict = await _volume(
        clinic,
        patients,
        "6 after overload",
        labs=9,
        amends=0,
        medications=3,
        replies=3,
        cancels=0,
    )
    print(f"burst answers: {dict(statuses)}")
    assert verdict.ok, verdict.explain()


async def test_journey_7_a_failing_connector_says_so_and_catches_up(
    clinic: Clinic, patients: dict[str, Patient], stack: LocalStack
) -> None:
    checker = Checker("7 connector database down")
    base = stack.database_url()
    saw_unready = False
    await set_connections_allowed("portal_ehr_connector", base, allowed=False)
    try:
        for n in range(10):
            patient = VOLUME_PATIENTS[n % 3]
            for reference in await clinic.simulate("lab-result", patient=patient, panel="a1c"):
                key = _key_of(reference)
                if key is not None:
                    checker.acknowledged(patient, key, "lab while the connector is down")
        async with httpx.AsyncClient(timeout=5) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not saw_unready:
                try:
                    saw_unready = (
                        await client.get("http://127.0.0.1:8005/readyz")
                    ).status_code != 200
                except httpx.HTTPError:
                    saw_unready = True
                await asyncio.sleep(0.5)
    finally:
        await set_connections_allowed("portal_ehr_connector", base, allowed=True)
    if not saw_unready:
        checker.problem("the connector's /readyz stayed 200 while it could not process")
    streams = _streams(patients)
    await checker.wait(streams, DELIVERY_TIMEOUT_S)
    verdict = _finish(checker, streams)
    assert verdict.ok, verdict.explain()
