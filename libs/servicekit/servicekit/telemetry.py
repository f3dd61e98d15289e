"""OpenTelemetry tracing: one trace across HTTP, the database and every Kafka hop.

The W3C context travels in the `traceparent`/`tracestate` headers of each event. It is
captured when the event is written to the outbox (the business span), continued by the
relay's publish span, and continued again by the consumer's span.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_configured = False


def setup_tracing(service: str, otlp_endpoint: str = "") -> None:
    """Install the global tracer provider once per process; export over OTLP if configured."""
    global _configured
    if _configured or isinstance(trace.get_tracer_provider(), TracerProvider):
        _configured = True
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces"))
        )
    trace.set_tracer_provider(provider)
    _configured = True


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


def trace_id_hex(span: trace.Span | None = None) -> str:
    """The trace id of a span (default: the current one) as 32 hex digits."""
    ctx = (span or trace.get_current_span()).get_span_context()
    return format(ctx.trace_id, "032x")


_FHIR_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")
_WORD = re.compile(r"^(?:[a-z]+(?:-[a-z]+)*|v[0-9]+)$")
_URL_ATTRIBUTES = ("http.url", "url.full")
_PATH_ATTRIBUTES = ("http.target", "url.path")


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
