"""Overload and recovery: a burst of impatient clients must not wedge the gateway.

The gateway and the records service run as real HTTP servers; a hundred clients read
`/v1/me/summary` and `/v1/me/lab-results` at once with a short client timeout (so many
give up mid-request), then an ordinary patient's calls must work again. The pooled HTTP
client to the owning services used to lose its connection slots in such a burst (httpcore
leaves a connection it created for a request that was cancelled before using it in the
pool for ever, encode/httpcore#1093) and answered 504 to every later call; the mechanism
itself is shown deterministically in `test_upstream_pool.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from contracts.base import Coding, SourceVersion
from contracts.lab import LabResultedV1, ReportStatus
from devstack.topics import ensure_topics
from ehr_sandbox.testing.http import free_port, running_sandbox, serve
from servicekit.testing import eventually, produce_events

from .services import gateway_service, records_service

pytestmark = [pytest.mark.integration]
CLIENTS = 100
BURST_S = 10.0


@dataclass
class Stack:
    url: str
    token: str


@pytest.fixture
async def stack(
    tmp_path: Path,
    database_factory: Callable[[], Awaitable[str]],
    kafka_bootstrap: str,
    unique_prefix: str,
) -> AsyncIterator[Stack]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    dbs = {name: await database_factory() for name in ("gateway", "records")}
    async with running_sandbox(tmp_path, port=free_port()) as sandbox:
        records = records_service(dbs["records"], kafka_bootstrap, unique_prefix)
        async with serve(records.app, free_port()) as records_url:
            # Every part of the summary is served by the one real records server (the other
            # parts answer 404): the gateway's pool is shared by all origins anyway.
            gateway = gateway_service(
                dbs["gateway"],
                kafka_bootstrap,
                unique_prefix,
                issuer=sandbox.url,
                records_url=records_url,
                scheduling_url=records_url,
                messaging_url=records_url,
                triage_url=records_url,
                # The burst is one token from one address: with the rate limits on, most
                # of it was refused at the door (and the patient's calls after it could
                # find the token's budget not yet refilled: 429).
                rate_limit_ip_per_s=0,
                rate_limit_token_per_s=0,
            )
            async with serve(gateway.app, free_port()) as url:
                token = await _token(sandbox.admin)
                yield Stack(url, token)


async def _token(admin: httpx.AsyncClient, patient: str = "p-ann") -> str:
    put = await admin.put(
        f"/fhir/Patient/{patient}",
        json={"resourceType": "Patient", "id": patient, "name": [{"family": "Example"}]},
        headers={"Content-Type": "application/fhir+json"},
    )
    assert put.status_code in (200, 201), put.text
    response = await admin.post("/dev/patient-token", json={"patient": patient})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _lab(patient_id: str, n: int) -> LabResultedV1:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=n)
    return LabResultedV1(
        patient_id=patient_id,
        report_fhir_id=f"dr-{n}",
        status=ReportStatus.FINAL,
        code=Coding(system="http://loinc.org", code="4548-4", display="Hemoglobin A1c"),
        effective=at,
        source=SourceVersion(
            resource_type="DiagnosticReport", fhir_id=f"dr-{n}", version_id="1", last_updated=at
        ),
    )


async def _impatient_client(url: str, token: str, until: float) -> None:
    """Reads the summary and the lab list, giving up on any call after a fraction of the
    gateway's own upstream timeout, until `until`."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=0.3) as client:
        paths = ("/v1/me/summary", "/v1/me/lab-results")
        i = 0
        while time.monotonic() < until:
            with contextlib.suppress(httpx.HTTPError):
                await client.get(paths[i % 2])
            i += 1


async def test_after_a_burst_of_impatient_clients_the_gateway_answers_again(
    stack: Stack, kafka_bootstrap: str, unique_prefix: str
) -> None:
    headers = {"Authorization": f"Bearer {stack.token}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=30) as patient:
        patient_id = (await patient.get("/v1/me")).json()["patient_id"]
        await produce_events(
            kafka_bootstrap,
            [(patient_id, _lab(patient_id, n)) for n in range(60)],
            topic_prefix=unique_prefix,
        )

        async def all_in_records() -> bool:
            response = await patient.get("/v1/me/lab-results", params={"limit": 100})
            return response.status_code == 200 and len(response.json()["items"]) == 60

        await eventually(all_in_records, timeout=90)

        until = time.monotonic() + BURST_S
        await asyncio.gather(
            *(_impatient_client(stack.url, stack.token, until) for _ in range(CLIENTS))
        )

        # The burst is over. Requests the gateway accepted during it (their clients gone)
        # may still be finishing; once they are, an ordinary patient's calls must work.
        async def answers() -> bool:
            return (await patient.get("/v1/me/lab-results")).status_code == 200

        await eventually(answers, timeout=60, interval=0.5)
        for _ in range(20):
            labs = await patient.get("/v1/me/lab-results", params={"limit": 100})
            assert labs.status_code == 200, labs.text
            assert len(labs.json()["items"]) == 60
        summary = await patient.get("/v1/me/summary")
        assert summary.status_code == 200, summary.text
        assert [w["part"] for w in summary.json()["warnings"]] == [
            "appointments",
            "threads",
        ]  # the two parts this stack has no service for
        assert len(summary.json()["lab_results"]) == 5
