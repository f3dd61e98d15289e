"""Fault injection on /fhir: errors, rate limiting with Retry-After, a down window, latency."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import pytest

from ehr_sandbox.auth import mint_patient_token
from ehr_sandbox.dev.faults import FaultConfig
from ehr_sandbox.testing import FHIR_JSON, Sandbox


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


def _ledger(shown: dict[str, object], client: str) -> dict[str, object]:
    clients = shown["rate_limit_clients"]
    assert isinstance(clients, dict)
    ledger: dict[str, object] = clients[client]
    return ledger


async def test_write_limit_keeps_a_retry_after_ledger_per_client(sandbox: Sandbox) -> None:
    """Only writes are limited; a write sent before its Retry-After expired is booked as
    early, one sent after as compliant, per client (the patient token's reads are apart)."""
    limit = {"rate": 0.5, "burst": 2.0, "retry_after_s": 1, "writes_only": True}
    # No grace: the test's next request is sent after it read the 429, however soon.
    await _set(sandbox, rate_limit={**limit, "in_flight_grace_ms": 0})
    patient_token = mint_patient_token("p1", app=sandbox.app)
    for _ in range(4):  # reads pass whatever the bucket holds, and are not booked
        assert (await sandbox.client.get("/fhir/metadata")).status_code == 200
    body = {"resourceType": "Patient", "name": [{"family": "Limited"}]}
    statuses = [
        (await sandbox.client.post("/fhir/Patient", json=body, headers=FHIR_JSON)).status_code
        for _ in range(3)
    ]
    assert statuses == [201, 201, 429]
    early = await sandbox.client.post("/fhir/Patient", json=body, headers=FHIR_JSON)
    assert early.status_code == 429
    assert early.headers["retry-after"] == "1"
    # Another client's write is booked under its own name (a patient token: 403 later).
    other = await sandbox.client.post(
        "/fhir/Patient",
        json=body,
        headers={**FHIR_JSON, "Authorization": f"Bearer {patient_token}"},
    )
    assert other.status_code == 429
    ledger = _ledger((await sandbox.client.get("/sandbox/faults")).json(), "admin")
    assert ledger["requests"] == 4
    assert ledger["passed"] == 2
    assert ledger["throttled"] == 2
    assert ledger["after_throttle"] == 1
    assert ledger["early"] == 1
    # How long after the 429 it came: the test sent it as soon as it read the 429.
    (after_ms,) = ledger["early_after_ms"]
    assert 0 <= after_ms < 1000
    assert ledger["in_flight"] == 0
    assert ledger["retry_after_compliance"] == 0.0
    # Waiting out the Retry-After (the bucket refills a token in 2 s) is compliant.
    await asyncio.sleep(2.05)
    late = await sandbox.client.post("/fhir/Patient", json=body, headers=FHIR_JSON)
    assert late.status_code == 201
    shown = (await sandbox.client.get("/sandbox/faults")).json()
    ledger = _ledger(shown, "admin")
    assert (ledger["after_throttle"], ledger["early"], ledger["passed"]) == (2, 1, 3)
    assert ledger["retry_after_compliance"] == 0.5
    assert ledger["passed_since_first_throttle"] == 1
    assert ledger["rate_since_first_throttle_per_s"] is not None
    assert 0 < ledger["rate_per_s"] < 2  # 3 writes over 2 s and more
    assert _ledger(shown, "patient")["throttled"] == 1
    # A new configuration starts a new ledger. With a grace, a request right after a 429
    # is booked as in flight (its client may have sent it before reading the 429).
    assert (await _set(sandbox, rate_limit={**limit, "in_flight_grace_ms": 1000}))[
        "rate_limit_clients"
    ] == {}
    for _ in range(4):
        await sandbox.client.post("/fhir/Patient", json=body, headers=FHIR_JSON)
    ledger = _ledger((await sandbox.client.get("/sandbox/faults")).json(), "admin")
    assert (ledger["throttled"], ledger["in_flight"], ledger["early"]) == (2, 1, 0)
    assert ledger["retry_after_compliance"] is None  # nothing left to judge


async def test_rate_limit_retry_after_as_http_date(sandbox: Sandbox) -> None:
    await _set(
        sandbox, rate_limit={"rate": 1.0, "retry_after_s": 2, "retry_after_form": "http-date"}
    )
    before = datetime.now(UTC)
    assert (await sandbox.client.get("/fhir/metadata")).status_code == 200
    limited = await sandbox.client.get("/fhir/metadata")
    assert limited.status_code == 429
    when = parsedate_to_datetime(limited.headers["retry-after"])
    # Whole seconds, rounded up: never sooner than the 2 s asked for.
    assert when - before >= timedelta(seconds=2)
    assert when - before <= timedelta(seconds=4)


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
