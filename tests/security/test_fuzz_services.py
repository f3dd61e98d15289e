"""Property-based runs (schemathesis, pinned) against the OpenAPI documents of the domain
services on the network, the way another service calls them: with a service token. Any
input the document allows, and the malformed ones schemathesis derives from it, must get
an answer, never a 5xx, and every answer must match its documented status and schema,
with every time carrying its offset."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from devstack.postgres import create_database, drop_database
from devstack.topics import ensure_topics
from ehr_connector.app import build as build_connector
from ehr_connector.settings import Settings as ConnectorSettings
from ehr_sandbox.testing.http import free_port, serve
from messaging.app import build as build_messaging
from messaging.settings import Settings as MessagingSettings
from records.app import build as build_records
from records.settings import Settings as RecordsSettings
from servicekit.testing import isolated_settings, service_headers

from .harness import Attack, Stack

pytestmark = [pytest.mark.integration]
EXAMPLES_PER_OPERATION = 25
# Fewer per operation where every answer is also checked against its schema: these
# documents have more operations, and CI has two cores.
CONFORMANCE_EXAMPLES = 15


# A date-time in an answer: RFC 3339, so with `Z` or a numeric offset.
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
_OFFSET = re.compile(r"(?:[Zz]|[+-]\d{2}:\d{2})$")


def _times_without_offset(value: Any) -> list[str]:
    """Every date-time string in a JSON value that has no offset."""
    if isinstance(value, dict):
        return [t for v in value.values() for t in _times_without_offset(v)]
    if isinstance(value, list):
        return [t for v in value for t in _times_without_offset(v)]
    if isinstance(value, str) and _DATE_TIME.match(value) and not _OFFSET.search(value):
        return [value]
    return []


def _fuzz(
    document: dict[str, Any],
    base_url: str,
    headers: Callable[[], dict[str, str]],
    *,
    conformance: bool = False,
    examples: int = EXAMPLES_PER_OPERATION,
) -> tuple[Counter[int], list[str]]:
    """Run every operation of `document` against `base_url`; (statuses seen, failures:
    5xx, and with `conformance` answers off their schema or times without an offset)."""
    schema = schemathesis.openapi.from_dict(document)
    sent: Counter[int] = Counter()
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith(("/ops", "/healthz", "/readyz", "/metrics")):
            continue

        @settings(
            max_examples=examples,
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
                return
            if not conformance:
                return
            try:
                case.validate_response(
                    response,
                    checks=[
                        not_a_server_error,
                        status_code_conformance,
                        response_schema_conformance,
                    ],
                )
            except FailureGroup as exc:  # what did not conform
                for failure in exc.exceptions:
                    failures.append(
                        f"{case.method} {case.operation.path} -> {response.status_code}: "
                        f"{getattr(failure, 'title', type(failure).__name__)}"
                    )
            if "json" in response.headers.get("content-type", ""):
                naive = _times_without_offset(response.json())
                if naive:
                    failures.append(f"{case.method} {case.operation.path}: naive times {naive[:2]}")

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
    sent, failures = await asyncio.to_thread(_fuzz, document, url, headers, conformance=True)
    attack(
        f"{service}: {sum(sent.values())} generated requests over its OpenAPI document, "
        "with a service token",
        "no 5xx, every answer matches its schema, times with offsets",
        f"{len(failures)} failures, statuses {dict(sorted(sent.items()))}"
        + (f": {sorted(set(failures))}" if failures else ""),
    )
    assert sum(sent.values()) > 0
    assert 401 not in sent  # every call got past the service-token check
    assert failures == []


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def domain_urls(
    stack: Stack, postgres_url: str, kafka_bootstrap: str
) -> AsyncIterator[dict[str, str]]:
    """Records, messaging and the ehr-connector (on the stack's EHR sandbox), each under
    uvicorn on its own database."""
    prefix = f"f{uuid.uuid4().hex[:8]}."
    await ensure_topics(kafka_bootstrap, prefix)
    names = {n: f"test_{uuid.uuid4().hex[:12]}" for n in ("records", "messaging", "connector")}
    urls = {n: await create_database(name, postgres_url) for n, name in names.items()}
    try:
        records = build_records(
            RecordsSettings(**isolated_settings(urls["records"], kafka_bootstrap, prefix))  # type: ignore[arg-type]
        )
        messaging = build_messaging(
            MessagingSettings(
                **isolated_settings(urls["messaging"], kafka_bootstrap, prefix),  # type: ignore[arg-type]
                triage_url=stack.triage_url,
            )
        )
        port = free_port()
        connector = build_connector(
            ConnectorSettings(
                **isolated_settings(urls["connector"], kafka_bootstrap, prefix),  # type: ignore[arg-type]
                ehr_base_url=stack.sandbox.fhir,
                http_port=port,
                inbound_webhook_url=f"http://127.0.0.1:{port}/fhir/notifications",
                ehr_verify_recipients=False,
                canary_enabled=False,
                slot_sync_enabled=False,
            )
        )
        # Entered one after the other: each port is taken before the next is chosen.
        async with (
            serve(connector.app, port) as connector_url,
            serve(records.app, free_port()) as records_url,
            serve(messaging.app, free_port()) as messaging_url,
        ):
            yield {
                "records": records_url,
                "messaging": messaging_url,
                "ehr-connector": connector_url,
            }
    finally:
        for name in names.values():
            await drop_database(name, postgres_url)


@pytest.mark.parametrize("service", ["records", "messaging", "ehr-connector"])
async def test_answers_match_their_schema_with_a_service_token(
    domain_urls: dict[str, str], attack: Attack, service: str
) -> None:
    url = domain_urls[service]

    def headers() -> dict[str, str]:
        return service_headers(service, caller="gateway")

    async with httpx.AsyncClient(timeout=30) as client:
        document = (await client.get(f"{url}/openapi.json")).json()
    sent, failures = await asyncio.to_thread(
        _fuzz, document, url, headers, conformance=True, examples=CONFORMANCE_EXAMPLES
    )
    attack(
        f"{service}: {sum(sent.values())} generated requests over its OpenAPI document, "
        "with a service token",
        "no 5xx, every answer matches its schema, times with offsets",
        f"{len(failures)} failures, statuses {dict(sorted(sent.items()))}"
        + (f": {sorted(set(failures))}" if failures else ""),
    )
    assert sum(sent.values()) > 0
    assert failures == []
