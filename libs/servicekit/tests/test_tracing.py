"""What gets traced: every HTTP request of a service (also once its lifespan has run), not
probes; polling (a trace starting with a client call) is sampled away, work entering a
service is kept even under an unsampled caller."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from servicekit import telemetry
from servicekit.app import NO_NATIVE_TELEMETRY, Service
from servicekit.flow_metrics import EVENT_AGE, observe_event_age, observe_event_ages
from servicekit.settings import ServiceSettings
from servicekit.telemetry import (
    ExportingProvider,
    default_sampler,
    instrument_app,
    setup_tracing,
)

from . import fakeservice

OPS = {"Authorization": "Bearer test-ops"}


@pytest.fixture(scope="module")
def exported() -> InMemorySpanExporter:
    """The spans the process's tracer provider ends (the provider is global: one per
    process, as in a service)."""
    setup_tracing("servicekit-tests")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
async def running(database_url: str) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    settings = ServiceSettings(
        service_name="fake",
        database_url=database_url,
        ops_token="test-ops",
        kafka_bootstrap_servers="127.0.0.1:1",  # no broker: the HTTP side works without
    )
    svc = fakeservice.build(settings)
    async with (
        LifespanManager(svc.app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=svc.app), base_url="http://f") as c,
    ):
        yield svc, c


async def test_requests_get_server_spans_after_the_lifespan_ran(
    running: tuple[Service, httpx.AsyncClient], exported: InMemorySpanExporter
) -> None:
    _, client = running
    exported.clear()
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/ops/outbox", headers=OPS)).status_code == 200
    servers = [s for s in exported.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert [s.name for s in servers] == ["GET /ops/outbox"], "probes are not traced"
    queries = [s for s in exported.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert queries, "the route's database query is traced"
    assert all(q.parent is not None and q.parent.span_id == servers[0].context.span_id
               for q in queries if q.context.trace_id == servers[0].context.trace_id)  # fmt: skip
    assert not [s for s in exported.get_finished_spans() if "send" in s.name]


async def test_metrics_report_the_oldest_pending_outbox_row(
    running: tuple[Service, httpx.AsyncClient],
) -> None:
    _, client = running
    text = (await client.get("/metrics")).text
    assert 'outbox_oldest_pending_age_seconds{service="fake"} 0.0' in text


def _sampled(kind: SpanKind, parent: trace.Span | None = None) -> bool:
    provider = TracerProvider(sampler=default_sampler())
    context = trace.set_span_in_context(parent) if parent is not None else None
    span = provider.get_tracer("t").start_span("x", context=context, kind=kind)
    return span.is_recording()


def test_polling_roots_are_dropped_and_entry_points_kept() -> None:
    assert not _sampled(SpanKind.CLIENT), "a relay claim or readiness ping starts no trace"
    for kind in (SpanKind.SERVER, SpanKind.CONSUMER, SpanKind.PRODUCER, SpanKind.INTERNAL):
        assert _sampled(kind)
    unsampled_caller = NonRecordingSpan(
        SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    )
    assert _sampled(SpanKind.SERVER, unsampled_caller), "a request is traced anyway"
    assert _sampled(SpanKind.CONSUMER, unsampled_caller)
    assert not _sampled(SpanKind.CLIENT, unsampled_caller)
    sampled_parent = NonRecordingSpan(
        SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    )
    assert _sampled(SpanKind.CLIENT, sampled_parent), "calls inside a request are traced"


def test_spans_are_recorded_only_once_something_receives_them() -> None:
    provider = ExportingProvider(Resource.create({"service.name": "t"}), default_sampler())
    tracer = provider.get_tracer("t")
    unexported = tracer.start_span("request", kind=SpanKind.SERVER)
    assert not unexported.is_recording()
    # Still a trace the logs, the audit log and `traceparent` can name.
    assert unexported.get_span_context().is_valid
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tracer.start_as_current_span("request", kind=SpanKind.SERVER) as span:
        assert span.is_recording()
    with tracer.start_as_current_span("poll", kind=SpanKind.CLIENT):
        pass  # the delegate decides now: a client root is still dropped
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]


def test_event_age_is_observed_from_ce_time() -> None:
    before = EVENT_AGE.labels("fake", "ages")._sum.get()  # type: ignore[attr-defined]
    observe_event_age("fake", "ages", [("ce_time", b"2020-01-01T00:00:00+00:00")])
    observe_event_age("fake", "ages", [("ce_time", b"2020-01-01T00:00:00")])  # naive: skipped
    observe_event_age("fake", "ages", [("ce_id", b"x")])
    after = EVENT_AGE.labels("fake", "ages")._sum.get()  # type: ignore[attr-defined]
    assert after - before > 365 * 24 * 3600


def test_a_batch_observes_each_message_with_a_ce_time_once() -> None:
    child = EVENT_AGE.labels("fake", "batch")
    count_before = sum(b.get() for b in child._buckets)  # type: ignore[attr-defined]
    sum_before = child._sum.get()  # type: ignore[attr-defined]
    observe_event_ages(
        "fake",
        "batch",
        [
            [("ce_id", b"1"), ("ce_time", b"2020-01-01T00:00:00+00:00")],
            {"ce_time": "2021-01-01T00:00:00+00:00"},
            [("ce_time", b"2020-01-01T00:00:00")],  # naive: skipped
            [("ce_time", b"not a time")],  # malformed: skipped
            [],
            [("ce_time", "2099-01-01T00:00:00+00:00")],  # from the future: age 0
        ],
    )
    assert sum(b.get() for b in child._buckets) - count_before == 3  # type: ignore[attr-defined]
    assert child._sum.get() - sum_before > (365 + 365) * 24 * 3600  # type: ignore[attr-defined]


def _where_app() -> FastAPI:
    """An app whose one route tells the span it runs under (built as the kit builds a
    service's: no native FastAPI telemetry, the OpenTelemetry instrumentation)."""
    app = FastAPI(telemetry=NO_NATIVE_TELEMETRY)

    @app.get("/where")
    async def where() -> dict[str, object]:
        context = trace.get_current_span().get_span_context()
        return {
            "trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x"),
            "recording": trace.get_current_span().is_recording(),
            "sampled": context.trace_flags.sampled,
        }

    instrument_app(app)
    return app


CALLER = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = {"traceparent": f"00-{CALLER}-00f067aa0ba902b7-01"}


async def test_unexported_requests_skip_the_instrumentation_and_keep_the_trace(
    exported: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _where_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        exported.clear()
        traced = (await c.get("/where", headers=TRACEPARENT)).json()
        assert (traced["trace_id"], traced["recording"]) == (CALLER, True)
        assert [s.name for s in exported.get_finished_spans()] == ["GET /where"]

        monkeypatch.setattr(telemetry, "exporting", lambda: False)
        exported.clear()
        untraced = (await c.get("/where", headers=TRACEPARENT)).json()
        # The caller's trace goes on under a span of this service, recorded by nobody.
        assert untraced["trace_id"] == CALLER
        assert untraced["span_id"] not in ("00f067aa0ba902b7", "0" * 16)
        assert (untraced["recording"], untraced["sampled"]) == (False, False)
        fresh = (await c.get("/where")).json()
        assert fresh["trace_id"] not in (CALLER, "0" * 32)
        assert exported.get_finished_spans() == ()


def test_only_an_exporting_provider_with_nothing_to_export_to_is_unexported() -> None:
    provider = ExportingProvider(Resource.create({"service.name": "t"}), default_sampler())
    assert not provider.exporting
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    assert provider.exporting


def test_instrumentation_waits_until_spans_are_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    done: list[str] = []
    monkeypatch.setattr(telemetry, "exporting", lambda: True)
    telemetry.when_exporting(lambda: done.append("now"))
    assert done == ["now"]
    monkeypatch.setattr(telemetry, "exporting", lambda: False)
    telemetry.when_exporting(lambda: done.append("later"))
    assert done == ["now"]
    provider = ExportingProvider(Resource.create({"service.name": "t"}), default_sampler())
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    assert done == ["now", "later"], "done once, when the first processor came"
