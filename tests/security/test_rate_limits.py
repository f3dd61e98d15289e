"""Rate limits per client address and per token on the gateway (a replica configured
with small limits), and the security-event counter they feed."""

from __future__ import annotations

import re

import httpx
import pytest

from .harness import Attack, Stack

pytestmark = [pytest.mark.integration]


def _counter(metrics: str, event: str) -> float:
    pattern = rf'^security_events_total\{{event="{event}",service="gateway"\}} (\S+)$'
    match = re.search(pattern, metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_flood_from_one_address_gets_429(stack: Stack, attack: Attack) -> None:
    async with httpx.AsyncClient(base_url=stack.limited_url) as client:
        before = _counter((await client.get("/metrics")).text, "rate_limited_ip")
        statuses = [
            (await client.get("/v1/me", headers={"X-Forwarded-For": "198.51.100.7"}))
            for _ in range(12)
        ]
        other = await client.get("/v1/me", headers={"X-Forwarded-For": "198.51.100.8"})
        after = _counter((await client.get("/metrics")).text, "rate_limited_ip")
    codes = [r.status_code for r in statuses]
    attack("12 anonymous requests from one address (burst 8)", "8x 401 then 429", str(codes))
    assert codes[:8] == [401] * 8
    assert set(codes[8:]) == {429}
    limited = statuses[-1]
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["content-type"] == "application/problem+json"
    assert other.status_code == 401  # another address is not held back
    assert after - before == 4


async def test_flood_with_one_token_gets_429(stack: Stack, attack: Attack) -> None:
    token = await stack.linked_token("sec-flood")
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.limited_url, timeout=10) as client:
        codes = [
            (
                await client.get("/v1/me", headers={**auth, "X-Forwarded-For": f"203.0.113.{n}"})
            ).status_code
            for n in range(6)
        ]
        last = await client.get("/v1/me", headers={**auth, "X-Forwarded-For": "203.0.113.99"})
    attack("6 requests with one token from 6 addresses (burst 4)", "4x 200 then 429", str(codes))
    assert codes[:4] == [200] * 4
    assert codes[4:] == [429, 429]
    assert last.status_code == 429
    assert "token" in last.json()["detail"]
    assert int(last.headers["retry-after"]) >= 1


async def test_a_patient_writing_with_many_tokens_and_addresses_gets_429(
    stack: Stack, attack: Attack
) -> None:
    await stack.linked_token("sec-writes")
    scopes = ("patient/*.cruds", "patient/QuestionnaireResponse.c", "patient/*.c launch/patient")
    tokens = [(await stack.tokens("sec-writes", scope))["access_token"] for scope in scopes]
    assert len(set(tokens)) == 3
    symptoms = {"age": 48, "sex": "female", "text": "A mild sore throat since yesterday"}
    async with httpx.AsyncClient(base_url=stack.limited_url, timeout=30) as client:
        before = _counter((await client.get("/metrics")).text, "rate_limited_patient")
        writes = []
        for n in range(5):
            headers = {
                "Authorization": f"Bearer {tokens[n % 3]}",
                "X-Forwarded-For": f"192.0.2.{n + 10}",
            }
            writes.append(await client.post("/v1/me/triage/assess", json=symptoms, headers=headers))
        read = await client.get(
            "/v1/me",
            headers={"Authorization": f"Bearer {tokens[0]}", "X-Forwarded-For": "192.0.2.9"},
        )
        after = _counter((await client.get("/metrics")).text, "rate_limited_patient")
    codes = [r.status_code for r in writes]
    attack(
        "5 triage writes of one patient with 3 tokens from 5 addresses (burst 3)",
        "3x 201 then 429 + Retry-After; reads still 200",
        f"{codes}, read {read.status_code}",
    )
    assert codes == [201, 201, 201, 429, 429]
    assert int(writes[-1].headers["retry-after"]) >= 1
    assert writes[-1].headers["content-type"] == "application/problem+json"
    assert "patient" in writes[-1].json()["detail"]
    assert read.status_code == 200
    assert after - before == 2
