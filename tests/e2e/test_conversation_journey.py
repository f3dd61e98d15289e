"""A conversation across both sides, every boundary real: Alice signs in and finds her
earlier messages imported from the EHR as a thread; she writes to the prescriptions team;
a clinician answers in the EHR (sandbox simulator); the answer lands in HER thread, unread;
she answers back and her answer is filed in the same EHR thread.

sandbox (uvicorn) --rest-hook--> ehr-connector (uvicorn) --Kafka--> messaging, gateway
(uvicorn) <--HTTP-- patient;  messaging --message.sent--> connector --> EHR.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from devstack.topics import ensure_topics
from ehr_connector.app import build as build_connector
from ehr_connector.outbound.domain.identifiers import MESSAGE_ID, token
from ehr_connector.settings import Settings as ConnectorSettings
from ehr_sandbox.subscriptions.settings import SubscriptionSettings
from ehr_sandbox.testing.http import RunningSandbox, free_port, running_sandbox, serve
from gateway.app import build as build_gateway
from gateway.settings import Settings as GatewaySettings
from messaging.app import build as build_messaging
from messaging.settings import Settings as MessagingSettings
from records.app import build as build_records
from records.settings import Settings as RecordsSettings
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
    db = {n: await database_factory() for n in ("connector", "records", "messaging", "gateway")}
    db["triage"] = await database_factory()
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
                slot_sync_enabled=False,
            )
        )
        await stack.enter_async_context(serve(connector.app, connector_port))
        records = build_records(
            RecordsSettings(**isolated_settings(db["records"], kafka_bootstrap, unique_prefix))
        )
        triage = build_triage(
            TriageSettings(**isolated_settings(db["triage"], kafka_bootstrap, unique_prefix))
        )
        # Messaging asks the real triage service for the emergency check.
        messaging = build_messaging(
            MessagingSettings(
                **isolated_settings(db["messaging"], kafka_bootstrap, unique_prefix),
                triage_url="http://triage",
            ),
            triage_transport=httpx.ASGITransport(app=triage.app),
        )
        for service in (records, triage, messaging):
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
                # Every service here shares one event loop with the whole journey: on a
                # loaded CI machine messaging's part missed the 1 s default and the summary
                # left it out, as designed (that budget is tested on its own, in
                # tests/gateway_with_services/test_summary_budget.py).
                summary_part_timeout_s=10.0,
            ),
            mounts={
                "http://records": httpx.ASGITransport(app=records.app),
                "http://messaging": httpx.ASGITransport(app=messaging.app),
                "http://triage": httpx.ASGITransport(app=triage.app),
            },
        )
        gateway_url = await stack.enter_async_context(serve(gateway.app, free_port()))
        yield Portal(sandbox=sandbox, gateway_url=gateway_url)


async def _communication_of(portal: Portal, message_id: str) -> dict[str, Any] | None:
    response = await portal.sandbox.admin.get(
        "/fhir/Communication", params={"identifier": token(MESSAGE_ID, message_id)}
    )
    entries = response.json().get("entry", [])
    return entries[0]["resource"] if entries else None


async def test_a_clinicians_answer_lands_in_the_patients_thread_and_her_answer_in_the_ehrs(
    portal: Portal,
) -> None:
    access = (
        await portal.sandbox.admin.post("/dev/patient-token", json={"patient": "demo-alice"})
    ).json()["access_token"]
    async with httpx.AsyncClient(
        base_url=portal.gateway_url, headers={"Authorization": f"Bearer {access}"}, timeout=30
    ) as client:
        assert (await client.get("/v1/me")).status_code == 200

        # History: her earlier question and the clinician's answer, as one thread.
        async def history() -> bool:
            threads = (await client.get("/v1/me/threads")).json()
            return any(t["subject"] == "Question about metformin" for t in threads)

        await eventually(history, timeout=120, interval=0.5)
        threads = (await client.get("/v1/me/threads")).json()
        old = next(t for t in threads if t["subject"] == "Question about metformin")
        old_messages = (await client.get(f"/v1/me/threads/{old['id']}/messages")).json()
        assert [m["direction"] for m in old_messages] == ["outbound", "inbound"]
        assert old["origin"] == "imported"

        # She writes to the prescriptions team.
        started = await client.post(
            "/v1/me/threads",
            json={
                "subject": "Metformin refill",
                "body": "I have one week of metformin left.",
                "topic": "prescriptions",
            },
        )
        assert started.status_code == 201, started.text
        thread = started.json()["thread"]
        assert thread["sent_to"] == "prescriptions team"
        message_id = started.json()["message"]["id"]
        filed: dict[str, Any] | None = None

        async def in_the_ehr() -> bool:
            nonlocal filed
            filed = await _communication_of(portal, message_id)
            return filed is not None

        await eventually(in_the_ehr, timeout=60)
        assert filed is not None
        assert filed["recipient"] == [{"reference": "PractitionerRole/role-np-chen"}]
        path = f"/v1/me/threads/{thread['id']}/messages"

        async def hers() -> dict[str, Any]:
            listed = (await client.get(path)).json()
            found: dict[str, Any] = next(m for m in listed if m["id"] == message_id)
            return found

        async def acknowledged() -> bool:
            return (await hers())["ehr_status"] == "completed"

        await eventually(acknowledged, timeout=60)

        # A clinician answers her latest message in the EHR.
        reply = await portal.sandbox.admin.post(
            "/sandbox/simulate/message-reply",
            json={"patient": "demo-alice", "text": "Sent to your pharmacy."},
        )
        assert reply.status_code == 201, reply.text
        reply_id = reply.json()["written"][-1]["reference"].split("/")[1]

        async def answered() -> bool:
            messages = (await client.get(path)).json()
            return any(m["body"] == "Sent to your pharmacy." for m in messages)

        await eventually(answered, timeout=60, interval=0.5)
        threads_now = (await client.get("/v1/me/threads")).json()
        assert len(threads_now) == 2  # no new, untitled thread
        mine = next(t for t in threads_now if t["id"] == thread["id"])
        assert mine["unread"] == 1
        assert (await client.get("/v1/me/summary")).json()["unread_messages"] == 1

        # The care team's read comes with the answer's own event, or with the EHR's next
        # version of her message: either may be handled after the answer shows.
        async def read_by_care_team() -> bool:
            return (await hers())["read_by_care_team_at"] is not None

        await eventually(read_by_care_team, timeout=60, interval=0.5)
        # The answer shows after her message, whatever second the EHR wrote on it.
        listed = (await client.get(path)).json()
        assert listed[0]["id"] == message_id

        # She answers back: filed in the same EHR thread, answering the clinician.
        answer = await client.post(path, json={"body": "Thank you!"})
        assert answer.status_code == 201, answer.text
        answer_id = answer.json()["message"]["id"]
        filed_answer: dict[str, Any] | None = None

        async def answer_in_the_ehr() -> bool:
            nonlocal filed_answer
            filed_answer = await _communication_of(portal, answer_id)
            return filed_answer is not None

        await eventually(answer_in_the_ehr, timeout=60)
        assert filed_answer is not None
        assert filed_answer["partOf"] == [{"reference": f"Communication/{filed['id']}"}]
        assert filed_answer["inResponseTo"] == [{"reference": f"Communication/{reply_id}"}]
        read = await client.post(f"/v1/me/threads/{thread['id']}/read")
        assert read.json()["marked"] == 1
        assert (await client.get("/v1/me/summary")).json()["unread_messages"] == 0
