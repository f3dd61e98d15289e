"""The local trace sink as `make up TRACING=1` runs it: a process receiving OTLP/HTTP from
the OpenTelemetry SDK's own exporter, keeping spans in PostgreSQL, and `make traces`
(`python -m devstack.tracesink show`) printing them as trees."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, set_span_in_context

from devstack._paths import free_port
from devstack.observability import trace_sink
from servicekit.testing import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def sink(tmp_path: Path, database_url: str) -> AsyncIterator[str]:
    spec = trace_sink(sys.executable, "127.0.0.1", tmp_path, database_url, port=free_port())
    proc = await asyncio.create_subprocess_exec(
        *spec.argv,
        env={**os.environ, **spec.env},
        cwd=spec.cwd,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        async with httpx.AsyncClient(timeout=2) as client:

            async def ready() -> bool:
                assert proc.returncode is None, "the trace sink exited"
                try:
                    return (await client.get(spec.url(spec.ready_path))).is_success
                except httpx.HTTPError:
                    return False

            await eventually(ready, timeout=60, interval=0.2)
        yield spec.url()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=20)


def _export(sink: str) -> tuple[str, str]:
    """Two services' spans of one trace, exported as a real service exports them;
    returns (trace id, the linked trace id)."""
    exporters = []
    for service in ("gateway", "scheduling"):
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        exporter = OTLPSpanExporter(endpoint=f"{sink}/v1/traces")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        exporters.append(provider)
    gateway, scheduling = (p.get_tracer("test") for p in exporters)
    with gateway.start_as_current_span("GET /v1/me/events", kind=SpanKind.SERVER) as stream:
        pass
    with (
        gateway.start_as_current_span("POST /v1/me/appointments", kind=SpanKind.SERVER) as root,
        gateway.start_as_current_span("POST", kind=SpanKind.CLIENT) as call,
    ):
        scheduling.start_span(
            "POST /patients/{patient_id}/appointments",
            context=set_span_in_context(call),
            kind=SpanKind.SERVER,
            links=[Link(stream.get_span_context())],
        ).end()
    for provider in exporters:
        provider.shutdown()
    return (
        format(root.get_span_context().trace_id, "032x"),
        format(stream.get_span_context().trace_id, "032x"),
    )


async def _show(tmp_path: Path, *argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devstack.tracesink",
        "show",
        *argv,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "TRACES_DATABASE_URL"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_spans_from_the_sdk_exporter_print_as_one_tree(sink: str, tmp_path: Path) -> None:
    trace_id, linked = await asyncio.to_thread(_export, sink)
    printed = await _show(tmp_path, "--limit", "1")
    lines = printed.splitlines()
    assert lines[0].startswith(f"trace {trace_id}") and "[gateway, scheduling]" in lines[0]
    assert lines[1].startswith("  gateway        SERVER   POST /v1/me/appointments")
    assert lines[2].startswith("    gateway        CLIENT   POST")
    assert lines[3].startswith("      scheduling     SERVER   POST /patients/{patient_id}/")
    assert f"(link: trace {linked[:8]}" in lines[3]
    both = await _show(tmp_path, "--limit", "2")
    assert both.index(f"trace {linked}") < both.index(f"trace {trace_id}"), "oldest first"


async def test_the_receiver_refuses_what_is_not_otlp_protobuf(sink: str) -> None:
    async with httpx.AsyncClient(base_url=sink) as client:
        as_json = await client.post("/v1/traces", json={"resourceSpans": []})
        assert as_json.status_code == 415
        garbage = await client.post(
            "/v1/traces",
            content=b"\xff\xfe not protobuf",
            headers={"content-type": "application/x-protobuf"},
        )
        assert garbage.status_code == 400


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="apt-get install prometheus")
async def test_local_prometheus_loads_the_alert_rules_and_scrapes(tmp_path: Path) -> None:
    from devstack.observability import prometheus

    target = free_port()
    spec = prometheus("127.0.0.1", tmp_path, port=free_port(), targets={"records": target})
    assert spec is not None
    proc = await asyncio.create_subprocess_exec(
        *spec.argv,
        cwd=spec.cwd,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        async with httpx.AsyncClient(base_url=spec.url(), timeout=2) as client:

            async def ready() -> bool:
                assert proc.returncode is None, "prometheus exited"
                try:
                    return (await client.get(spec.ready_path)).is_success
                except httpx.HTTPError:
                    return False

            await eventually(ready, timeout=60, interval=0.2)
            groups = (await client.get("/api/v1/rules")).json()["data"]["groups"]
            alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
            assert {"DeadLettersOpen", "NotificationLatencyBudgetBurnFast"} <= alerts
            targets: list[dict[str, Any]] = []

            async def discovered() -> bool:
                nonlocal targets
                answer = (await client.get("/api/v1/targets")).json()
                targets = answer["data"]["activeTargets"]
                return bool(targets)

            await eventually(discovered, timeout=30, interval=0.2)
            assert [t["labels"]["app"] for t in targets] == ["records"]
            assert targets[0]["scrapeUrl"] == f"http://127.0.0.1:{target}/metrics"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=20)


def test_tracing_stack_points_every_service_at_the_sink(tmp_path: Path) -> None:
    from devstack.observability import processes
    from devstack.supervisor import SERVICES, Stack, StackConfig

    base = "postgresql+asyncpg://portal:portal@127.0.0.1:5432"
    traced = Stack(StackConfig(tracing=True, database_url=base, root=tmp_path))
    env = traced._spec(SERVICES[0], f"{base}/portal_gateway").env
    assert env["OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    plain = Stack(StackConfig(database_url=base, root=tmp_path))
    assert "OTLP_ENDPOINT" not in plain._spec(SERVICES[0], f"{base}/portal_gateway").env
    (sink,) = processes(sys.executable, "127.0.0.1", tmp_path, base, tracing=True, metrics=False)
    assert sink.env["TRACES_DATABASE_URL"] == f"{base}/portal_traces"
    assert (
        processes(sys.executable, "127.0.0.1", tmp_path, base, tracing=False, metrics=False) == []
    )
