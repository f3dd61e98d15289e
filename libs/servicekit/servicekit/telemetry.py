"""OpenTelemetry tracing: one trace across HTTP, the database and every Kafka hop.

The W3C context travels in the `traceparent`/`tracestate` headers of each event. It is
captured when the event is written to the outbox (the business span), continued by the
relay's publish span, and continued again by the consumer's span.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware, asgi_getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    _get_from_env_or_default,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

_configured = False
# The HTTP paths never traced: probes and scrapes arrive every few seconds, and the API
# documentation pages are read by people and by `make up`'s start-up summary; none says
# anything about a patient's request (a regex list, as the FastAPI instrumentation takes it).
EXCLUDED_URLS = "healthz,readyz,metrics,/docs,/redoc,/openapi.json"


class _DroppingSampler(Sampler):
    """A sampler that drops what `drops` names and lets `delegate` decide the rest."""

    def __init__(self, delegate: Sampler = ALWAYS_ON) -> None:
        self._delegate = delegate

    def drops(self, kind: SpanKind | None, links: Sequence[Link] | None) -> bool:
        """Whether a span of `kind` (with `links`) is dropped whatever the delegate says."""
        raise NotImplementedError

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        """Drop what `drops` names; the delegate's decision for the rest."""
        if self.drops(kind, links):
            return SamplingResult(Decision.DROP, None, trace_state)
        return self._delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        """Name shown by the SDK's debug output."""
        return f"{type(self).__name__}{{{self._delegate.get_description()}}}"


class BackgroundRootSampler(_DroppingSampler):
    """Drops traces that would start with a client call: polling, not a request.

    A trace worth keeping starts where work enters a service: an HTTP request (server span),
    an event (consumer span), or a publish whose origin is not traced. Root spans of kind
    CLIENT are the outbox relay's claim queries, readiness pings and periodic EHR polls; as
    roots they would drown real traces (about a thousand an hour per service). Client calls
    made inside a request or a handler have a parent and are decided by `ParentBased`.
    """

    def drops(self, kind: SpanKind | None, links: Sequence[Link] | None) -> bool:
        """A CLIENT root with no links."""
        return kind == SpanKind.CLIENT and not links


class EntryPointSampler(_DroppingSampler):
    """For spans whose remote parent was not sampled: work entering this service (a server
    or consumer span) is traced anyway, anything else follows the parent (dropped).

    A caller that dropped its own span (a poll, an EHR that does not trace) still sends a
    `traceparent` with the sampled flag off; honouring it would hide the request it made.
    The span keeps the caller's trace id and parent id, so nothing is invented.
    """

    def drops(self, kind: SpanKind | None, links: Sequence[Link] | None) -> bool:
        """Anything but a SERVER or CONSUMER span."""
        return kind not in (SpanKind.SERVER, SpanKind.CONSUMER)


def default_sampler() -> Sampler:
    """Parent-based: children of a sampled span are sampled; roots go through
    `BackgroundRootSampler`, children of an unsampled remote parent through
    `EntryPointSampler`. Their delegate is what `OTEL_TRACES_SAMPLER`/`_ARG` name (default
    always on; a parent-based sampler named there is unwrapped to its root sampler)."""
    delegate: Sampler = ALWAYS_ON
    if os.environ.get("OTEL_TRACES_SAMPLER"):
        configured = _get_from_env_or_default()
        delegate = getattr(configured, "_root", configured)
    return ParentBased(
        root=BackgroundRootSampler(delegate),
        remote_parent_not_sampled=EntryPointSampler(delegate),
    )


class WhileExporting(_DroppingSampler):
    """Drops every span until a span processor is added to the provider (`ExportingProvider`),
    then lets `delegate` decide.

    With no exporter configured, a recorded span goes nowhere, yet recording it (its
    attributes, events and end) cost a tenth of a busy consumer's CPU (py-spy, benchmark 3),
    and every statement, HTTP call and request made one. A dropped span still has trace and
    span ids, so the logs, the audit log and the `traceparent` sent on keep naming the
    trace; it goes on with the sampled flag off, under which a service that does export
    still traces the work entering it (`EntryPointSampler`).
    """

    def __init__(self, delegate: Sampler) -> None:
        super().__init__(delegate)
        self.exporting = False

    def drops(self, kind: SpanKind | None, links: Sequence[Link] | None) -> bool:
        """Everything, until something receives spans."""
        return not self.exporting


class ExportingProvider(TracerProvider):
    """A tracer provider whose spans are recorded only once something receives them: the
    OTLP exporter `setup_tracing` adds when an endpoint is configured, or any processor
    added later (a test's in-memory exporter)."""

    def __init__(self, resource: Resource, sampler: Sampler) -> None:
        self._gate = WhileExporting(sampler)
        super().__init__(resource=resource, sampler=self._gate)

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        """Add `span_processor`; spans are recorded from now on, and what waited for that
        (`when_exporting`) is done."""
        super().add_span_processor(span_processor)
        self._gate.exporting = True
        while _WAITING_FOR_EXPORT:
            _WAITING_FOR_EXPORT.pop(0)()

    @property
    def exporting(self) -> bool:
        """Whether spans are recorded (something receives them)."""
        return self._gate.exporting


# Instrumentation deferred until spans are exported (`when_exporting`).
_WAITING_FOR_EXPORT: list[Callable[[], None]] = []


def when_exporting(action: Callable[[], None]) -> None:
    """Do `action` (instrument something) once spans can be recorded: now if they can,
    else when an `ExportingProvider` gets its first span processor. Until then its spans
    would be dropped unseen, at a cost: the database instrumentation's listeners were 4-8 %
    of a service's CPU serving the portal (py-spy, benchmark 4)."""
    if exporting():
        action()
    else:
        _WAITING_FOR_EXPORT.append(action)


def exporting() -> bool:
    """Whether this process's spans may be recorded: always, unless the global provider is
    an `ExportingProvider` that nothing receives spans from yet."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, ExportingProvider) or provider.exporting


class UnlessExporting:
    """ASGI: a request goes through the OpenTelemetry middleware (`traced`) while spans are
    exported; otherwise straight to the app (`plain`) under a span that is never recorded,
    as the sampler would have made it: the caller's trace id from `traceparent` (or a new
    one), a new span id, the sampled flag off.

    Unexported, the middleware still built each request's span name, attributes and
    duration metrics, matching the route once more for the name: 7-8 % of records',
    messaging's and scheduling's CPU serving the portal (py-spy, benchmark 4), for spans
    dropped unseen. The logs, the audit log and the calls made on keep naming the trace.
    """

    def __init__(self, traced: Any, plain: Any) -> None:
        self.traced = traced
        self.plain = plain
        self._ids = RandomIdGenerator()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or exporting():
            await self.traced(scope, receive, send)
            return
        caller = trace.get_current_span(propagate.extract(scope, getter=asgi_getter))
        parent = caller.get_span_context()
        span = trace.NonRecordingSpan(
            trace.SpanContext(
                trace_id=parent.trace_id if parent.is_valid else self._ids.generate_trace_id(),
                span_id=self._ids.generate_span_id(),
                is_remote=False,
                trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
                trace_state=parent.trace_state if parent.is_valid else None,
            )
        )
        with trace.use_span(span, end_on_exit=True):
            await self.plain(scope, receive, send)


def export_endpoint(otlp_endpoint: str = "") -> str | None:
    """Where spans go: `OTLP_ENDPOINT` (the service setting, a base URL), else the standard
    `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (full URL) or `OTEL_EXPORTER_OTLP_ENDPOINT` (base
    URL). None: no exporter."""
    if otlp_endpoint:
        return otlp_endpoint.rstrip("/") + "/v1/traces"
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
    if traces:
        return traces
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    if base:
        return base.rstrip("/") + "/v1/traces"
    return None


def setup_tracing(service: str, otlp_endpoint: str = "") -> None:
    """Install the global tracer provider once per process; export over OTLP if configured.

    Standard variables apply: `OTEL_SDK_DISABLED`, `OTEL_SERVICE_NAME` and
    `OTEL_RESOURCE_ATTRIBUTES` (the service name defaults to `service`), the
    `OTEL_EXPORTER_OTLP_*` endpoint, headers, timeout and compression, `OTEL_BSP_*` for
    batching, and `OTEL_TRACES_SAMPLER[_ARG]` for the root sampler (see `default_sampler`).
    With no endpoint, spans carry ids but are not recorded (`ExportingProvider`).
    """
    global _configured
    if _configured or isinstance(trace.get_tracer_provider(), TracerProvider):
        _configured = True
        return
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        _configured = True
        return
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME (which wins).
    provider = ExportingProvider(Resource.create({"service.name": service}), default_sampler())
    endpoint = export_endpoint(otlp_endpoint)
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Headers, timeout, compression and certificates come from OTEL_EXPORTER_OTLP_*.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    _configured = True


def instrument_app(app: Any) -> None:
    """Trace every HTTP request of a FastAPI app (server spans, context from `traceparent`).

    Must run when the app is built: the instrumentation replaces the app's
    `build_middleware_stack`, and Starlette builds the stack on the first ASGI call, the
    lifespan's included. Instrumenting from the lifespan (as once done) changed nothing.
    The tracer is resolved through the global provider, so `setup_tracing` may come later.
    """
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    if not getattr(app, "_is_instrumented_by_opentelemetry", False):
        FastAPIInstrumentor.instrument_app(
            app,
            excluded_urls=EXCLUDED_URLS,
            server_request_hook=server_request_hook,
            # One span per ASGI message ("http send") is noise; an SSE stream has thousands.
            exclude_spans=["receive", "send"],
        )
        instrumented = app.build_middleware_stack

        def build_middleware_stack(_app: Any) -> Any:
            # The instrumentation's stack is ServerErrorMiddleware(OpenTelemetryMiddleware(
            # the app's own stack)): the OpenTelemetry layer is passed by while unexported.
            outer = instrumented()
            traced = getattr(outer, "app", None)
            if isinstance(traced, OpenTelemetryMiddleware):
                outer.app = UnlessExporting(traced, traced.app)
            return outer

        app.build_middleware_stack = types.MethodType(build_middleware_stack, app)


def instrument_http_clients() -> None:
    """Client spans for every outgoing httpx call, with `traceparent` injected (once per
    process: the instrumentation patches httpx's transports)."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(
            async_request_hook=client_request_hook, async_response_hook=client_response_hook
        )


def tracer(name: str = "servicekit") -> trace.Tracer:
    """A tracer from the global provider."""
    return trace.get_tracer(name)


def current_trace_headers() -> dict[str, str]:
    """The current span's context as W3C headers (empty when no span is recording)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def context_from_headers(
    headers: Mapping[str, str | bytes] | Iterable[tuple[str, bytes]],
) -> otel_context.Context:
    """An OpenTelemetry context continued from Kafka (or HTTP) headers."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    carrier: dict[str, str] = {}
    for key, value in items:
        if key in ("traceparent", "tracestate"):
            carrier[key] = value.decode() if isinstance(value, bytes) else value
    return propagate.extract(carrier)


_FHIR_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")
_WORD = re.compile(r"^(?:[a-z]+(?:-[a-z]+)*|v[0-9]+)$")
_URL_ATTRIBUTES = ("http.url", "url.full")
_PATH_ATTRIBUTES = ("http.target", "url.path")


def trace_id_hex(span: trace.Span | None = None) -> str:
    """The trace id of a span (default: the current one) as 32 hex digits (the audit log
    names the trace of each access)."""
    ctx = (span or trace.get_current_span()).get_span_context()
    return format(ctx.trace_id, "032x")


def redact_path(path: str) -> str:
    """A URL path with every id-like segment replaced by `{id}`.

    Route words (`lab-results`), FHIR type names (`Patient`) and operations (`$everything`,
    `_history`) stay; the segment after a FHIR type, and anything with digits or other
    characters, is an id. Span attributes keep the shape of a call, never whose data it was.
    """
    out: list[str] = []
    previous = ""
    for segment in path.split("/"):
        keep = (
            not segment
            or segment.startswith(("$", "_"))
            or (_FHIR_TYPE.match(segment) is not None and previous != "fhir_type")
            or (_WORD.match(segment) is not None and previous != "fhir_type")
        )
        out.append(segment if keep else "{id}")
        previous = "fhir_type" if keep and _FHIR_TYPE.match(segment) else ""
    return "/".join(out)


def redact_url(url: str) -> str:
    """A URL without query, fragment or credentials, its path redacted (`redact_path`)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, redact_path(parts.path), "", ""))


def _redact_span(span: trace.Span) -> None:
    attributes = getattr(span, "attributes", None) or {}
    for key in _URL_ATTRIBUTES:
        if key in attributes:
            span.set_attribute(key, redact_url(str(attributes[key])))
    for key in _PATH_ATTRIBUTES:
        if key in attributes:
            span.set_attribute(key, redact_path(str(attributes[key]).split("?")[0]))
    if "url.query" in attributes:
        span.set_attribute("url.query", "")


def server_request_hook(span: trace.Span, _scope: Mapping[str, object]) -> None:
    """FastAPI instrumentation hook: no ids, names or query strings in server spans."""
    if span.is_recording():
        _redact_span(span)


async def client_request_hook(span: trace.Span, request: object) -> None:
    """httpx instrumentation hook: outgoing calls (FHIR searches carry identifiers in
    their query and patient ids in their path) are recorded by their shape only."""
    if span.is_recording():
        _redact_span(span)


async def client_response_hook(span: trace.Span, request: object, response: object) -> None:
    """httpx instrumentation hook: redact again in case attributes were set late."""
    if span.is_recording():
        _redact_span(span)
