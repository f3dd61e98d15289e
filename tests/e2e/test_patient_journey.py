"""The whole product path, every boundary real: a patient signs in (sandbox dev issuer),
their history is back-filled from the EHR, and clinician actions in the EHR reach the
patient's open portal stream within seconds; the patient's symptom check reaches the EHR
as a Task for the care team.

sandbox (uvicorn) --rest-hook--> ehr-connector (uvicorn) --Kafka--> records, messaging,
gateway (uvicorn, SSE) <--HTTP-- patient;  gateway -> triage --Kafka--> connector -> EHR.
"""

from __future__ import annotations

import asyncio
import json
import time
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
from ehr_connector.settings import Settings as ConnectorSettings
from ehr_sandbox.subscriptions.settings import SubscriptionSettings
from ehr_sandbox.testing.http import RunningSandbox, free_port, running_sandbox, serve
from gateway.app import build as build_gateway
from gateway.settings import Settings as GatewaySettings
from messaging.app import build as build_messaging
from messaging.settings import Settings as MessagingSettings
from records.app import build as build_records
from records.settings import Settings as RecordsSettings
from scheduling.app import build as build_scheduling
from scheduling.settings import Settings as SchedulingSettings
from servicekit.testing import eventually, isolated_settings
from triage.app import build as build_triage
from triage.settings import Settings as TriageSettings

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
    db = {
        name: await database_factory()
        for name in ("connector", "records", "scheduling", "messaging", "triage", "gateway")
    }
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
                canary_enabled=False,
            )
        )
        await stack.enter_async_context(serve(connector.app, connector_port))
        records = build_records(
            RecordsSettings(**isolated_settings(db["records"], kafka_bootstrap, unique_prefix))
        )
        messaging = build_messaging(
            MessagingSettings(**isolated_settings(db["messaging"], kafka_bootstrap, unique_prefix))
        )
        triage = build_triage(
            TriageSettings(**isolated_settings(db["triage"], kafka_bootstrap, unique_prefix))
        )
        scheduling = build_scheduling(
            SchedulingSettings(
                **isolated_settings(db["scheduling"], kafka_bootstrap, unique_prefix)
            )
        )
        for service in (records, messaging, triage, scheduling):
            await stack.enter_async_context(
                LifespanManager(service.app, startup_timeout=60, shutdown_timeout=60)
            )
        gateway = build_gateway(
            GatewaySettings(
                **isolated_settings(db["gateway"], kafka_bootstrap, unique_prefix),
                oidc_issuer=sandbox.url,
                records_url="http://records",
                messaging_url="http://messaging",
                triage_url="http://triage",
                scheduling_url="http://scheduling",
                sse_keepalive_s=1.0,
            ),
            mounts={
                "http://records": httpx.ASGITransport(app=records.app),
                "http://messaging": httpx.ASGITransport(app=messaging.app),
                "http://triage": httpx.ASGITransport(app=triage.app),
                "http://scheduling": httpx.ASGITransport(app=scheduling.app),
            },
        )
        gateway_url = await stack.enter_async_context(serve(gateway.app, free_port()))
        yield Portal(sandbox=sandbox, gateway_url=gateway_url)


async def _notifications(client: httpx.AsyncClient, into: list[dict[str, Any]]) -> None:
    async with client.stream("GET", "/v1/me/events") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                into.append({**json.loads(line[6:]), "received": time.monotonic()})


async def test_a_patient_sees_history_and_live_ehr_changes_and_reaches_the_care_team(
    portal: Portal,
) -> None:
    token = (
        await portal.sandbox.admin.post("/dev/patient-token", json={"patient": "demo-alice"})
    ).json()["access_token"]
    async with httpx.AsyncClient(
        base_url=portal.gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        # First visit: the account is linked and the history is back-filled from the EHR.
        assert (await client.get("/v1/me")).status_code == 200

        async def history_arrived() -> bool:
            allergies = (await client.get("/v1/me/allergies")).json()
            conditions = (await client.get("/v1/me/conditions")).json()
            return bool(allergies) and len(conditions) >= 2

        await eventually(history_arrived, timeout=120, interval=0.5)
        allergies = (await client.get("/v1/me/allergies")).json()
        assert "alice-allergy-penicillin" in {a["id"] for a in allergies}

        # The portal is open; a lab system results a panel in the EHR.
        seen: list[dict[str, Any]] = []
        listener = asyncio.create_task(_notifications(client, seen))
        try:
            await asyncio.sleep(0.5)
            started = time.monotonic()
            simulated = await portal.sandbox.admin.post(
                "/sandbox/simulate/lab-result", json={"patient": "demo-alice", "panel": "a1c"}
            )
            assert simulated.status_code == 201, simulated.text
            report = next(
                w["reference"]
                for w in simulated.json()["written"]
                if w["reference"].startswith("DiagnosticReport/")
            )

            async def lab_notified() -> bool:
                return any(
                    n["kind"] == "lab-result" and n["ref"] == report.split("/")[1] for n in seen
                )

            await eventually(lab_notified, timeout=60)
            latency = next(n["received"] for n in seen if n["kind"] == "lab-result") - started
            print(f"EHR lab result -> patient's screen: {latency:.2f}s")
            detail = await client.get(f"/v1/me/lab-results/{report.split('/')[1]}")

            async def in_records() -> bool:
                nonlocal detail
                detail = await client.get(f"/v1/me/lab-results/{report.split('/')[1]}")
                return detail.status_code == 200

            await eventually(in_records, timeout=30)
            body = detail.json()
            assert body["status"] == "final"
            assert body["observations"][0]["value_quantity"]["value"] > 0

            # A clinician replies to the patient's message thread.
            reply = await portal.sandbox.admin.post(
                "/sandbox/simulate/message-reply",
                json={"patient": "demo-alice", "text": "Your A1c is improving."},
            )
            assert reply.status_code == 201, reply.text

            async def message_notified() -> bool:
                return any(n["kind"] == "message" for n in seen)

            await eventually(message_notified, timeout=60)

            async def thread_has_reply() -> bool:
                threads = (await client.get("/v1/me/threads")).json()
                for thread in threads:
                    messages = (await client.get(f"/v1/me/threads/{thread['id']}/messages")).json()
                    if any(m["body"] == "Your A1c is improving." for m in messages):
                        return True
                return False

            await eventually(thread_has_reply, timeout=30)
        finally:
            listener.cancel()

        # The patient checks a symptom: the care team gets a Task in the EHR, stat.
        outcome = await client.post(
            "/v1/me/triage/assess",
            json={"age": 52, "sex": "female", "text": "chest pressure since this morning"},
        )
        assert outcome.status_code == 201
        assert outcome.json()["urgency"] == "emergency"

        async def task_in_ehr() -> bool:
            found = await portal.sandbox.admin.get("/fhir/Task", params={"patient": "demo-alice"})
            return any(
                e["resource"].get("priority") == "stat" for e in found.json().get("entry", [])
            )

        await eventually(task_in_ehr, timeout=60)

        log = (await client.get("/v1/me/access-log")).json()
        assert {entry["resource"] for entry in log} >= {
            "AllergyIntolerance",
            "DiagnosticReport",
            "Communication",
        }


async def test_a_patient_books_and_cancels_an_appointment_in_the_ehr(portal: Portal) -> None:
    token = (
        await portal.sandbox.admin.post("/dev/patient-token", json={"patient": "demo-bob"})
    ).json()["access_token"]
    async with httpx.AsyncClient(
        base_url=portal.gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        # Two days ahead: the appointment is cancelled online below, which the clinic's
        # 24-hour rule refuses for a slot that starts within a day of the cancel (a slot
        # just past now + 1 day, booked from a list asked for at that time, may be).
        start = (datetime.now(UTC) + timedelta(days=2)).isoformat()
        slots: list[dict[str, Any]] = []

        async def slots_offered() -> bool:
            nonlocal slots
            slots = (await client.get("/v1/slots", params={"start": start})).json()["items"]
            return bool(slots)

        # The connector's slot sync fills scheduling's cache from the EHR.
        await eventually(slots_offered, timeout=120, interval=0.5)
        chosen = slots[0]["id"]
        booked = await client.post(
            "/v1/me/appointments",
            json={"slot_id": chosen, "reason": "Asthma review"},
            headers={"Idempotency-Key": "bob-1"},
        )
        assert booked.status_code == 201, booked.text
        appointment_id = booked.json()["id"]

        async def confirmed() -> bool:
            got = await client.get(f"/v1/me/appointments/{appointment_id}")
            return bool(got.json()["status"] == "booked")

        await eventually(confirmed, timeout=60)
        in_ehr = (
            await portal.sandbox.admin.get("/fhir/Appointment", params={"slot": chosen})
        ).json()
        appointment = next(
            e["resource"] for e in in_ehr["entry"] if e["resource"]["status"] == "booked"
        )
        slot = (await portal.sandbox.admin.get(f"/fhir/Slot/{chosen}")).json()
        assert slot["status"] == "busy"

        cancelled = await client.post(f"/v1/me/appointments/{appointment_id}/cancel", json={})
        assert cancelled.json()["status"] == "cancelled"

        async def cancelled_in_ehr() -> bool:
            current = await portal.sandbox.admin.get(f"/fhir/Appointment/{appointment['id']}")
            return bool(current.json()["status"] == "cancelled")

        await eventually(cancelled_in_ehr, timeout=60)
