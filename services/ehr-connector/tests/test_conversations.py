"""Conversations across both sides, against the sandbox over HTTP and a real broker.

- a patient's message is filed to the pool's recipient from the recipients file, with its
  attachment and emergency priority, and `message.synced` tells messaging its EHR identity;
  the clinician's reply (sandbox simulator, `partOf` the patient's message) is published
  with OUR thread id; the patient's answer is filed `partOf` the same EHR thread;
- the back-fill imports the patient's existing Communications as `message.synced`, with
  their threading, who sent them and the care team's read time;
- a recipients file naming a recipient the EHR does not have stops start-up, naming it.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager

from contracts.message import MessageAttachment, MessageSentV1
from devstack.topics import ensure_topics
from ehr_connector.app import build
from ehr_connector.outbound.service.recipients import RecipientsError
from ehr_connector.settings import Settings
from ehr_sandbox.testing.http import RunningSandbox
from servicekit.testing import produce_events

from .inbound_support import (
    Published,
    connector_settings,
    ehr_sandbox,
    link,
    read_events,
    running_connector,
    simulate,
    wait_linked,
    wait_subscriptions_active,
)

pytestmark = [pytest.mark.integration]
ALICE = "pt-alice"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 40


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[RunningSandbox]:
    async with ehr_sandbox(tmp_path / "ehr") as running:
        yield running


def _settings(
    box: RunningSandbox,
    database_url: str,
    bootstrap: str,
    prefix: str,
    idempotence: bool,
    **kw: Any,
) -> Settings:
    return connector_settings(
        box, database_url=database_url, bootstrap=bootstrap, prefix=prefix, idempotence=idempotence,
        **kw,
    )  # fmt: skip


def _sent(message_id: str, body: str, **extra: Any) -> MessageSentV1:
    values: dict[str, Any] = {
        "message_id": message_id,
        "thread_id": "th-metformin",
        "patient_id": ALICE,
        "recipient_pool": "prescriptions",
        "subject": "Metformin refill",
        "body": body,
        "sent_at": datetime.now(UTC),
    }
    return MessageSentV1(**(values | extra))


async def _read(box: RunningSandbox, reference: str) -> dict[str, Any]:
    response = await box.admin.get(f"/fhir/{reference}")
    response.raise_for_status()
    resource: dict[str, Any] = response.json()
    return resource


def _synced_for(events: list[Published], message_id: str) -> dict[str, Any] | None:
    return next((e.data for e in events if e.data.get("message_id") == message_id), None)


async def test_a_clinician_reply_names_our_thread_and_the_patients_answer_stays_in_it(
    box: RunningSandbox,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    settings = _settings(
        box, database_url, kafka_bootstrap, unique_prefix, kafka_enable_idempotence
    )
    async with running_connector(settings):
        await wait_subscriptions_active(settings)
        await link(kafka_bootstrap, unique_prefix, ALICE, "demo-alice", backfill=False)
        await wait_linked(settings, ALICE)
        first = _sent(
            "msg-1",
            "I am running out of metformin.",
            emergency=True,
            attachments=[
                MessageAttachment(
                    attachment_id="att-1",
                    content_type="image/png",
                    title="label.png",
                    size=len(PNG),
                    data_base64=base64.b64encode(PNG).decode(),
                )
            ],
        )
        await produce_events(kafka_bootstrap, [(ALICE, first)], topic_prefix=unique_prefix)
        synced_topic = f"{unique_prefix}message.synced"
        synced = await read_events(
            kafka_bootstrap, synced_topic, lambda es: _synced_for(es, "msg-1") is not None
        )
        ack = _synced_for(synced, "msg-1")
        assert ack is not None
        root = ack["communication_fhir_id"]
        assert ack["thread_id"] == "th-metformin"
        assert ack["thread_fhir_id"] == root  # the thread's first message is its root
        assert ack["from_patient"] is True
        filed = await _read(box, f"Communication/{root}")
        # The pool's recipient comes from the recipients file.
        assert filed["recipient"] == [{"reference": "PractitionerRole/role-np-chen"}]
        assert filed["priority"] == "stat"
        assert "emergency" in filed["note"][0]["text"]
        attachment = filed["payload"][1]["contentAttachment"]
        assert attachment["contentType"] == "image/png"
        assert base64.b64decode(attachment["data"]) == PNG

        # The clinician answers in the EHR, in the thread of Alice's message.
        written = await simulate(box, "message-reply", patient="demo-alice", text="Sent it.")
        reply_id = written[-1]["reference"].split("/")[1]
        received = await read_events(
            kafka_bootstrap,
            f"{unique_prefix}message.received",
            lambda es: any(e.data["communication_fhir_id"] == reply_id for e in es),
        )
        answer = next(e.data for e in received if e.data["communication_fhir_id"] == reply_id)
        assert answer["thread_id"] == "th-metformin"
        assert answer["thread_fhir_id"] == root
        assert answer["in_reply_to_fhir_id"] == root
        assert answer["subject"] == "Metformin refill"

        # Alice answers the clinician: filed in the same EHR thread.
        second = _sent("msg-2", "Thank you!", in_reply_to_fhir_id=reply_id)
        await produce_events(kafka_bootstrap, [(ALICE, second)], topic_prefix=unique_prefix)
        synced = await read_events(
            kafka_bootstrap, synced_topic, lambda es: _synced_for(es, "msg-2") is not None
        )
        ack2 = _synced_for(synced, "msg-2")
        assert ack2 is not None and ack2["thread_fhir_id"] == root
        follow_up = await _read(box, f"Communication/{ack2['communication_fhir_id']}")
        assert follow_up["partOf"] == [{"reference": f"Communication/{root}"}]
        assert follow_up["inResponseTo"] == [{"reference": f"Communication/{reply_id}"}]
        assert "priority" not in follow_up

        # A clinician answers Alice's second message only (no partOf): the Communication
        # it answers carries our thread id, so the answer still names her thread.
        created = await box.admin.post(
            "/fhir/Communication",
            json={
                "resourceType": "Communication",
                "status": "completed",
                "subject": {"reference": "Patient/demo-alice"},
                "recipient": [{"reference": "Patient/demo-alice"}],
                "sender": {"reference": "Practitioner/dr-adams"},
                "inResponseTo": [{"reference": f"Communication/{follow_up['id']}"}],
                "sent": datetime.now(UTC).isoformat(),
                "payload": [{"contentString": "Twice a day."}],
            },
        )
        assert created.status_code == 201, created.text
        late_id = created.json()["id"]
        received = await read_events(
            kafka_bootstrap,
            f"{unique_prefix}message.received",
            lambda es: any(e.data["communication_fhir_id"] == late_id for e in es),
        )
        late = next(e.data for e in received if e.data["communication_fhir_id"] == late_id)
        assert late["thread_id"] == "th-metformin"
        assert late["in_reply_to_fhir_id"] == follow_up["id"]


async def test_backfill_imports_the_patients_conversations_with_their_threading(
    box: RunningSandbox,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    settings = _settings(
        box, database_url, kafka_bootstrap, unique_prefix, kafka_enable_idempotence,
        inbound_enabled=False,
    )  # fmt: skip
    async with running_connector(settings):
        await link(kafka_bootstrap, unique_prefix, ALICE, "demo-alice", backfill=True)
        events = await read_events(
            kafka_bootstrap,
            f"{unique_prefix}message.synced",
            lambda es: (
                {"alice-msg-1", "alice-msg-2"} <= {e.data["communication_fhir_id"] for e in es}
            ),
            timeout=120,
        )
    by_id = {e.data["communication_fhir_id"]: e.data for e in events}
    question, answer = by_id["alice-msg-1"], by_id["alice-msg-2"]
    assert all(e.key == ALICE for e in events)
    assert question["from_patient"] is True and answer["from_patient"] is False
    assert question["imported"] is True and answer["imported"] is True
    assert question["thread_fhir_id"] is None  # the root of its thread
    assert answer["thread_fhir_id"] == "alice-msg-1"
    assert answer["in_reply_to_fhir_id"] == "alice-msg-1"
    assert question["subject"] == "Question about metformin"
    assert question["body"].startswith("Should I take metformin")
    assert question["source"]["resource_type"] == "Communication"


async def test_a_recipient_the_ehr_does_not_have_stops_start_up_with_a_clear_error(
    box: RunningSandbox,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    settings = _settings(
        box, database_url, kafka_bootstrap, unique_prefix, kafka_enable_idempotence,
        inbound_enabled=False, ehr_care_teams_by_pool={"billing": "no-such-team"},
    )  # fmt: skip
    service = build(settings)
    with pytest.raises(RecipientsError, match=r"CareTeam/no-such-team \(pools: billing\)"):
        async with LifespanManager(service.app, startup_timeout=60):
            pass
