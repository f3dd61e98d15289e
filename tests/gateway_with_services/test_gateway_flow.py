"""The patients' API end to end: tokens from the sandbox's dev issuer (over HTTP), data
from the records service, live notifications over SSE, the access log."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts.base import Coding, SourceVersion
from contracts.intake import IntakeRemindedV1
from contracts.lab import LabResultedV1, ReportStatus
from contracts.patient import PatientLinkedV1
from devstack.topics import ensure_topics
from ehr_sandbox.testing.http import free_port, running_sandbox, serve
from gateway import audit, store
from gateway.hub import NotificationHub
from servicekit.app import Service
from servicekit.consumer import running_deps
from servicekit.testing import eventually, isolated_settings, produce_events, read_topic
from triage.app import build as build_triage
from triage.settings import Settings as TriageSettings

from .services import gateway_service, records_service

pytestmark = [pytest.mark.integration]
_spans = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _tracing() -> None:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_spans))


@dataclass
class Stack:
    gateway: Service
    url: str
    issuer: str
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
    dbs = {name: await database_factory() for name in ("gateway", "records", "triage")}
    async with running_sandbox(tmp_path, port=free_port()) as sandbox:
        records = records_service(dbs["records"], kafka_bootstrap, unique_prefix)
        triage = build_triage(
            TriageSettings(**isolated_settings(dbs["triage"], kafka_bootstrap, unique_prefix))
        )  # type: ignore[arg-type]
        gateway = gateway_service(
            dbs["gateway"],
            kafka_bootstrap,
            unique_prefix,
            issuer=sandbox.url,
            records_url="http://records",
            triage_url="http://triage",
            messaging_url="http://127.0.0.1:1",  # nothing listens: a failing upstream
            sse_keepalive_s=0.5,
            mounts={
                "http://records": httpx.ASGITransport(app=records.app),
                "http://triage": httpx.ASGITransport(app=triage.app),
            },
        )
        async with (
            LifespanManager(records.app, startup_timeout=60, shutdown_timeout=60),
            LifespanManager(triage.app, startup_timeout=60, shutdown_timeout=60),
            serve(gateway.app, free_port()) as url,
        ):
            yield Stack(gateway, url, sandbox.url, sandbox.admin, unique_prefix)


async def _token(stack: Stack, patient: str = "p-ann") -> str:
    put = await stack.sandbox_admin.put(
        f"/fhir/Patient/{patient}",
        json={
            "resourceType": "Patient",
            "id": patient,
            "name": [{"family": "Example", "given": ["Ann"]}],
        },
        headers={"Content-Type": "application/fhir+json"},
    )
    assert put.status_code in (200, 201), put.text
    response = await stack.sandbox_admin.post("/dev/patient-token", json={"patient": patient})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _lab(patient_id: str) -> LabResultedV1:
    return LabResultedV1(
        patient_id=patient_id,
        report_fhir_id="dr-77",
        status=ReportStatus.FINAL,
        code=Coding(system="http://loinc.org", code="4548-4", display="Hemoglobin A1c"),
        effective=datetime(2026, 11, 24, tzinfo=UTC),
        source=SourceVersion(
            resource_type="DiagnosticReport",
            fhir_id="dr-77",
            version_id="1",
            last_updated=datetime(2026, 11, 24, tzinfo=UTC),
        ),
    )


async def test_requests_without_a_valid_token_are_refused(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as client:
        none = await client.get("/v1/me")
        assert none.status_code == 401
        assert none.headers["content-type"] == "application/problem+json"
        assert none.headers["www-authenticate"].startswith("Bearer")
        garbage = await client.get("/v1/me", headers={"Authorization": "Bearer not.a.jwt"})
        assert garbage.status_code == 401
        token = await _token(stack)
        head, payload, _sig = token.split(".")
        forged = await client.get(
            "/v1/me", headers={"Authorization": f"Bearer {head}.{payload}.AAAA"}
        )
        assert forged.status_code == 401


async def test_first_visit_links_the_patient_and_publishes_patient_linked(
    stack: Stack, kafka_bootstrap: str
) -> None:
    token = await _token(stack)
    async with httpx.AsyncClient(
        base_url=stack.url, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        first = (await client.get("/v1/me")).json()
        again = (await client.get("/v1/me")).json()
    assert first["patient_id"] == again["patient_id"]
    assert "patient/*.rs" in first["scopes"]
    seen = await read_topic(
        kafka_bootstrap, f"{stack.prefix}patient.linked", until=lambda s: len(s) >= 1
    )
    assert len(seen) == 1
    assert seen[0].key == first["patient_id"]
    linked = PatientLinkedV1.model_validate_json(seen[0].value)
    assert linked.patient_fhir_id == "p-ann"


async def test_lab_result_reaches_the_api_and_the_live_stream_and_is_audited(
    stack: Stack, kafka_bootstrap: str
) -> None:
    token = await _token(stack)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=30) as client:
        patient_id = (await client.get("/v1/me")).json()["patient_id"]
        received: list[dict[str, object]] = []

        async def listen() -> None:
            async with client.stream("GET", "/v1/me/events") as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        received.append(json.loads(line[6:]))
                        return

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.2)
        await produce_events(
            kafka_bootstrap, [(patient_id, _lab(patient_id))], topic_prefix=stack.prefix
        )
        await asyncio.wait_for(listener, timeout=60)
        assert received[0]["kind"] == "lab-result"
        assert received[0]["ref"] == "dr-77"
        assert "A1c" not in json.dumps(received[0])  # notifications carry no clinical detail

        async def in_records() -> bool:
            return bool((await client.get("/v1/me/lab-results")).json()["items"])

        await eventually(in_records, timeout=60)
        report = (await client.get("/v1/me/lab-results/dr-77")).json()
        assert report["code"]["code"] == "4548-4"
        log = (await client.get("/v1/me/access-log")).json()
        assert log[0]["resource"] == "DiagnosticReport"
        assert all(entry["actor"] == "self" for entry in log)
    assert (await audit.verify(stack.gateway)).intact


async def test_stream_replays_what_was_missed_after_last_event_id(
    stack: Stack, kafka_bootstrap: str
) -> None:
    token = await _token(stack)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=30) as client:
        patient_id = (await client.get("/v1/me")).json()["patient_id"]
        await produce_events(
            kafka_bootstrap, [(patient_id, _lab(patient_id))], topic_prefix=stack.prefix
        )

        async def first_event() -> list[str]:
            ids: list[str] = []
            async with client.stream(
                "GET", "/v1/me/events", headers={"Last-Event-ID": "0"}
            ) as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("id: "):
                        ids.append(line[4:])
                        return ids
            return ids

        ids = await asyncio.wait_for(first_event(), timeout=60)
        assert ids


def _note(patient_id: str, ref: str) -> store.PatientNotification:
    return store.PatientNotification(
        patient_id=patient_id,
        kind="lab-result",
        ref=ref,
        status="final",
        event_id=str(uuid.uuid4()),
        created_at=datetime.now(UTC),
    )


async def test_a_notification_committed_after_a_later_one_still_reaches_the_stream(
    stack: Stack,
) -> None:
    """Two of the gateway's consumers (a lab result, a message: two topics) store a note for
    the same patient at once: the one whose id was drawn first may commit last. The open
    stream must deliver it all the same, and its cursor must never move back."""
    token = await _token(stack)
    headers = {"Authorization": f"Bearer {token}"}
    hub = running_deps(stack.gateway.deps, NotificationHub)
    db = stack.gateway.db
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=30) as client:
        patient_id = (await client.get("/v1/me")).json()["patient_id"]

        async def deliveries(
            last_event_id: str | None, into: asyncio.Queue[tuple[int, str]]
        ) -> None:
            extra = {"Last-Event-ID": last_event_id} if last_event_id else {}
            async with client.stream("GET", "/v1/me/events", headers=extra) as stream:
                event_id = ""
                async for line in stream.aiter_lines():
                    if line.startswith("id: "):
                        event_id = line[4:]
                    elif line.startswith("data: "):
                        await into.put((int(event_id), json.loads(line[6:])["ref"]))

        received: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        listener = asyncio.create_task(deliveries(None, received))

        async def listening() -> bool:
            return hub.listeners(patient_id) == 1

        await eventually(listening, timeout=30)
        async with db.sessions() as slow:
            slow.add(_note(patient_id, "dr-drawn-first"))
            await slow.flush()  # its id is drawn now; it commits after the next one
            async with db.sessions() as quick:
                quick.add(_note(patient_id, "dr-drawn-second"))
                await quick.commit()
            hub.wake(patient_id)
            first = await asyncio.wait_for(received.get(), 30)
            await slow.commit()
        hub.wake(patient_id)
        second = await asyncio.wait_for(received.get(), 30)
        listener.cancel()

        # A reconnect from the last id the stream sent replays neither of them.
        again: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        resumed = asyncio.create_task(deliveries(str(second[0]), again))
        await eventually(listening, timeout=30)
        async with db.sessions() as later:
            later.add(_note(patient_id, "dr-after-reconnect"))
            await later.commit()
        hub.wake(patient_id)
        third = await asyncio.wait_for(again.get(), 30)
        resumed.cancel()

    assert [first[1], second[1], third[1]] == [
        "dr-drawn-second",
        "dr-drawn-first",
        "dr-after-reconnect",
    ]
    assert first[0] <= second[0] < third[0]


async def test_summary_returns_what_it_has_with_a_warning_for_a_failed_part(stack: Stack) -> None:
    token = await _token(stack)
    async with httpx.AsyncClient(
        base_url=stack.url, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        response = await client.get("/v1/me/summary")
    assert response.status_code == 200
    body = response.json()
    assert body["lab_results"] == []
    assert body["threads"] is None
    assert [w["part"] for w in body["warnings"]] == ["appointments", "threads"]


async def test_triage_assessment_through_the_gateway(stack: Stack, kafka_bootstrap: str) -> None:
    token = await _token(stack)
    async with httpx.AsyncClient(
        base_url=stack.url, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        response = await client.post(
            "/v1/me/triage/assess", json={"age": 48, "sex": "female", "text": "crushing chest pain"}
        )
        bad = await client.post(
            "/v1/me/triage/assess", json={"age": "old", "sex": "female", "text": "x"}
        )
    assert response.status_code == 201
    assert response.json()["urgency"] == "emergency"
    assert bad.status_code == 422
    seen = await read_topic(
        kafka_bootstrap, f"{stack.prefix}triage.completed", until=lambda s: len(s) >= 1
    )
    event = json.loads(seen[0].value)
    # The patient's words travel only in `patient_text` (for the care team's EHR task),
    # never in the summary other consumers show.
    assert event["patient_text"] == "crushing chest pain"
    assert event["patient_text"] not in event["summary"]


# The first paragraph of issue 8: each was answered "routine" (or "urgent") before.
REPORTED = [
    (60, "male", "crushing pain in my chest that goes down my left arm"),
    (35, "female", "No fever but I cannot breathe"),
    (30, "male", "I can't breath"),
    (30, "female", "trouble breathing"),
    (24, "male", "I want to kil myself"),
    (19, "female", "I took 30 paracetamol tablets"),
    (45, "male", "thinking of ending it all"),
    (70, "male", "sudden weakness in my left arm and leg"),
    (30, "female", "stung by a bee and my throat is tight"),
    (44, "female", "thunderclap headache, the worst headache of my life"),
    (50, "male", "back pain and loss of bladder control"),
    (66, "male", "black tarry stools and dizziness"),
    (80, "female", "I am 80, I fell and now I am confused"),
    (6, "male", "6-year-old with a fever and a stiff neck"),
]


async def test_reported_emergencies_through_the_gateway(stack: Stack) -> None:
    token = await _token(stack)
    async with httpx.AsyncClient(
        base_url=stack.url, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        for age, sex, text in REPORTED:
            response = await client.post(
                "/v1/me/triage/assess", json={"age": age, "sex": sex, "text": text}
            )
            assert response.status_code == 201, response.text
            assert response.json()["urgency"] == "emergency", (text, response.json())


async def test_triage_session_through_the_gateway(stack: Stack) -> None:
    token = await _token(stack)
    async with httpx.AsyncClient(
        base_url=stack.url, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        started = await client.post(
            "/v1/me/triage/sessions",
            json={"age": 0, "age_months": 5, "sex": "female", "text": "my baby has a fever"},
        )
        assert started.status_code == 201, started.text
        state = started.json()
        assert state["status"] == "open"
        assert "fev-temp" in {q["id"] for q in state["questions"]}
        sid = state["session_id"]
        answered = await client.post(
            f"/v1/me/triage/sessions/{sid}/answers", json={"answers": {"fev-temp": 39.4}}
        )
        invalid = await client.post(
            f"/v1/me/triage/sessions/{sid}/answers", json={"answers": {"fev-temp": "hot"}}
        )
        finished = await client.post(
            f"/v1/me/triage/sessions/{sid}/answers", json={"answers": {}, "finish": True}
        )
        again = await client.post(
            f"/v1/me/triage/sessions/{sid}/answers", json={"answers": {}, "finish": True}
        )
        fetched = await client.get(f"/v1/me/triage/sessions/{sid}")
        missing = await client.get("/v1/me/triage/sessions/tri-missing")
    assert answered.status_code == 200, answered.text
    assert answered.json()["urgency"] == "urgent"  # 39 C or more at 3-6 months
    assert invalid.status_code == 422
    assert finished.json()["status"] == "completed"
    assert again.status_code == 409
    assert fetched.json()["status"] == "completed"
    assert missing.status_code == 404


async def test_portal_page_is_served(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as client:
        page = await client.get("/")
    assert page.status_code == 200
    assert '<html lang="en">' in page.text
    assert stack.issuer in page.text
    assert "__PORTAL_CONFIG__" not in page.text
    csp = page.headers["content-security-policy"]
    assert "unsafe-inline" not in csp
    assert "script-src 'self';" in csp


async def test_the_portals_modules_and_stylesheet_are_served_as_they_are(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as client:
        app = await client.get("/portal/app.js")
        view = await client.get("/portal/views/results.js")
        css = await client.get("/portal/portal.css")
        missing = await client.get("/portal/../settings.py")
    assert app.status_code == 200
    assert "javascript" in app.headers["content-type"]
    assert 'from "./api.js"' in app.text
    assert view.status_code == 200
    assert css.status_code == 200
    assert "text/css" in css.headers["content-type"]
    assert missing.status_code == 404


async def test_api_docs_work_offline_with_an_authorize_button(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as client:
        docs = await client.get("/docs")
        bundle = await client.get("/docs/assets/swagger-ui-bundle.js")
        css = await client.get("/docs/assets/swagger-ui.css")
        init = await client.get("/docs/assets/init.js")
        unknown = await client.get("/docs/assets/index.html")
        redoc = await client.get("/redoc")
        openapi = (await client.get("/openapi.json")).json()
    assert docs.status_code == 200
    # Every script and stylesheet is the gateway's own: nothing from a CDN.
    assert "http://" not in docs.text and "https://" not in docs.text
    assert 'src="/docs/assets/swagger-ui-bundle.js"' in docs.text
    assert bundle.status_code == 200 and "SwaggerUIBundle" in bundle.text
    assert css.status_code == 200
    assert init.status_code == 200 and "/openapi.json" in init.text
    assert unknown.status_code == 404
    assert redoc.status_code == 404
    scheme = openapi["components"]["securitySchemes"]["smart"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert {"smart": ["patient/Patient.r"]} in openapi["paths"]["/v1/me/profile"]["get"]["security"]


async def test_the_profile_comes_from_the_ehr_with_the_patients_own_token(stack: Stack) -> None:
    put = await stack.sandbox_admin.put(
        "/fhir/Patient/p-rosa",
        json={
            "resourceType": "Patient",
            "id": "p-rosa",
            "name": [{"use": "official", "family": "Diaz", "given": ["Rosa", "Maria"]}],
            "gender": "female",
            "birthDate": "1950-02-28",
        },
        headers={"Content-Type": "application/fhir+json"},
    )
    assert put.status_code in (200, 201), put.text
    token = (
        await stack.sandbox_admin.post("/dev/patient-token", json={"patient": "p-rosa"})
    ).json()["access_token"]
    async with httpx.AsyncClient(
        base_url=stack.url, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        profile = (await client.get("/v1/me/profile")).json()
        log = (await client.get("/v1/me/access-log")).json()
    today = datetime.now(UTC).date()
    age = today.year - 1950 - ((today.month, today.day) < (2, 28))
    assert profile == {
        "name": "Rosa Maria Diaz",
        "given_name": "Rosa",
        "birth_date": "1950-02-28",
        "age": age,
        "sex": "female",
    }
    assert any(row["resource"] == "Patient" for row in log)


async def test_no_phi_reaches_a_span_attribute(stack: Stack, kafka_bootstrap: str) -> None:
    _spans.clear()
    token = await _token(stack, patient="p-bea")
    async with httpx.AsyncClient(
        base_url=stack.url, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        patient_id = (await client.get("/v1/me")).json()["patient_id"]
        await client.get("/v1/me/summary")
        await client.get("/v1/me/lab-results/dr-77")
        await client.post(
            "/v1/me/triage/assess", json={"age": 48, "sex": "female", "text": "crushing chest pain"}
        )
        await produce_events(
            kafka_bootstrap, [(patient_id, _lab(patient_id))], topic_prefix=stack.prefix
        )

        async def notified() -> bool:
            return any(s.name.endswith("lab.resulted process") for s in _spans.get_finished_spans())

        await eventually(notified, timeout=60)
    spans = _spans.get_finished_spans()
    assert len(spans) > 10
    values = [f"{s.name} {k}={v}" for s in spans for k, v in (s.attributes or {}).items()]
    for secret in ("p-bea", "Ann", "Example", "crushing", "dr-77"):
        leaked = [v for v in values if secret in v.split("=", 1)[1]]
        assert leaked == [], f"{secret!r} reached span attributes: {leaked[:3]}"


async def test_an_intake_reminder_reaches_the_live_stream(
    stack: Stack, kafka_bootstrap: str
) -> None:
    token = await _token(stack)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=30) as client:
        patient_id = (await client.get("/v1/me")).json()["patient_id"]
        await produce_events(
            kafka_bootstrap,
            [
                (
                    patient_id,
                    IntakeRemindedV1(
                        appointment_id="apt-9",
                        patient_id=patient_id,
                        start=datetime.now(UTC) + timedelta(hours=20),
                        questionnaire_canonical="http://example.org/Questionnaire/intake|1",
                        reminded_at=datetime.now(UTC),
                    ),
                )
            ],
            topic_prefix=stack.prefix,
        )
        received: list[dict[str, object]] = []
        async with client.stream("GET", "/v1/me/events") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    received.append(json.loads(line[6:]))
                    break
        assert (received[0]["kind"], received[0]["ref"]) == ("intake-reminder", "apt-9")
        assert "fill in" in str(received[0]["text"])
