"""OpenTelemetry tracing: one trace across HTTP, the database and every Kafka hop.

The W3C context travels in the `traceparent`/`tracestate` headers of each event. It is
captured when the event is written to the outbox (the business span), continued by the
relay's publish span, and continued again by the consumer's span.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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
