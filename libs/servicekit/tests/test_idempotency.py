"""Idempotent commands through a kit service's HTTP API on PostgreSQL: a retry replays the
original answer and has no second effect, a reused key with another body is refused, a
refusal is not stored, and concurrent requests with one key have one effect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from servicekit.app import Service, ServiceDefinition, create_service
from servicekit.idempotency import IdempotencyKey, idempotent
from servicekit.settings import ServiceSettings
from servicekit.testing import isolated_settings, serving_in_process

from .fakeservice import Base, Effect

pytestmark = [pytest.mark.integration]
router = APIRouter()


class OrderIn(BaseModel):
    marker: str


@router.post("/patients/{patient_id}/orders", status_code=201)
async def place_order(
    patient_id: str, body: OrderIn, request: Request, key: IdempotencyKey = None
) -> JSONResponse:
    async def action(session: AsyncSession) -> dict[str, object]:
        if body.marker == "refused":
            raise HTTPException(409, "refused")
        effect = Effect(
            event_id="-", patient_id=patient_id, marker=body.marker, at=datetime.now(UTC)
        )
        session.add(effect)
        await session.flush()
        return {"effect": effect.id, "marker": body.marker}

    return await idempotent(request, f"{patient_id}:order", key, body, action, status=201)


@pytest.fixture
async def service(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    settings = ServiceSettings(**isolated_settings(database_url, kafka_bootstrap, unique_prefix))
    running = create_service(
        ServiceDefinition(settings=settings, title="orders", api=router, metadata=Base.metadata)
    )
    async with serving_in_process(running.app, "http://orders") as http:
        yield running, http


async def _effects(running: Service) -> int:
    async with running.db.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(Effect))).scalar_one())


async def test_a_retry_replays_the_original_status_and_body_without_a_second_effect(
    service: tuple[Service, httpx.AsyncClient],
) -> None:
    running, http = service
    headers = {"Idempotency-Key": "k-1"}
    first = await http.post("/patients/p1/orders", json={"marker": "a"}, headers=headers)
    retry = await http.post("/patients/p1/orders", json={"marker": "a"}, headers=headers)
    assert (first.status_code, retry.status_code) == (201, 201)
    assert retry.json() == first.json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert await _effects(running) == 1
    # The same key of another patient is another command.
    other = await http.post("/patients/p2/orders", json={"marker": "a"}, headers=headers)
    assert other.status_code == 201 and other.json() != first.json()
    # No key: every request is a new command.
    await http.post("/patients/p1/orders", json={"marker": "a"})
    await http.post("/patients/p1/orders", json={"marker": "a"})
    assert await _effects(running) == 4


async def test_the_same_key_with_another_body_is_422(
    service: tuple[Service, httpx.AsyncClient],
) -> None:
    running, http = service
    headers = {"Idempotency-Key": "k-2"}
    await http.post("/patients/p1/orders", json={"marker": "a"}, headers=headers)
    reused = await http.post("/patients/p1/orders", json={"marker": "b"}, headers=headers)
    assert reused.status_code == 422
    assert reused.headers["content-type"] == "application/problem+json"
    assert "Idempotency-Key" in reused.json()["detail"]
    assert await _effects(running) == 1


async def test_a_refused_command_is_not_stored_so_a_retry_is_judged_again(
    service: tuple[Service, httpx.AsyncClient],
) -> None:
    running, http = service
    headers = {"Idempotency-Key": "k-3"}
    refused = await http.post("/patients/p1/orders", json={"marker": "refused"}, headers=headers)
    assert refused.status_code == 409
    again = await http.post("/patients/p1/orders", json={"marker": "refused"}, headers=headers)
    assert again.status_code == 409
    assert "Idempotent-Replayed" not in again.headers
    assert await _effects(running) == 0


async def test_concurrent_requests_with_one_key_have_one_effect_and_one_answer(
    service: tuple[Service, httpx.AsyncClient],
) -> None:
    running, http = service
    headers = {"Idempotency-Key": "k-4"}
    answers = await asyncio.gather(
        *(
            http.post("/patients/p1/orders", json={"marker": "c"}, headers=headers)
            for _ in range(10)
        )
    )
    assert {a.status_code for a in answers} == {201}
    assert len({a.text for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 9
    assert await _effects(running) == 1


async def test_an_invalid_key_is_refused(service: tuple[Service, httpx.AsyncClient]) -> None:
    _, http = service
    bad = await http.post(
        "/patients/p1/orders", json={"marker": "a"}, headers={"Idempotency-Key": "x" * 201}
    )
    assert bad.status_code == 422
