"""Property-based runs (schemathesis, pinned) against the OpenAPI documents of the domain
services on the network, the way another service calls them: with a service token. Any
input the document allows, and the malformed ones schemathesis derives from it, must get
an answer, never a 5xx."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from servicekit.testing import service_headers

from .harness import Attack, Stack

pytestmark = [pytest.mark.integration]
EXAMPLES_PER_OPERATION = 25


def _fuzz(
    document: dict[str, Any], base_url: str, headers: Callable[[], dict[str, str]]
) -> tuple[Counter[int], list[str]]:
    """Run every operation of `document` against `base_url`; (statuses seen, 5xx seen)."""
    schema = schemathesis.openapi.from_dict(document)
    sent: Counter[int] = Counter()
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith(("/ops", "/healthz", "/readyz", "/metrics")):
            continue

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            # A fresh token per call, as the services mint them (they live 60 s).
            response = case.call(base_url=base_url, headers=headers(), timeout=30)
            sent[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}")

        run()
    return sent, failures


@pytest.mark.parametrize("service", ["scheduling", "triage"])
async def test_no_5xx_from_property_based_runs_with_a_service_token(
    stack: Stack, attack: Attack, service: str
) -> None:
    url = stack.scheduling_url if service == "scheduling" else stack.triage_url

    def headers() -> dict[str, str]:
        return service_headers(service, caller="gateway")

    async with httpx.AsyncClient(timeout=30) as client:
        document = (await client.get(f"{url}/openapi.json")).json()
    # The servers run on this event loop: the synchronous runner gets a thread of its own.
    sent, failures = await asyncio.to_thread(_fuzz, document, url, headers)
    attack(
        f"{service}: {sum(sent.values())} generated requests over its OpenAPI document, "
        "with a service token",
        "no 5xx",
        f"{len(failures)} 5xx, statuses {dict(sorted(sent.items()))}"
        + (f": {failures[:3]}" if failures else ""),
    )
    assert sum(sent.values()) > 0
    assert 401 not in sent  # every call got past the service-token check
    assert failures == []
