"""The optional language-model review, against a fake OpenAI-compatible server on loopback
that answers adversarially: it tries to lower the urgency, sends malformed or mis-shaped
JSON, fails, or never answers. The rules' result must stand in every such case; the model
may only raise the urgency or add findings the rules then weigh."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from devstack.topics import ensure_topics
from ehr_sandbox.testing.http import free_port, serve
from servicekit.testing import isolated_settings, serving_in_process
from triage.app import build
from triage.settings import Settings

pytestmark = [pytest.mark.integration]


@dataclass
class FakeModel:
    """What the fake chat endpoint answers next, and what it was asked."""

    mode: str = "raise"
    content: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def _fake_app(fake: FakeModel) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        fake.requests.append(await request.json())
        if fake.mode == "hang":
            await fake.release.wait()  # never answers within the client's timeout
        if fake.mode == "error":
            return JSONResponse({"error": "overloaded"}, status_code=500)
        return JSONResponse(
            {"choices": [{"message": {"role": "assistant", "content": fake.content}}]}
        )

    return app


@pytest.fixture
async def stack(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeModel]]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    fake = FakeModel()
    async with serve(_fake_app(fake), free_port()) as model_url:
        settings = Settings(
            **isolated_settings(database_url, kafka_bootstrap, unique_prefix),
            triage_llm_url=f"{model_url}/v1",
            # Generous, so an answering fake always answers in time on a loaded machine;
            # only the "hang" case waits it out.
            triage_llm_timeout_s=5.0,
        )
        service = build(settings)
        async with serving_in_process(service.app, "http://triage") as http:
            yield http, fake
        fake.release.set()


async def _assess(http: httpx.AsyncClient, text: str, age: int = 30) -> dict[str, Any]:
    response = await http.post(
        "/patients/pat-1/assess", json={"age": age, "sex": "female", "text": text}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _answer(fake: FakeModel, **opinion: Any) -> None:
    fake.mode = "answer"
    fake.content = json.dumps(opinion)


async def test_model_cannot_lower_the_rules_urgency(
    stack: tuple[httpx.AsyncClient, FakeModel],
) -> None:
    http, fake = stack
    _answer(fake, urgency="self-care", concepts=[], reason="probably nothing")
    body = await _assess(http, "I feel a bit off")
    assert body["urgency"] == "urgent"
    assert "model-review" not in {f["id"] for f in body["flags"]}
    assert len(fake.requests) == 1
    # The model is told the concept list and the rules' urgency, and asked for JSON.
    request = fake.requests[0]
    assert request["response_format"] == {"type": "json_object"}
    assert json.loads(request["messages"][1]["content"])["rules_urgency"] == "urgent"


async def test_model_is_not_consulted_for_an_emergency(
    stack: tuple[httpx.AsyncClient, FakeModel],
) -> None:
    http, fake = stack
    _answer(fake, urgency="self-care", reason="calm down")
    body = await _assess(http, "I can't breathe")
    assert body["urgency"] == "emergency"
    assert fake.requests == []


async def test_model_may_raise_the_urgency_with_a_flag(
    stack: tuple[httpx.AsyncClient, FakeModel],
) -> None:
    http, fake = stack
    _answer(fake, urgency="urgent", concepts=[], reason="symptoms for a long time")
    body = await _assess(http, "runny nose and sneezing")
    assert body["urgency"] == "urgent"
    flag = next(f for f in body["flags"] if f["id"] == "model-review")
    assert flag["level"] == "amber"
    assert "symptoms for a long time" in flag["text"]


async def test_model_findings_go_through_the_rules(
    stack: tuple[httpx.AsyncClient, FakeModel],
) -> None:
    http, fake = stack
    _answer(fake, urgency="routine", concepts=["neck-stiffness", "not-a-concept"], reason="neck")
    body = await _assess(http, "headache and a temperature")
    assert body["urgency"] == "emergency"
    assert "headache-meningism" in {f["id"] for f in body["flags"]}


@pytest.mark.parametrize(
    ("mode", "content"),
    [
        ("answer", "the patient is fine, no JSON here"),
        ("answer", '{"urgency": "whenever", "reason": "x"}'),
        ("answer", '["emergency"]'),
        ("answer", '{"urgency": "emergency", "concepts": "neck-stiffness"}'),
        ("error", ""),
        ("hang", ""),
    ],
)
async def test_a_broken_or_silent_model_leaves_the_rules_result(
    stack: tuple[httpx.AsyncClient, FakeModel], mode: str, content: str
) -> None:
    http, fake = stack
    fake.mode, fake.content = mode, content
    body = await _assess(http, "runny nose and sneezing")
    assert body["urgency"] == "self-care"
    assert "model-review" not in {f["id"] for f in body["flags"]}
    if mode != "hang":  # a hung request may be cut off before the fake even reads it
        assert len(fake.requests) == 1
