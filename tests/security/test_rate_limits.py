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
