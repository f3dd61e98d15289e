"""One slow service does not hold the patient's summary: a part whose service has not
answered within `SUMMARY_PART_TIMEOUT_S` is left out with a warning, and the parts of the
services that answered are there (records real, scheduling hanging, over HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from devstack.topics import ensure_topics
from ehr_sandbox.testing.http import free_port, running_sandbox, serve

from .services import gateway_service, records_service
from .test_gateway_flow import Stack, _token

pytestmark = [pytest.mark.integration]
BUDGET_S = 0.5


class Hanging:
    """An ASGI service that takes far longer than any budget to answer (a slow scheduling
    service); `calls` counts what reached it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        await asyncio.sleep(30)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"[]"})


class Counting:
    """An ASGI app in front of another that records the paths called (records)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


@pytest.fixture
async def slow_stack(
    tmp_path: Path,
    database_factory: Callable[[], Awaitable[str]],
    kafka_bootstrap: str,
    unique_prefix: str,
) -> AsyncIterator[tuple[Stack, Hanging, Counting]]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    dbs = {name: await database_factory() for name in ("gateway", "records")}
    hanging = Hanging()
    async with running_sandbox(tmp_path, port=free_port()) as sandbox:
        records = records_service(dbs["records"], kafka_bootstrap, unique_prefix)
        counting = Counting(records.app)
        gateway = gateway_service(
            dbs["gateway"],
            kafka_bootstrap,
            unique_prefix,
            issuer=sandbox.url,
            records_url="http://records",
            scheduling_url="http://scheduling",
            messaging_url="http://127.0.0.1:1",  # nothing listens: a failing upstream
            summary_part_timeout_s=BUDGET_S,
            upstream_timeout_s=20.0,  # the budget, not the call's timeout, must end it
            mounts={
                "http://records": httpx.ASGITransport(app=counting),
                "http://scheduling": httpx.ASGITransport(app=hanging),  # type: ignore[arg-type]
            },
        )
        async with (
            LifespanManager(records.app, startup_timeout=60, shutdown_timeout=60),
            serve(gateway.app, free_port()) as url,
        ):
            stack = Stack(gateway, url, sandbox.url, sandbox.admin, unique_prefix)
            yield stack, hanging, counting


async def test_a_slow_service_is_left_out_of_the_summary_with_a_warning(
    slow_stack: tuple[Stack, Hanging, Counting],
) -> None:
    stack, hanging, records = slow_stack
    token = await _token(stack)
    async with httpx.AsyncClient(
        base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        for _ in range(3):  # every time, not only the first
            response = await client.get("/v1/me/summary")
            assert response.status_code == 200
            body = response.json()
            assert body["lab_results"] == []  # records answered
            assert body["medications"] == [] and body["allergies"] == []
            assert body["appointments"] is None
            warnings = {w["part"]: w["detail"] for w in body["warnings"]}
            assert warnings["appointments"] == f"scheduling did not answer within {BUDGET_S:g} s"
            # (The call's own timeout, 20 s here, would say "did not answer in time".)
            assert "threads" in warnings  # messaging refused the connection
    assert hanging.calls == 3
    # Records' three parts came in one call each time (three calls each before).
    summaries = [p for p in records.paths if p.startswith("/patients/")]
    assert len(summaries) == 3 and all(p.endswith("/summary") for p in summaries)
