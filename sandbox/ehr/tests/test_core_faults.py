"""Fault injection on /fhir: errors, rate limiting with Retry-After, a down window, latency."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from ehr_sandbox.faults import FaultConfig
from ehr_sandbox.testing import Sandbox


async def _set(sandbox: Sandbox, **config: object) -> dict[str, object]:
    response = await sandbox.client.post("/sandbox/faults", json=config)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_error_rate_one_fails_every_fhir_call(sandbox: Sandbox) -> None:
    await _set(sandbox, error_rate=1.0)
    for _ in range(3):
        response = await sandbox.client.get("/fhir/Patient")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        sandbox.outcome(response)
    # Only /fhir is affected: health checks and the fault API itself keep working.
    assert (await sandbox.client.get("/healthz")).status_code == 200
    assert (await sandbox.client.get("/sandbox/faults")).status_code == 200
    await _set(sandbox, error_rate=1.0, error_status=500)
    assert (await sandbox.client.get("/fhir/metadata")).status_code == 500


async def test_error_rate_is_a_rate(sandbox: Sandbox) -> None:
    await _set(sandbox, error_rate=0.5)
    statuses = [(await sandbox.client.get("/fhir/metadata")).status_code for _ in range(60)]
    assert 5 < statuses.count(503) < 55
    assert statuses.count(200) + statuses.count(503) == 60


async def test_rate_limit_answers_429_with_retry_after(sandbox: Sandbox) -> None:
    await _set(sandbox, rate_limit={"rate": 2.0, "retry_after_s": 7})
    statuses = [(await sandbox.client.get("/fhir/metadata")).status_code for _ in range(5)]
    assert statuses[:2] == [200, 200]
    assert 429 in statuses[2:]
    limited = await sandbox.client.get("/fhir/metadata")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert {i["code"] for i in sandbox.outcome(limited)["issue"]} == {"throttled"}
    await asyncio.sleep(0.6)  # the bucket refills at 2 requests per second
    assert (await sandbox.client.get("/fhir/metadata")).status_code == 200


async def test_down_window(sandbox: Sandbox) -> None:
    shown = await _set(sandbox, down_for_s=0.4)
    assert 0 < float(str(shown["down_remaining_s"])) <= 0.4
    down = await sandbox.client.get("/fhir/Patient")
    assert down.status_code == 503
    assert int(down.headers["retry-after"]) >= 1
    sandbox.outcome(down)
    await asyncio.sleep(0.5)
    assert (await sandbox.client.get("/fhir/Patient")).status_code == 200


async def test_latency(sandbox: Sandbox) -> None:
    await _set(sandbox, latency_ms=300)
    started = time.monotonic()
    assert (await sandbox.client.get("/fhir/metadata")).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert (await sandbox.client.get("/healthz")).status_code == 200
    assert time.monotonic() - started < 0.3


async def test_show_and_reset(sandbox: Sandbox) -> None:
    await _set(
        sandbox,
        latency_ms=5,
        notification_drop_rate=0.25,
        notification_duplicate_rate=0.1,
        notification_reorder=True,
    )
    shown = (await sandbox.client.get("/sandbox/faults")).json()
    assert shown["latency_ms"] == 5
    assert shown["notification_reorder"] is True
    config = sandbox.app.state.faults
    assert isinstance(config, FaultConfig)
    assert config.notification_drop_rate == 0.25
    assert config.notification_duplicate_rate == 0.1
    reset = await sandbox.client.delete("/sandbox/faults")
    assert reset.status_code == 200
    assert reset.json()["latency_ms"] == 0
    assert sandbox.app.state.faults == FaultConfig()


@pytest.mark.parametrize(
    "config",
    [
        {"error_rate": 2},
        {"error_status": 404},
        {"latency_ms": -1},
        {"latency_ms": "100"},
        {"rate_limit": {"rate": 0}},
        {"surprise": True},
    ],
)
async def test_invalid_config_is_422(sandbox: Sandbox, config: dict[str, object]) -> None:
    response = await sandbox.client.post("/sandbox/faults", json=config)
    assert response.status_code == 422
    sandbox.outcome(response)
    assert sandbox.app.state.faults == FaultConfig()


async def test_faults_need_the_admin_token(sandbox: Sandbox) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox.app), base_url="http://test"
    ) as anonymous:
        assert (await anonymous.post("/sandbox/faults", json={})).status_code == 401
        other = {"Authorization": "Bearer not-the-admin"}
        assert (await anonymous.post("/sandbox/faults", json={}, headers=other)).status_code == 403
        assert (await anonymous.get("/sandbox/faults", headers=other)).status_code == 403
