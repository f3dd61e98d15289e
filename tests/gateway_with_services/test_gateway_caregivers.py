"""Caregiver (proxy) access end to end: the patient grants a RelatedPerson of the EHR
access to chosen parts for a period and revokes it; the caregiver signs in at the sandbox's
issuer for that patient (fhirUser = RelatedPerson), reads what was granted, is refused the
rest (403 problem+json), is recorded in the access log as themself on the patient's behalf,
and loses access, open event stream included, the moment consent is revoked or ends.

Real parts: the sandbox over HTTP (tokens, RelatedPerson reads), records, scheduling and
messaging in-process, PostgreSQL, Kafka (consent.granted/revoked published; notifications
consumed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select, update

from contracts.base import Coding, SourceVersion
from contracts.consent import ConsentGrantedV1, ConsentRevokedV1
from contracts.lab import LabResultedV1, ReportStatus
from contracts.message import MessageReceivedV1
from devstack.topics import ensure_topics
from ehr_sandbox.testing.http import free_port, running_sandbox, serve
from gateway import audit, store
from gateway.app import build as build_gateway
from gateway.consent import majority
from gateway.settings import Settings as GatewaySettings
from messaging.app import build as build_messaging
from messaging.settings import Settings as MessagingSettings
from records.app import build as build_records
from records.settings import Settings as RecordsSettings
from scheduling.app import build as build_scheduling
from scheduling.settings import Settings as SchedulingSettings
from servicekit.app import Service
from servicekit.testing import eventually, isolated_settings, produce_events, read_topic

pytestmark = [pytest.mark.integration]
FHIR_JSON = {"Content-Type": "application/fhir+json"}
ROLE_CODES = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"


@dataclass
class Stack:
    gateway: Service
    url: str
    sandbox_admin: httpx.AsyncClient
    prefix: str


@pytest.fixture
async def stack(
    tmp_path: Path,
    database_factory: Callable[[], Awaitable[str]],
    kafka_bootstrap: str,
    unique_prefix: str,
) -> AsyncIterator[Stack]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    names = ("gateway", "records", "scheduling", "messaging")
    dbs = {name: await database_factory() for name in names}

    def kit(name: str) -> dict[str, Any]:
        return isolated_settings(dbs[name], kafka_bootstrap, unique_prefix)

    async with running_sandbox(tmp_path, port=free_port()) as sandbox:
        records = build_records(RecordsSettings(**kit("records")))
        scheduling = build_scheduling(
            SchedulingSettings(**kit("scheduling"), ehr_connector_url="http://127.0.0.1:9")
        )
        messaging = build_messaging(
            MessagingSettings(
                **kit("messaging"), triage_url="http://127.0.0.1:9", emergency_check_timeout_s=0.5
            )
        )
        gateway = build_gateway(
            GatewaySettings(
                **kit("gateway"),
                oidc_issuer=sandbox.url,
                records_url="http://records",
                scheduling_url="http://scheduling",
                messaging_url="http://messaging",
                sse_keepalive_s=0.5,
            ),
            mounts={
                f"http://{name}": httpx.ASGITransport(app=svc.app)
                for name, svc in (
                    ("records", records),
                    ("scheduling", scheduling),
                    ("messaging", messaging),
                )
            },
        )
        async with (
            LifespanManager(records.app, startup_timeout=60, shutdown_timeout=60),
            LifespanManager(scheduling.app, startup_timeout=60, shutdown_timeout=60),
            LifespanManager(messaging.app, startup_timeout=60, shutdown_timeout=60),
            serve(gateway.app, free_port()) as url,
        ):
            yield Stack(gateway, url, sandbox.admin, unique_prefix)


async def _put(stack: Stack, resource: dict[str, Any]) -> None:
    response = await stack.sandbox_admin.put(
        f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource, headers=FHIR_JSON
    )
    assert response.status_code in (200, 201), response.text


async def _patient(stack: Stack, pid: str, birth: date) -> None:
    await _put(
        stack,
        {
            "resourceType": "Patient",
            "id": pid,
            "name": [{"family": "Example", "given": [pid]}],
            "birthDate": birth.isoformat(),
        },
    )


async def _related(stack: Stack, rid: str, patient: str, code: str) -> None:
    await _put(
        stack,
        {
            "resourceType": "RelatedPerson",
            "id": rid,
            "active": True,
            "patient": {"reference": f"Patient/{patient}"},
            "relationship": [{"coding": [{"system": ROLE_CODES, "code": code}]}],
            "name": [{"family": "Example", "given": [rid]}],
        },
    )


async def _token(stack: Stack, patient: str, related_person: str | None = None) -> dict[str, str]:
    body = {"patient": patient}
    if related_person:
        body["related_person"] = related_person
    response = await stack.sandbox_admin.post("/dev/patient-token", json=body)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _refused(response: httpx.Response) -> None:
    assert response.status_code == 403, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json"


async def _access_rows(stack: Stack, patient_id: str) -> list[store.AccessLogEntry]:
    async with stack.gateway.db.sessions() as session:
        return await store.access_log_of(session, patient_id)


def _lab(patient_id: str) -> LabResultedV1:
    at = datetime(2026, 11, 24, tzinfo=UTC)
    return LabResultedV1(
        patient_id=patient_id,
        report_fhir_id="dr-cg",
        status=ReportStatus.FINAL,
        code=Coding(system="http://loinc.org", code="4548-4", display="Hemoglobin A1c"),
        effective=at,
        source=SourceVersion(
            resource_type="DiagnosticReport", fhir_id="dr-cg", version_id="1", last_updated=at
        ),
    )


def _reply(patient_id: str) -> MessageReceivedV1:
    at = datetime.now(UTC)
    return MessageReceivedV1(
        patient_id=patient_id,
        communication_fhir_id="com-cg",
        body="Your appointment is confirmed.",
        sent_at=at,
        source=SourceVersion(
            resource_type="Communication", fhir_id="com-cg", version_id="1", last_updated=at
        ),
    )


async def test_an_adult_grants_a_family_member_appointments_and_messages_not_results(
    stack: Stack, kafka_bootstrap: str
) -> None:
    await _patient(stack, "p-ann", date(1961, 4, 2))
    await _patient(stack, "p-bob", date(1958, 1, 9))
    await _related(stack, "rp-sis", "p-ann", "SIS")
    await _related(stack, "rp-bobs-son", "p-bob", "SONC")
    ann = await _token(stack, "p-ann")
    sis = await _token(stack, "p-ann", "rp-sis")
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        ann_id = (await client.get("/v1/me", headers=ann)).json()["patient_id"]

        # No grant yet: the caregiver's token alone opens nothing.
        _refused(await client.get("/v1/me", headers=sis))
        _refused(await client.get("/v1/me/appointments", headers=sis))

        listed = (await client.get("/v1/me/caregivers", headers=ann)).json()
        assert listed["grants"] == []
        assert [p["id"] for p in listed["related_persons"]] == ["rp-sis"]

        end = datetime.now(UTC) + timedelta(days=30)
        body = {"parts": ["appointments", "messages"], "end": end.isoformat()}
        # Someone the EHR relates to another patient cannot be named.
        stranger = await client.post(
            "/v1/me/caregivers", headers=ann, json={**body, "related_person": "rp-bobs-son"}
        )
        assert stranger.status_code == 422, stranger.text
        # Sent at once (a double tap, two devices): one grant, the others are refused.
        tries = await asyncio.gather(
            *(
                client.post(
                    "/v1/me/caregivers", headers=ann, json={**body, "related_person": "rp-sis"}
                )
                for _ in range(4)
            )
        )
        assert sorted(t.status_code for t in tries) == [201, 409, 409, 409], [t.text for t in tries]
        granted = next(t for t in tries if t.status_code == 201)
        grant = granted.json()
        assert grant["status"] == "active"
        assert grant["parts"] == ["appointments", "messages"]
        again = await client.post(
            "/v1/me/caregivers", headers=ann, json={**body, "related_person": "rp-sis"}
        )
        assert again.status_code == 409

        # Within the grant: the patient's account, appointments and messages.
        me = await client.get("/v1/me", headers=sis)
        assert me.status_code == 200 and me.json()["patient_id"] == ann_id
        assert (await client.get("/v1/me/appointments", headers=sis)).status_code == 200
        assert (await client.get("/v1/me/threads", headers=sis)).status_code == 200
        summary = (await client.get("/v1/me/summary", headers=sis)).json()
        assert "threads" in summary and "lab_results" not in summary
        # Outside it: results, the rest of the record, and what only the patient may do.
        _refused(await client.get("/v1/me/lab-results", headers=sis))
        _refused(await client.get("/v1/me/lab-results/dr-1", headers=sis))
        _refused(await client.get("/v1/me/medications", headers=sis))
        _refused(await client.get("/v1/me/access-log", headers=sis))
        _refused(await client.get("/v1/me/caregivers", headers=sis))
        _refused(
            await client.delete(f"/v1/me/caregivers/{grant['id']}", headers=sis)
        )  # a caregiver cannot change the consent

        # Live: a message is pushed to the caregiver, a lab result is not.
        received: list[tuple[str, dict[str, Any]]] = []
        ended, notified = asyncio.Event(), asyncio.Event()

        async def listen() -> None:
            async with client.stream("GET", "/v1/me/events", headers=sis) as stream:
                assert stream.status_code == 200
                event = "message"
                async for line in stream.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        received.append((event, json.loads(line[6:])))
                        if event == "notification":
                            notified.set()
                        if event == "access-ended":
                            ended.set()
                            return

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.2)
        await produce_events(
            kafka_bootstrap,
            [(ann_id, _lab(ann_id)), (ann_id, _reply(ann_id))],
            topic_prefix=stack.prefix,
        )

        await asyncio.wait_for(notified.wait(), timeout=60)

        async def both_stored() -> bool:
            async with stack.gateway.db.sessions() as session:
                return len(await store.notifications_since(session, ann_id, 0)) == 2

        await eventually(both_stored, timeout=60)

        # Revoked: the open stream ends at once, and so does every request.
        revoked = await client.delete(f"/v1/me/caregivers/{grant['id']}", headers=ann)
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        await asyncio.wait_for(ended.wait(), timeout=30)
        await asyncio.wait_for(listener, timeout=5)
        kinds = [d["kind"] for e, d in received if e == "notification"]
        assert kinds == ["message"]  # the lab result was stored too, and never shared
        _refused(await client.get("/v1/me/threads", headers=sis))
        after = (await client.get("/v1/me/caregivers", headers=ann)).json()
        assert [g["status"] for g in after["grants"]] == ["revoked"]

        # The patient sees who did what on their behalf.
        seen = (await client.get("/v1/me/access-log", headers=ann)).json()
        theirs = [e for e in seen if e["actor"] == "caregiver"]
        assert {e["actor_id"] for e in theirs} == {"RelatedPerson/rp-sis"}
        assert {e["outcome"] for e in theirs} == {"allowed", "denied"}

    rows = await _access_rows(stack, ann_id)
    caregiver_rows = [r for r in rows if r.actor == "caregiver"]
    assert all(r.actor_id == "RelatedPerson/rp-sis" for r in caregiver_rows)
    assert all(r.on_behalf_of == "p-ann" for r in caregiver_rows)
    assert {(r.resource, r.outcome) for r in caregiver_rows} >= {
        ("Communication", "allowed"),
        ("DiagnosticReport", "denied"),
    }
    # What the stream disclosed is in the log too: the message, never the lab result.
    pushed = [r.resource_id for r in caregiver_rows if r.resource == "notification"]
    assert [p.split("/")[0] for p in pushed] == ["message"]
    assert (await audit.verify(stack.gateway)).intact

    granted_events = await read_topic(
        kafka_bootstrap, f"{stack.prefix}consent.granted", until=lambda s: len(s) >= 1
    )
    event = ConsentGrantedV1.model_validate_json(granted_events[0].value)
    assert (event.patient_fhir_id, event.related_person_fhir_id) == ("p-ann", "rp-sis")
    assert granted_events[0].key == ann_id
    revoked_events = await read_topic(
        kafka_bootstrap, f"{stack.prefix}consent.revoked", until=lambda s: len(s) >= 1
    )
    assert ConsentRevokedV1.model_validate_json(revoked_events[0].value).consent_id == grant["id"]


async def test_a_parent_acts_for_a_child_until_the_grant_ends_or_the_child_comes_of_age(
    stack: Stack,
) -> None:
    today = datetime.now(UTC).date()
    # Eighteen in 100 days: the parent's access cannot outlast that.
    birth = date(today.year - 18, today.month, today.day)
    if birth.month == 2 and birth.day == 29:
        birth = birth.replace(day=28)
    birth += timedelta(days=100)
    await _patient(stack, "p-kid", birth)
    await _related(stack, "rp-mum", "p-kid", "MTH")
    kid = await _token(stack, "p-kid")
    mum = await _token(stack, "p-kid", "rp-mum")
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        kid_id = (await client.get("/v1/me", headers=kid)).json()["patient_id"]
        everything = ["results", "records", "appointments", "messages", "triage"]
        end = datetime.now(UTC) + timedelta(days=300)
        granted = await client.post(
            "/v1/me/caregivers",
            headers=kid,
            json={"related_person": "rp-mum", "parts": everything, "end": end.isoformat()},
        )
        assert granted.status_code == 201, granted.text
        grant = granted.json()
        assert datetime.fromisoformat(grant["end"]) == majority(birth)

        assert (await client.get("/v1/me/lab-results", headers=mum)).status_code == 200
        assert (await client.get("/v1/me/medications", headers=mum)).status_code == 200
        assert (await client.get("/v1/me/appointments", headers=mum)).status_code == 200

        # The grant's period passes (as the clock would move it): access ends with it.
        async with stack.gateway.db.transaction() as session:
            await session.execute(
                update(store.CaregiverGrant)
                .where(store.CaregiverGrant.id == grant["id"])
                .values(end=datetime.now(UTC) - timedelta(seconds=1))
            )
        _refused(await client.get("/v1/me/lab-results", headers=mum))
        _refused(await client.get("/v1/me", headers=mum))
        listed = (await client.get("/v1/me/caregivers", headers=kid)).json()
        assert [g["status"] for g in listed["grants"]] == ["expired"]
        # An ended grant leaves room for a new one.
        renewed = await client.post(
            "/v1/me/caregivers",
            headers=kid,
            json={"related_person": "rp-mum", "parts": ["appointments"], "end": end.isoformat()},
        )
        assert renewed.status_code == 201, renewed.text
        assert (await client.get("/v1/me/appointments", headers=mum)).status_code == 200
        _refused(await client.get("/v1/me/lab-results", headers=mum))

    async with stack.gateway.db.sessions() as session:
        rows = (
            (
                await session.execute(
                    select(store.AccessLogEntry).where(store.AccessLogEntry.patient_id == kid_id)
                )
            )
            .scalars()
            .all()
        )
    mums = [r for r in rows if r.actor_id == "RelatedPerson/rp-mum"]
    assert {r.outcome for r in mums} == {"allowed", "denied"}
    assert all(r.actor == "caregiver" and r.on_behalf_of == "p-kid" for r in mums)
