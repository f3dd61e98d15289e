"""The triage service through its HTTP API, on PostgreSQL and a real broker: the cases the
issue reported as mis-triaged, the interactive session, the emergency check for messages,
and `triage.completed` carrying flags, answers and the patient's words."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devstack.topics import ensure_topics
from servicekit.testing import isolated_settings, read_topic, serving_in_process
from triage.app import build
from triage.settings import Settings

pytestmark = [pytest.mark.integration]

# The first paragraph of issue 8: each was answered "routine" (or "urgent") before.
REPORTED = [
    (60, "male", "crushing pain in my chest that goes down my left arm", "chest-pain-acs-features"),
    (35, "female", "No fever but I cannot breathe", "severe-breathing-difficulty"),
    (30, "male", "I can't breath", "severe-breathing-difficulty"),
    (30, "female", "trouble breathing", "severe-breathing-difficulty"),
    (24, "male", "I want to kil myself", "suicide-risk"),
    (19, "female", "I took 30 paracetamol tablets", "overdose"),
    (45, "male", "thinking of ending it all", "suicide-risk"),
    (70, "male", "sudden weakness in my left arm and leg", "stroke-fast"),
    (30, "female", "I was stung by a bee and now my throat feels tight", "anaphylaxis"),
    (44, "female", "sudden headache, the worst headache of my life", "headache-thunderclap"),
    (50, "male", "back pain and I have lost control of my bladder", "cauda-equina"),
    (66, "male", "I have black tarry stools and I feel dizzy", "upper-gi-bleed"),
    (80, "female", "I am 80, I fell this morning and now I am confused", "fall-red"),
    (6, "male", "My 6-year-old has a fever and a stiff neck", "fever-meningitis"),
]


@pytest.fixture
async def client(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    service = build(Settings(**isolated_settings(database_url, kafka_bootstrap, unique_prefix)))
    async with serving_in_process(service.app, "http://triage") as http:
        yield http


def _flag_ids(body: dict[str, Any]) -> set[str]:
    return {f["id"] for f in body["flags"]}


@pytest.mark.parametrize(("age", "sex", "text", "flag"), REPORTED)
async def test_reported_emergencies_are_emergencies(
    client: httpx.AsyncClient, age: int, sex: str, text: str, flag: str
) -> None:
    response = await client.post(
        "/patients/pat-1/assess", json={"age": age, "sex": sex, "text": text}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["urgency"] == "emergency", body
    assert flag in _flag_ids(body)
    assert body["questions"] == []  # an emergency asks nothing: call now
    red = next(f for f in body["flags"] if f["id"] == flag)
    spans = [e for e in red["evidence"] if e["source"] == "text" and e["start"] is not None]
    if spans:  # evidence points into the patient's own words
        assert all(text[e["start"] : e["end"]] == e["text"] for e in spans)


async def test_crisis_advice_for_self_harm(client: httpx.AsyncClient) -> None:
    body = (
        await client.post(
            "/patients/pat-1/assess",
            json={"age": 30, "sex": "other", "text": "I want to end my life"},
        )
    ).json()
    assert body["urgency"] == "emergency"
    assert "988" in body["advice"]
    assert body["recommended_pool"] == "mental-health"


async def test_unclear_text_is_urgent_never_self_care(client: httpx.AsyncClient) -> None:
    body = (
        await client.post(
            "/patients/pat-1/assess", json={"age": 30, "sex": "unknown", "text": "I feel a bit off"}
        )
    ).json()
    assert body["urgency"] == "urgent"
    assert "nurse" in body["advice"]


async def test_one_shot_lists_questions_and_accepts_answers(client: httpx.AsyncClient) -> None:
    first = (
        await client.post(
            "/patients/pat-1/assess",
            json={"age": 25, "sex": "male", "text": "some chest tightness after the gym"},
        )
    ).json()
    assert first["urgency"] == "urgent"
    assert "cp-radiation" in {q["id"] for q in first["questions"]}
    again = await client.post(
        "/patients/pat-1/assess",
        json={
            "age": 25,
            "sex": "male",
            "text": "some chest tightness after the gym",
            "answers": {"cp-radiation": True},
        },
    )
    assert again.json()["urgency"] == "emergency"
    evidence = again.json()["flags"][0]["evidence"]
    assert {"text": "cp-radiation=True", "start": None, "end": None, "source": "answer"} in evidence


async def test_infant_fever_threshold_by_age_in_months(client: httpx.AsyncClient) -> None:
    young = await client.post(
        "/patients/pat-1/assess",
        json={"age": 0, "age_months": 2, "sex": "female", "text": "temperature 38.1 C, feeding ok"},
    )
    older = await client.post(
        "/patients/pat-1/assess",
        json={"age": 4, "sex": "female", "text": "temperature 38.1 C, feeding ok"},
    )
    assert young.json()["urgency"] == "emergency"
    assert "infant-fever-under-3m" in _flag_ids(young.json())
    assert older.json()["urgency"] != "emergency"


async def test_bad_requests_are_clear_4xx(client: httpx.AsyncClient) -> None:
    bad_age = await client.post(
        "/patients/pat-1/assess", json={"age": "old", "sex": "female", "text": "headache"}
    )
    bad_answer = await client.post(
        "/patients/pat-1/assess",
        json={"age": 30, "sex": "female", "text": "headache", "answers": {"no-such-q": True}},
    )
    wrong_kind = await client.post(
        "/patients/pat-1/assess",
        json={"age": 30, "sex": "female", "text": "headache", "answers": {"ha-sudden": "maybe"}},
    )
    missing = await client.get("/patients/pat-1/sessions/tri-nothing")
    assert bad_age.status_code == 422
    assert bad_answer.status_code == 422
    assert wrong_kind.status_code == 422
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


async def test_interactive_session_asks_then_completes_and_publishes(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    text = "I have a headache and feel hot"
    started = await client.post(
        "/patients/pat-7/sessions", json={"age": 34, "sex": "female", "text": text}
    )
    assert started.status_code == 201, started.text
    state = started.json()
    assert state["status"] == "open"
    asked = {q["id"] for q in state["questions"]}
    assert "ha-neck" in asked
    sid = state["session_id"]

    unknown = await client.post(
        f"/patients/pat-7/sessions/{sid}/answers", json={"answers": {"cp-radiation": 1}}
    )
    assert unknown.status_code == 422
    other_patient = await client.post(
        f"/patients/pat-8/sessions/{sid}/answers", json={"answers": {"ha-neck": True}}
    )
    assert other_patient.status_code == 404

    answered = await client.post(
        f"/patients/pat-7/sessions/{sid}/answers", json={"answers": {"ha-neck": True}}
    )
    assert answered.status_code == 200, answered.text
    done = answered.json()
    assert done["urgency"] == "emergency"
    assert done["status"] == "completed"
    assert done["answers"] == {"ha-neck": True}
    again = await client.post(
        f"/patients/pat-7/sessions/{sid}/answers", json={"answers": {"ha-fever": True}}
    )
    assert again.status_code == 409

    fetched = (await client.get(f"/patients/pat-7/sessions/{sid}")).json()
    assert fetched["status"] == "completed"
    history = (await client.get("/patients/pat-7/sessions")).json()
    assert [h["session_id"] for h in history] == [sid]

    seen = await read_topic(
        kafka_bootstrap, f"{unique_prefix}triage.completed", until=lambda s: len(s) >= 1
    )
    event = json.loads(seen[0].value)
    assert event["session_id"] == sid
    assert event["urgency"] == "emergency"
    assert event["patient_text"] == text
    assert event["answers"][0]["question_id"] == "ha-neck"
    assert event["answers"][0]["answer"] == "yes"
    assert "headache-meningism" in {f["id"] for f in event["flags"]}


async def test_session_finish_completes_with_questions_unanswered(
    client: httpx.AsyncClient,
) -> None:
    started = (
        await client.post(
            "/patients/pat-9/sessions", json={"age": 40, "sex": "male", "text": "I have a headache"}
        )
    ).json()
    assert started["status"] == "open"
    finished = await client.post(
        f"/patients/pat-9/sessions/{started['session_id']}/answers",
        json={"answers": {"ha-fever": False}},
    )
    assert finished.json()["status"] == "open"  # other questions are still worth asking
    finished = await client.post(
        f"/patients/pat-9/sessions/{started['session_id']}/answers", json={"finish": True}
    )
    assert finished.json()["status"] == "completed"
    assert finished.json()["answers"] == {"ha-fever": False}
    assert finished.json()["urgency"] == "self-care"


async def test_emergency_check_for_messages(client: httpx.AsyncClient) -> None:
    urgent = await client.post(
        "/emergency-check",
        json={"text": "Re: my refill. Also I can't breathe properly since lunch"},
    )
    calm = await client.post("/emergency-check", json={"text": "Can I get a refill of my inhaler?"})
    negated = await client.post(
        "/emergency-check", json={"text": "No chest pain, no trouble breathing, just a question"}
    )
    assert urgent.status_code == 200
    assert urgent.json()["emergency"] is True
    assert urgent.json()["advice"].startswith("Call emergency services")
    assert urgent.json()["flags"][0]["evidence"][0]["text"] == "can't breathe"
    assert calm.json()["emergency"] is False
    assert calm.json()["advice"] is None
    assert negated.json()["emergency"] is False


async def test_a_retried_command_with_its_key_has_one_effect(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    """A client that lost the answer retries with the same Idempotency-Key: the same result
    comes back, and only one `triage.completed` (one EHR Task) is published."""
    body = {"age": 52, "sex": "male", "text": "chest pain and sweating"}
    key = {"Idempotency-Key": "assess-try-1"}
    first = await client.post("/patients/pat-9/assess", json=body, headers=key)
    again = await client.post("/patients/pat-9/assess", json=body, headers=key)
    assert first.status_code == again.status_code == 201, again.text
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["session_id"] == first.json()["session_id"]
    other = await client.post(
        "/patients/pat-9/assess", json=body | {"text": "a cough"}, headers=key
    )
    assert other.status_code == 422  # the key belongs to another request
    # Another patient's request with the same key is its own.
    theirs = await client.post("/patients/pat-10/assess", json=body, headers=key)
    assert theirs.status_code == 201
    assert theirs.json()["session_id"] != first.json()["session_id"]

    started = await client.post(
        "/patients/pat-9/sessions",
        json={"age": 34, "sex": "female", "text": "I have a headache and feel hot"},
        headers={"Idempotency-Key": "start-1"},
    )
    sid = started.json()["session_id"]
    path = f"/patients/pat-9/sessions/{sid}/answers"
    answer = {"answers": {"ha-neck": True}}
    done = await client.post(path, json=answer, headers={"Idempotency-Key": "answer-1"})
    retried = await client.post(path, json=answer, headers={"Idempotency-Key": "answer-1"})
    assert done.status_code == retried.status_code == 200, retried.text
    assert retried.json() == done.json()  # not 409: the retry gets the original answer

    seen = await read_topic(
        kafka_bootstrap, f"{unique_prefix}triage.completed", until=lambda s: len(s) >= 3
    )
    sessions = [json.loads(m.value)["session_id"] for m in seen]
    assert sorted(sessions) == sorted(
        [first.json()["session_id"], theirs.json()["session_id"], sid]
    )
