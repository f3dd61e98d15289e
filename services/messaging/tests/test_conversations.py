"""Conversations in messaging over HTTP, real PostgreSQL and a real broker: threads joined
across both sides, history import, read state, routing, limits, emergencies, triage.

The emergency check is the triage service's HTTP endpoint (`POST /emergency-check`): the
real triage service runs in-process with its own database, reached over HTTP through
messaging's real client; the unreachable case uses a port where nothing listens.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from contracts.base import SourceVersion
from contracts.message import MessageReceivedV1, MessageSyncedV1
from contracts.triage import TriageCompletedV1, Urgency
from devstack.topics import ensure_topics
from messaging.app import build
from messaging.settings import Settings
from servicekit.testing import (
    Seen,
    eventually,
    isolated_settings,
    produce_events,
    read_topic,
    serving_in_process,
)
from triage.app import build as build_triage
from triage.settings import Settings as TriageSettings

pytestmark = [pytest.mark.integration]
T = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x02" * 64
PDF = b"%PDF-1.4\n" + b"\x03" * 64
EMERGENCY_TEXT = "I have crushing chest pain and I cannot breathe"


Client = Callable[..., Any]


@pytest.fixture
async def running(
    database_url: str,
    database_factory: Callable[[], Awaitable[str]],
    kafka_bootstrap: str,
    unique_prefix: str,
) -> AsyncIterator[Callable[..., Any]]:
    """Start messaging with extra settings (once per test), checking messages with the real
    triage service's `POST /emergency-check` (served in-process, its own database)."""
    await ensure_topics(kafka_bootstrap, unique_prefix)
    stack: list[Any] = []

    async def start(triage: bool = True, **overrides: Any) -> httpx.AsyncClient:
        values = isolated_settings(database_url, kafka_bootstrap, unique_prefix) | {
            "environment": "test",
            "triage_url": "http://triage" if triage else "http://127.0.0.1:9",
            # The rule engine's first call loads its language pipeline.
            "emergency_check_timeout_s": 10.0 if triage else 0.5,
        }
        transport = None
        if triage:
            triage_settings = TriageSettings(
                **isolated_settings(await database_factory(), kafka_bootstrap, unique_prefix)
            )
            triage_app = build_triage(triage_settings).app
            triage_context = serving_in_process(triage_app, "http://triage")
            stack.append(triage_context)
            await triage_context.__aenter__()
            transport = httpx.ASGITransport(app=triage_app)
        service = build(Settings(**(values | overrides)), triage_transport=transport)
        context = serving_in_process(service.app, "http://messaging")
        stack.append(context)
        client: httpx.AsyncClient = await context.__aenter__()
        return client

    yield start
    for context in reversed(stack):
        await context.__aexit__(None, None, None)


async def _sent_events(
    bootstrap: str, prefix: str, until: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    def parsed(records: list[Seen]) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in records]

    records = await read_topic(
        bootstrap, f"{prefix}message.sent", until=lambda s: until(parsed(s)), timeout=60
    )
    return parsed(records)


def _now() -> datetime:
    return datetime.now(UTC)


def _behind() -> datetime:
    return (_now() - timedelta(seconds=3)).replace(microsecond=0)


def _source(fhir_id: str, version: str = "1", at: datetime = T) -> SourceVersion:
    return SourceVersion(
        resource_type="Communication", fhir_id=fhir_id, version_id=version, last_updated=at
    )


def _ack(message_id: str, thread_id: str, fhir_id: str, root: str) -> MessageSyncedV1:
    return MessageSyncedV1(
        patient_id="pat-1",
        communication_fhir_id=fhir_id,
        message_id=message_id,
        thread_id=thread_id,
        thread_fhir_id=root,
        from_patient=True,
        status="completed",
        sent_at=T,
        source=_source(fhir_id),
    )


def _clinician(fhir_id: str, *, root: str, in_reply_to: str, at: datetime) -> MessageReceivedV1:
    # As the EHR says it: threading by EHR ids only (no thread id of ours).
    return MessageReceivedV1(
        patient_id="pat-1",
        communication_fhir_id=fhir_id,
        thread_fhir_id=root,
        in_reply_to_fhir_id=in_reply_to,
        sender_display="Dr. Grace Adams",
        body=f"Answer {fhir_id}",
        sent_at=at,
        source=_source(fhir_id, at=at),
    )


async def test_clinician_answers_by_ehr_ids_land_in_the_patients_thread_with_read_state(
    running: Callable[..., Any], kafka_bootstrap: str, unique_prefix: str
) -> None:
    client = await running()
    started = await client.post(
        "/patients/pat-1/threads",
        json={"subject": "Refill", "body": "More metformin please", "topic": "prescriptions"},
    )
    assert started.status_code == 201, started.text
    thread = started.json()["thread"]
    assert (thread["pool"], thread["sent_to"]) == ("prescriptions", "prescriptions team")
    first_id = started.json()["message"]["id"]
    # The connector filed it and tells us its EHR identity.
    await produce_events(
        kafka_bootstrap,
        [("pat-1", _ack(first_id, thread["id"], "com-root", "com-root"))],
        topic_prefix=unique_prefix,
    )

    async def filed() -> bool:
        path = f"/patients/pat-1/threads/{thread['id']}/messages"
        return bool((await client.get(path)).json()[0]["ehr_status"] == "completed")

    # As in life, the EHR knows the patient's message before a clinician answers it (the
    # two events travel on different topics, so their order is only what we wait for).
    await eventually(filed, timeout=60)
    await produce_events(
        kafka_bootstrap,
        [
            (
                "pat-1",
                # An EHR whose clock runs behind ours and records `sent` to the second,
                # and an id that sorts before ours: were the answer given the answered
                # message's time, a tie would list it first.
                _clinician("0-a1", root="com-root", in_reply_to="com-root", at=_behind()),
            )
        ],
        topic_prefix=unique_prefix,
    )

    async def threads() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await client.get("/patients/pat-1/threads")).json()
        return found

    async def answered() -> bool:
        listed = await threads()
        return len(listed) == 1 and listed[0]["unread"] == 1

    await eventually(answered, timeout=60)
    inbox = (await client.get("/patients/pat-1/inbox")).json()
    assert inbox["unread"] == 1 and inbox["threads"][0]["id"] == thread["id"]
    path = f"/patients/pat-1/threads/{thread['id']}/messages"
    messages = (await client.get(path)).json()
    assert [m["direction"] for m in messages] == ["outbound", "inbound"]
    # The care team answered after reading it.
    assert messages[0]["read_by_care_team_at"] is not None

    # The patient answers twice; the care team answers the patient's SECOND message only
    # (inResponseTo a non-first message, no partOf): it still lands in the thread.
    one = await client.post(path, json={"body": "Thanks, when?"})
    two = await client.post(path, json={"body": "And the dose?"})
    assert one.status_code == two.status_code == 201
    sent = await _sent_events(kafka_bootstrap, unique_prefix, lambda es: len(es) >= 3)
    assert sent[1]["in_reply_to_fhir_id"] == "0-a1"
    assert sent[1]["thread_fhir_id"] == "com-root"
    await produce_events(
        kafka_bootstrap,
        [("pat-1", _ack(two.json()["message"]["id"], thread["id"], "com-p3", "com-root"))],
        topic_prefix=unique_prefix,
    )

    async def acked() -> bool:
        return (await client.get(path)).json()[-1]["ehr_status"] == "completed"

    # (The connector itself names our thread in such answers; here messaging finds it
    # from the EHR id it learnt.)
    await eventually(acked, timeout=60)
    await produce_events(
        kafka_bootstrap,
        [
            (
                "pat-1",
                MessageReceivedV1(
                    patient_id="pat-1",
                    communication_fhir_id="com-a2",
                    in_reply_to_fhir_id="com-p3",
                    body="500 mg twice a day.",
                    sent_at=_now(),
                    source=_source("com-a2"),
                ),
            )
        ],
        topic_prefix=unique_prefix,
    )

    async def second_answer() -> bool:
        return len((await client.get(path)).json()) == 5

    await eventually(second_answer, timeout=60)
    assert len(await threads()) == 1
    assert (await threads())[0]["unread"] == 2
    read = await client.post(f"/patients/pat-1/threads/{thread['id']}/read")
    assert read.json()["marked"] == 2
    assert (await client.get("/patients/pat-1/inbox")).json()["unread"] == 0


async def test_an_answer_the_backfill_read_before_its_notification_still_marks_hers_read(
    running: Callable[..., Any], kafka_bootstrap: str, unique_prefix: str
) -> None:
    client = await running()
    started = await client.post(
        "/patients/pat-1/threads", json={"subject": "Refill", "body": "More metformin please"}
    )
    assert started.status_code == 201, started.text
    thread = started.json()["thread"]
    path = f"/patients/pat-1/threads/{thread['id']}/messages"
    await produce_events(
        kafka_bootstrap,
        [("pat-1", _ack(started.json()["message"]["id"], thread["id"], "com-root", "com-root"))],
        topic_prefix=unique_prefix,
    )

    async def filed() -> bool:
        return bool((await client.get(path)).json()[0]["ehr_status"] == "completed")

    await eventually(filed, timeout=60)
    # A back-fill still paging through her Communications reads the clinician's answer
    # (within the second of her message) before its notification is handled.
    at = _behind()
    answer = MessageSyncedV1(
        patient_id="pat-1",
        communication_fhir_id="0-a1",
        thread_fhir_id="com-root",
        in_reply_to_fhir_id="com-root",
        from_patient=False,
        body="Sent to your pharmacy.",
        status="completed",
        sent_at=at,
        imported=True,
        source=_source("0-a1", at=at),
    )
    await produce_events(kafka_bootstrap, [("pat-1", answer)], topic_prefix=unique_prefix)

    async def listed() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await client.get(path)).json()
        return found

    async def imported() -> bool:
        return len(await listed()) == 2

    await eventually(imported, timeout=60)
    messages = await listed()
    assert [m["direction"] for m in messages] == ["outbound", "inbound"]
    assert messages[0]["read_by_care_team_at"] is not None


async def test_imported_history_forms_threads_and_later_ehr_changes_show(
    running: Callable[..., Any], kafka_bootstrap: str, unique_prefix: str
) -> None:
    client = await running()

    def imported(fhir_id: str, **extra: Any) -> MessageSyncedV1:
        values: dict[str, Any] = {
            "patient_id": "pat-1",
            "communication_fhir_id": fhir_id,
            "from_patient": True,
            "subject": "Question about metformin",
            "body": f"text of {fhir_id}",
            "status": "completed",
            "sent_at": T,
            "imported": True,
            "source": _source(fhir_id),
        }
        return MessageSyncedV1(**(values | extra))

    # The answer arrives before the question it belongs to (its thread is made first).
    answer = imported(
        "h-2",
        from_patient=False,
        sender_display="Dr. Grace Adams",
        thread_fhir_id="h-1",
        in_reply_to_fhir_id="h-1",
        sent_at=T + timedelta(hours=5),
    )
    await produce_events(
        kafka_bootstrap,
        [("pat-1", answer), ("pat-1", imported("h-1")), ("pat-1", imported("h-other"))],
        topic_prefix=unique_prefix,
    )

    async def two_threads() -> bool:
        return len((await client.get("/patients/pat-1/threads")).json()) == 2

    await eventually(two_threads, timeout=60)
    threads = (await client.get("/patients/pat-1/threads")).json()
    history = next(t for t in threads if t["id"] == "th-h-1")
    assert history["origin"] == "imported"
    assert history["subject"] == "Question about metformin"
    assert history["unread"] == 0  # history was delivered by the EHR's own channels
    path = "/patients/pat-1/threads/th-h-1/messages"
    messages = (await client.get(path)).json()
    assert [(m["direction"], m["body"]) for m in messages] == [
        ("outbound", "text of h-1"),
        ("inbound", "text of h-2"),
    ]
    assert messages[0]["read_by_care_team_at"] is None
    # Later, the EHR records that the care team read the question (a newer version).
    read_at = T + timedelta(hours=2)
    later = imported("h-1", received_at=read_at, source=_source("h-1", "2", T + timedelta(days=1)))
    stale = imported("h-1", status="entered-in-error")
    await produce_events(
        kafka_bootstrap, [("pat-1", later), ("pat-1", stale)], topic_prefix=unique_prefix
    )

    async def read_shown() -> bool:
        first = (await client.get(path)).json()[0]
        return first["read_by_care_team_at"] is not None

    await eventually(read_shown, timeout=60)
    first = (await client.get(path)).json()[0]
    assert datetime.fromisoformat(first["read_by_care_team_at"]) == read_at
    assert first["ehr_status"] == "completed"  # the stale version 1 changed nothing


async def test_emergency_language_answers_at_once_marks_the_pool_item_and_still_files(
    running: Callable[..., Any], kafka_bootstrap: str, unique_prefix: str
) -> None:
    client = await running()
    urgent = await client.post(
        "/patients/pat-1/threads",
        json={"subject": "Help", "body": EMERGENCY_TEXT, "topic": "billing"},
    )
    assert urgent.status_code == 201, urgent.text
    check = urgent.json()["emergency_check"]
    assert check["checked"] is True and check["emergency"] is True
    assert "911" in check["advice"]
    assert check["flags"]
    calm = await client.post(
        "/patients/pat-1/threads", json={"subject": "Invoice", "body": "Is my bill right?"}
    )
    assert calm.json()["emergency_check"] == {
        "checked": True,
        "emergency": False,
        "advice": None,
        "flags": [],
    }
    assert calm.json()["thread"]["sent_to"] == "billing office"  # keyword rule
    items = (await client.get("/pools/urgent-nurses/items")).json()
    assert [(i["kind"], i["emergency"], i["urgency"]) for i in items] == [
        ("patient-message", True, "emergency")
    ]
    assert items[0]["thread_id"] == urgent.json()["thread"]["id"]
    sent = await _sent_events(kafka_bootstrap, unique_prefix, lambda es: len(es) >= 2)
    assert [e["emergency"] for e in sent] == [True, False]
    assert sent[0]["body"] == EMERGENCY_TEXT


async def test_when_triage_is_unreachable_the_message_is_filed_and_flagged_for_review(
    running: Callable[..., Any], kafka_bootstrap: str, unique_prefix: str
) -> None:
    client = await running(triage=False)
    sent = await client.post(
        "/patients/pat-1/threads", json={"subject": "Knee", "body": "My knee hurts"}
    )
    assert sent.status_code == 201
    check = sent.json()["emergency_check"]
    assert check["checked"] is False and check["emergency"] is False
    assert "911" in check["advice"]
    items = (await client.get("/pools/care-team/items")).json()
    assert items[0]["needs_review"] is True
    events = await _sent_events(kafka_bootstrap, unique_prefix, lambda es: len(es) >= 1)
    assert events[0]["needs_review"] is True


async def test_rate_limit_body_and_attachment_limits(
    running: Callable[..., Any], kafka_bootstrap: str, unique_prefix: str
) -> None:
    client = await running(
        rate_limit_messages=3, rate_limit_window_s=600, attachment_max_bytes=100, body_max_chars=50
    )
    attachment = {
        "content_type": "application/pdf",
        "title": "letter.pdf",
        "data_base64": base64.b64encode(PDF).decode(),
    }
    first = await client.post(
        "/patients/pat-1/threads",
        json={"subject": "Letter", "body": "See attached", "attachments": [attachment]},
    )
    assert first.status_code == 201, first.text
    described = first.json()["message"]["attachments"][0]
    assert (described["content_type"], described["size"]) == ("application/pdf", len(PDF))
    got = await client.get(f"/patients/pat-1/attachments/{described['id']}")
    assert got.content == PDF
    assert (await client.get(f"/patients/pat-2/attachments/{described['id']}")).status_code == 404
    wrong_type = {**attachment, "content_type": "text/html"}
    too_big = {**attachment, "data_base64": base64.b64encode(PDF * 3).decode()}
    fake = {**attachment, "data_base64": base64.b64encode(PNG).decode()}
    for bad, status in ((wrong_type, 415), (too_big, 413), (fake, 422)):
        refused = await client.post(
            "/patients/pat-1/threads", json={"subject": "x", "body": "y", "attachments": [bad]}
        )
        assert refused.status_code == status, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
    too_long = await client.post("/patients/pat-1/threads", json={"subject": "x", "body": "y" * 51})
    assert too_long.status_code == 413
    unknown_topic = await client.post(
        "/patients/pat-1/threads", json={"subject": "x", "body": "y", "topic": "gardening"}
    )
    assert unknown_topic.status_code == 422
    thread_id = first.json()["thread"]["id"]
    path = f"/patients/pat-1/threads/{thread_id}/messages"
    assert (await client.post(path, json={"body": "two"})).status_code == 201
    assert (await client.post(path, json={"body": "three"})).status_code == 201
    limited = await client.post(path, json={"body": "four"})
    assert limited.status_code == 429
    assert 0 < int(limited.headers["Retry-After"]) <= 600
    # Another patient is not limited by pat-1's messages.
    other = await client.post("/patients/pat-2/threads", json={"subject": "a", "body": "b"})
    assert other.status_code == 201
    sent = await _sent_events(kafka_bootstrap, unique_prefix, lambda es: len(es) >= 4)
    # Partitions interleave patients: find pat-1's first message.
    with_file = next(e for e in sent if e["message_id"] == first.json()["message"]["id"])
    assert with_file["attachments"][0]["content_type"] == "application/pdf"
    assert base64.b64decode(with_file["attachments"][0]["data_base64"]) == PDF
    topics = (await client.get("/topics")).json()
    assert {t["code"] for t in topics} == {
        "prescriptions",
        "test-results",
        "appointments",
        "billing",
        "clinical-question",
        "other",
    }


async def test_an_urgent_triage_result_opens_a_thread_filed_with_the_care_team(
    running: Callable[..., Any], kafka_bootstrap: str, unique_prefix: str
) -> None:
    client = await running()

    def completed(session_id: str, urgency: Urgency) -> TriageCompletedV1:
        return TriageCompletedV1(
            session_id=session_id,
            patient_id="pat-1",
            urgency=urgency,
            summary=f"Fever for 3 days ({session_id})",
            rule_set_version="1",
            recommended_pool="care-team",
            completed_at=T,
        )

    await produce_events(
        kafka_bootstrap,
        [
            ("pat-1", completed("s-urgent", Urgency.URGENT)),
            ("pat-1", completed("s-self", Urgency.SELF_CARE)),
        ],
        topic_prefix=unique_prefix,
    )
    sent = await _sent_events(kafka_bootstrap, unique_prefix, lambda es: len(es) >= 1)
    assert sent[0]["thread_id"] == "th-triage-s-urgent"
    assert sent[0]["recipient_pool"] == "urgent-nurses"
    assert sent[0]["body"] == "Fever for 3 days (s-urgent)"
    threads = (await client.get("/patients/pat-1/threads")).json()
    assert [(t["id"], t["origin"], t["sent_to"]) for t in threads] == [
        ("th-triage-s-urgent", "triage", "urgent care nurses")
    ]

    async def both_queued() -> bool:
        items = (await client.get("/pools/care-team/items")).json()
        return len(items) == 1

    await eventually(both_queued, timeout=60)
    urgent_items = (await client.get("/pools/urgent-nurses/items")).json()
    assert urgent_items[0]["thread_id"] == "th-triage-s-urgent"
    assert (await client.get("/pools/care-team/items")).json()[0]["thread_id"] is None
