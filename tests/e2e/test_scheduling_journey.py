"""A patient's appointments end to end, every boundary real: the EHR sandbox over HTTP, the
ehr-connector (uvicorn), scheduling and the gateway on PostgreSQL and Kafka.

demo-alice signs in: the appointment the clinic already booked for her appears with
clinician and place. She books a slot (a retry replays the answer), thirty requests race
for one slot (one wins, no second booking reaches the EHR), she moves her appointment
(the EHR moves it and frees the old slot), she tries to move it to a time the clinic
blocked meanwhile (the EHR refuses, the appointment keeps its time), and fills in the
intake form the EHR publishes for the visit (draft, resume, validation naming the
question, accepted once).

The connector subscribes to Appointment changes but not to Slot changes here, so
scheduling's slot cache does not learn of the clinic's block before the patient asks:
that is how a refusal by the EHR happens for real (a stale cache), made deterministic.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from devstack.topics import ensure_topics
from ehr_connector.app import build as build_connector
from ehr_connector.outbound.domain.identifiers import INTAKE_ID
from ehr_connector.settings import DEFAULT_INBOUND_TOPICS
from ehr_connector.settings import Settings as ConnectorSettings
from ehr_sandbox.subscriptions.settings import SubscriptionSettings
from ehr_sandbox.testing.http import RunningSandbox, free_port, running_sandbox, serve
from gateway.app import build as build_gateway
from gateway.settings import Settings as GatewaySettings
from scheduling.app import build as build_scheduling
from scheduling.settings import Settings as SchedulingSettings
from servicekit.testing import eventually, isolated_settings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@dataclass
class Portal:
    sandbox: RunningSandbox
    gateway_url: str


@pytest.fixture
async def portal(
    tmp_path: Path,
    database_factory: Callable[[], Awaitable[str]],
    kafka_bootstrap: str,
    unique_prefix: str,
) -> AsyncIterator[Portal]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    db = {name: await database_factory() for name in ("connector", "scheduling", "gateway")}
    subscriptions = SubscriptionSettings(delivery_retry_base_s=0.2, delivery_retry_max_s=2.0)
    async with AsyncExitStack() as stack:
        sandbox = await stack.enter_async_context(
            running_sandbox(tmp_path, port=free_port(), seed=True, subscriptions=subscriptions)
        )
        connector_port = free_port()
        connector = build_connector(
            ConnectorSettings(
                **isolated_settings(db["connector"], kafka_bootstrap, unique_prefix),
                http_port=connector_port,
                ehr_base_url=sandbox.fhir,
                inbound_webhook_url=f"http://127.0.0.1:{connector_port}/fhir/notifications",
                inbound_topics={k: v for k, v in DEFAULT_INBOUND_TOPICS.items() if k != "Slot"},
                canary_enabled=False,
            )
        )
        connector_url = await stack.enter_async_context(serve(connector.app, connector_port))
        scheduling = build_scheduling(
            SchedulingSettings(
                **isolated_settings(db["scheduling"], kafka_bootstrap, unique_prefix),
                ehr_connector_url=connector_url,
            )
        )
        await stack.enter_async_context(
            LifespanManager(scheduling.app, startup_timeout=60, shutdown_timeout=60)
        )
        gateway = build_gateway(
            GatewaySettings(
                **isolated_settings(db["gateway"], kafka_bootstrap, unique_prefix),
                oidc_issuer=sandbox.url,
                scheduling_url="http://scheduling",
                # One patient fires 30 bookings at once to race for a slot: the per-patient
                # write limit (tests/security) would answer some of them 429 instead.
                rate_limit_patient_writes_per_min=0.0,
                # The services share this test's event loop: under CI load a summary part
                # can miss the 1 s default and be left out (its own test:
                # tests/gateway_with_services/test_summary_budget.py).
                summary_part_timeout_s=10.0,
            ),
            mounts={"http://scheduling": httpx.ASGITransport(app=scheduling.app)},
        )
        gateway_url = await stack.enter_async_context(serve(gateway.app, free_port()))
        yield Portal(sandbox=sandbox, gateway_url=gateway_url)


async def _fhir(portal: Portal, path: str, **params: str) -> dict[str, Any]:
    response = await portal.sandbox.admin.get(f"/fhir/{path}", params=params or None)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


async def test_a_patient_books_races_reschedules_and_fills_in_intake(portal: Portal) -> None:
    token_body = (
        await portal.sandbox.admin.post("/dev/patient-token", json={"patient": "demo-alice"})
    ).json()
    async with httpx.AsyncClient(
        base_url=portal.gateway_url,
        headers={"Authorization": f"Bearer {token_body['access_token']}"},
        timeout=60,
    ) as client:
        assert (await client.get("/v1/me")).status_code == 200

        # The visit the clinic already booked in the EHR appears, with clinician and place.
        async def imported() -> dict[str, Any] | None:
            items = (await client.get("/v1/me/appointments")).json()
            return next((a for a in items if a["id"] == "ehr-alice-appt-next"), None)

        await eventually(imported, timeout=120, interval=0.5)
        existing = await imported()
        assert existing is not None
        assert (existing["status"], existing["practitioner_name"]) == ("booked", "Dr. Grace Adams")
        assert existing["location_name"] == "Riverside Family Health - Main Clinic"

        # Far enough ahead for the clinic's 24-hour rule to allow moves whatever the time of
        # day: the EHR's first slots are tomorrow's, under 24 hours away from mid-morning on
        # (a run at 20:54 in the clinic's zone got only those while the cache filled).
        start = (datetime.now(UTC) + timedelta(days=2)).isoformat()
        slots: list[dict[str, Any]] = []

        async def offered() -> bool:
            nonlocal slots
            page = await client.get("/v1/slots", params={"practitioner": "np-chen", "start": start})
            slots = page.json()["items"]
            return len(slots) >= 10

        await eventually(offered, timeout=120, interval=0.5)
        a, b, c, d = (s["id"] for s in slots[-4:])

        # Book; a retry with the same key replays the original answer.
        first = await client.post(
            "/v1/me/appointments", json={"slot_id": a}, headers={"Idempotency-Key": "alice-1"}
        )
        retry = await client.post(
            "/v1/me/appointments", json={"slot_id": a}, headers={"Idempotency-Key": "alice-1"}
        )
        assert (first.status_code, retry.status_code) == (201, 201), first.text
        assert retry.json() == first.json()
        assert retry.headers["Idempotent-Replayed"] == "true"
        appointment = first.json()["id"]
        path = f"/v1/me/appointments/{appointment}"

        async def field(name: str, value: object) -> bool:
            return bool((await client.get(path)).json()[name] == value)

        await eventually(lambda: field("status", "booked"), timeout=90)

        # Thirty requests race for one slot: one booking, the rest 409 before the EHR.
        race = await asyncio.gather(
            *(
                client.post(
                    "/v1/me/appointments", json={"slot_id": b}, headers={"Idempotency-Key": f"r{n}"}
                )
                for n in range(30)
            )
        )
        assert sorted(r.status_code for r in race) == [201] + [409] * 29
        winner = next(r for r in race if r.status_code == 201).json()["id"]

        async def winner_booked() -> bool:
            got = (await client.get(f"/v1/me/appointments/{winner}")).json()
            return bool(got["status"] == "booked")

        await eventually(winner_booked, timeout=90)
        in_ehr = await _fhir(portal, "Appointment", slot=f"Slot/{b}")
        assert [e["resource"]["status"] for e in in_ehr.get("entry", [])] == ["booked"]

        # Move the first appointment: the EHR moves it and frees the old slot.
        moving = await client.post(
            f"{path}/reschedule", json={"slot_id": c}, headers={"Idempotency-Key": "mv-1"}
        )
        assert moving.status_code == 202, moving.text
        assert moving.json()["pending_slot"] == c
        await eventually(lambda: field("slot", c), timeout=90)
        assert (await client.get(path)).json()["pending_slot"] is None
        ehr_id = (await _fhir(portal, "Appointment", slot=f"Slot/{c}"))["entry"][0]["resource"]
        assert ehr_id["status"] == "booked"
        assert (await _fhir(portal, f"Slot/{a}"))["status"] == "free"
        assert (await _fhir(portal, f"Slot/{c}"))["status"] == "busy"

        # The clinic blocks slot d in the EHR; the patient's move there is refused by the EHR
        # and the appointment keeps its time.
        blocked = await _fhir(portal, f"Slot/{d}")
        put = await portal.sandbox.admin.put(
            f"/fhir/Slot/{d}", json={**blocked, "status": "busy-unavailable"}
        )
        assert put.status_code == 200, put.text
        refused = await client.post(f"{path}/reschedule", json={"slot_id": d})
        assert refused.status_code == 202
        await eventually(lambda: field("pending_slot", None), timeout=90)
        kept = (await client.get(path)).json()
        assert (kept["slot"], kept["status"]) == (c, "booked")
        assert "no longer free" in kept["status_reason"]
        current = await _fhir(portal, f"Appointment/{ehr_id['id']}")
        assert current["slot"] == [{"reference": f"Slot/{c}"}]

        # Intake: the EHR's form, a draft resumed, answers validated, accepted once.
        form = (await client.get(f"{path}/intake")).json()
        assert form["status"] == "missing"
        assert form["questionnaire"].endswith("Questionnaire/intake|1")
        assert {i["linkId"] for i in form["form"]["item"]} >= {"reason", "pain"}
        draft = await client.put(
            f"{path}/intake/draft", json={"answers": [{"link_id": "pain", "value_integer": 3}]}
        )
        assert draft.status_code == 200, draft.text
        resumed = (await client.get(f"{path}/intake")).json()
        assert (resumed["status"], resumed["answers"]) == (
            "draft",
            [{"link_id": "pain", "value_integer": 3}],
        )
        missing = await client.post(
            f"{path}/intake", json={"answers": [{"link_id": "pain", "value_integer": 3}]}
        )
        wrong_type = await client.post(
            f"{path}/intake",
            json={
                "answers": [
                    {"link_id": "reason", "value_string": "Knee pain"},
                    {"link_id": "pain", "value_string": "a lot"},
                ]
            },
        )
        unknown = await client.post(
            f"{path}/intake",
            json={
                "answers": [
                    {"link_id": "reason", "value_string": "Knee pain"},
                    {"link_id": "smoker", "value_boolean": True},
                ]
            },
        )
        bad_option = await client.post(
            f"{path}/intake",
            json={
                "answers": [
                    {"link_id": "reason", "value_string": "Knee pain"},
                    {"link_id": "duration", "value_coding": {"system": "x", "code": "years"}},
                ]
            },
        )
        # An empty answer is refused here, at the API: accepted, it would dead-letter in
        # the connector and park the patient's later, valid intake (issue 13).
        empty = await client.post(
            f"{path}/intake",
            json={
                "answers": [
                    {"link_id": "reason", "value_string": "   "},
                    {"link_id": "pain", "value_integer": 3},
                ]
            },
        )
        for answer, item in (
            (empty, "reason"),
            (missing, "reason"),
            (wrong_type, "pain"),
            (unknown, "smoker"),
            (bad_option, "duration"),
        ):
            assert answer.status_code == 422, answer.text
            assert answer.headers["content-type"] == "application/problem+json"
            assert f"'{item}'" in answer.json()["detail"]
            assert answer.json()["items"][0]["link_id"] == item
        good = {
            "answers": [
                {"link_id": "reason", "value_string": "Knee pain after running"},
                {"link_id": "pain", "value_integer": 3},
                {"link_id": "duration", "value_coding": {"system": "", "code": "weeks"}},
            ]
        }
        sent = await client.post(f"{path}/intake", json=good, headers={"Idempotency-Key": "in-1"})
        again = await client.post(f"{path}/intake", json=good, headers={"Idempotency-Key": "in-1"})
        later = await client.post(f"{path}/intake", json=good, headers={"Idempotency-Key": "in-2"})
        assert (sent.status_code, again.status_code, later.status_code) == (202, 202, 409)
        assert again.json() == sent.json()
        assert (await client.get(path)).json()["intake"] == "submitted"

        # Exactly one QuestionnaireResponse reaches the EHR.
        assert (await client.get(f"{path}/intake")).json()["status"] == "submitted"
        summary = (await client.get("/v1/me/summary")).json()
        mine = next(x for x in summary["appointments"] if x["id"] == appointment)
        assert mine["intake"] == "submitted"

        async def filed() -> int:
            found = await _fhir(portal, "QuestionnaireResponse", patient="demo-alice")
            return sum(
                1
                for e in found.get("entry", [])
                if any(i.get("system") == INTAKE_ID for i in _identifiers(e["resource"]))
            )

        await eventually(filed, timeout=90)
        assert await filed() == 1
        assert later.json()["rule"] == "intake-submitted"

        # An explicit amendment updates the filed QuestionnaireResponse instead.
        changed = {
            "answers": [
                {"link_id": "reason", "value_string": "Knee pain, now swollen"},
                {"link_id": "pain", "value_integer": 6},
            ]
        }
        amended = await client.post(
            f"{path}/intake/amend", json=changed, headers={"Idempotency-Key": "in-3"}
        )
        assert amended.status_code == 202, amended.text
        assert amended.json()["revision"] == 2

        async def amended_in_ehr() -> dict[str, Any] | None:
            found = await _fhir(portal, "QuestionnaireResponse", patient="demo-alice")
            ours = [
                e["resource"]
                for e in found.get("entry", [])
                if any(i.get("system") == INTAKE_ID for i in _identifiers(e["resource"]))
            ]
            return ours[0] if len(ours) == 1 and ours[0]["status"] == "amended" else None

        await eventually(amended_in_ehr, timeout=90)
        response = await amended_in_ehr()
        assert response is not None
        assert {i["linkId"]: i["answer"] for i in response["item"]}["pain"] == [{"valueInteger": 6}]
        assert await filed() == 1


def _identifiers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    value = resource.get("identifier")
    if isinstance(value, dict):
        return [value]
    return list(value or [])
