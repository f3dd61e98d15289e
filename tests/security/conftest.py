"""The attacks of issue 13 against real servers: the EHR sandbox (its issuer and FHIR API),
the gateway, scheduling and triage, each under uvicorn on a local port, on the session's
PostgreSQL and Kafka broker.

Every test records the attack it tried with `attack(name, expected, observed)`; the
report hook below writes one JSON line per test to $SECURITY_REPORT (when set), which
`make security-report` (tests/security/report.py) turns into its table.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from devstack.postgres import create_database, drop_database
from devstack.topics import ensure_topics
from ehr_sandbox.testing.http import free_port, running_sandbox, serve
from gateway.app import build as build_gateway
from gateway.settings import Settings as GatewaySettings
from scheduling.app import build as build_scheduling
from scheduling.settings import Settings as SchedulingSettings
from servicekit.app import Service
from servicekit.testing import isolated_settings
from triage.app import build as build_triage
from triage.settings import Settings as TriageSettings

from .harness import Attack, Stack


@pytest.fixture
def attack(request: pytest.FixtureRequest) -> Attack:
    """Record what the test tried, what must happen and what did (for the report)."""

    def record(name: str, expected: str, observed: str) -> None:
        request.node.user_properties.append(("attack", [name, expected, observed]))

    return record


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get("SECURITY_REPORT")
    if not path or "tests/security" not in report.nodeid.replace("\\", "/"):
        return
    if report.when == "call" or (report.when == "setup" and report.failed):
        rows = [v for k, v in report.user_properties if k == "attack"]
        if not rows:
            rows = [[report.nodeid.split("::")[-1], "held", f"not run: {report.outcome}"]]
        with open(path, "a", encoding="utf-8") as out:
            for name, expected, observed in rows:
                line = {
                    "test": report.nodeid,
                    "attack": name,
                    "expected": expected,
                    "observed": observed,
                    "held": report.passed,
                }
                out.write(json.dumps(line) + "\n")


@pytest.fixture(scope="module")
def _data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("security")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(_data_dir: Path, postgres_url: str, kafka_bootstrap: str) -> AsyncIterator[Stack]:
    prefix = f"s{uuid.uuid4().hex[:8]}."
    await ensure_topics(kafka_bootstrap, prefix)
    names = {n: f"test_{uuid.uuid4().hex[:12]}" for n in ("gateway", "scheduling", "triage")}
    urls = {n: await create_database(name, postgres_url) for n, name in names.items()}
    try:
        async with running_sandbox(_data_dir, port=free_port()) as sandbox:
            scheduling = build_scheduling(
                SchedulingSettings(**isolated_settings(urls["scheduling"], kafka_bootstrap, prefix))  # type: ignore[arg-type]
            )
            triage = build_triage(
                TriageSettings(**isolated_settings(urls["triage"], kafka_bootstrap, prefix))  # type: ignore[arg-type]
            )
            async with (
                serve(scheduling.app, free_port()) as scheduling_url,
                serve(triage.app, free_port()) as triage_url,
            ):

                def gateway(**limits: Any) -> Service:
                    return build_gateway(
                        GatewaySettings(
                            **isolated_settings(urls["gateway"], kafka_bootstrap, prefix),  # type: ignore[arg-type]
                            oidc_issuer=sandbox.url,
                            scheduling_url=scheduling_url,
                            triage_url=triage_url,
                            records_url="http://127.0.0.1:1",  # nothing listens there
                            messaging_url="http://127.0.0.1:1",
                            sse_keepalive_s=0.5,
                            # These tests check who may do what, not how fast: a call to
                            # triage that a loaded machine kept over the 2 s default came
                            # back 504 instead of the 201 under test, once in CI.
                            upstream_timeout_s=8.0,
                            jwks_min_refresh_s=3600.0,
                            audit_checkpoint_dir=str(_data_dir / "audit-anchors"),
                            audit_verify_interval_s=0.5,
                            **limits,
                        )
                    )

                main = gateway(
                    rate_limit_ip_per_s=0.0,
                    rate_limit_token_per_s=0.0,
                    rate_limit_patient_writes_per_min=0.0,
                )
                # Buckets refill once a minute: a test sends its burst and one or two more,
                # and must see the 429 however slowly a loaded machine serves the burst (at
                # 0.5/s, six reads taking over 2 s refilled a token: a 200 where a 429 was
                # due, once in CI).
                limited = gateway(
                    rate_limit_ip_per_s=1 / 60,
                    rate_limit_ip_burst=8,
                    rate_limit_token_per_s=1 / 60,
                    rate_limit_token_burst=4,
                    rate_limit_patient_writes_per_min=0.5,
                    rate_limit_patient_write_burst=3,
                    forwarded_for_hops=1,  # each test is its own client address
                )
                # Entered one after the other: each port is taken before the next is chosen.
                async with (
                    serve(main.app, free_port()) as gateway_url,
                    serve(limited.app, free_port()) as limited_url,
                ):
                    yield Stack(
                        sandbox=sandbox,
                        gateway=main,
                        gateway_url=gateway_url,
                        scheduling_url=scheduling_url,
                        scheduling=scheduling,
                        limited_url=limited_url,
                        triage_url=triage_url,
                        anchors=str(_data_dir / "audit-anchors"),
                    )
    finally:
        for name in names.values():
            await drop_database(name, postgres_url)
