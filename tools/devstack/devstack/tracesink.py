"""A small trace sink for the local stack: an OTLP/HTTP receiver that keeps spans in
PostgreSQL, and a printer that shows the last traces as trees.

Why it exists: neither an OpenTelemetry Collector nor Jaeger can be had from the package
registries this project reaches (Debian has only `prometheus`; the PyPI `jaeger` is an
unrelated telescope library; nothing on npm or Maven Central ships either binary), so the
local stack receives the services' spans itself. It speaks the standard protocol
(`POST /v1/traces`, `application/x-protobuf`, optionally gzip), so the services' exporters
are configured exactly as for a real collector.

    python -m devstack.tracesink serve --port 4318      # what `make up TRACING=1` runs
    python -m devstack.tracesink show --limit 5         # what `make traces` runs

Both read the database from `TRACES_DATABASE_URL` (a `postgresql://` URL; the database is
created on first use).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DEFAULT_PORT = 4318
MAX_BODY_BYTES = 32 * 1024 * 1024
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUSES = {0: "UNSET", 1: "OK", 2: "ERROR"}
SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id       text NOT NULL,
    span_id        text NOT NULL,
    parent_span_id text,
    service        text NOT NULL,
    name           text NOT NULL,
    kind           text NOT NULL,
    start_time     timestamptz NOT NULL,
    end_time       timestamptz NOT NULL,
    status         text NOT NULL,
    attributes     jsonb NOT NULL,
    links          jsonb NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS spans_start_time ON spans (start_time);
"""


@dataclass(frozen=True)
class SpanRecord:
    """One span as stored: ids in hex, times timezone-aware."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    service: str
    name: str
    kind: str
    start_time: datetime
    end_time: datetime
    status: str
    attributes: dict[str, Any]
    links: list[dict[str, str]]

    @property
    def duration_ms(self) -> float:
        """How long the span took, in milliseconds."""
        return (self.end_time - self.start_time).total_seconds() * 1000


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _time(unix_nano: int) -> datetime:
    return datetime.fromtimestamp(unix_nano / 1e9, tz=UTC)


def decode_request(body: bytes) -> list[SpanRecord]:
    """The spans of one OTLP `ExportTraceServiceRequest` (protobuf)."""
    request = ExportTraceServiceRequest.FromString(body)
    records: list[SpanRecord] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name") or "unknown")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                records.append(
                    SpanRecord(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        service=service,
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        start_time=_time(span.start_time_unix_nano),
                        end_time=_time(span.end_time_unix_nano),
                        status=STATUSES.get(span.status.code, str(span.status.code)),
                        attributes=_attributes(span.attributes),
                        links=[
                            {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
                            for link in span.links
                        ],
                    )
                )
    return records


# -- storage ------------------------------------------------------------------------------------


def asyncpg_dsn(url: str) -> str:
    """A `postgresql://` DSN for asyncpg from an SQLAlchemy-style URL (`+asyncpg` dropped)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"TRACES_DATABASE_URL must be a PostgreSQL URL, not {scheme!r}")
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, parts.fragment))


async def ensure_database(url: str) -> None:
    """Create the URL's database if it does not exist (connecting to `postgres` first)."""
    dsn = asyncpg_dsn(url)
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not name:
        raise ValueError("TRACES_DATABASE_URL must name a database")
    admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    conn = await asyncpg.connect(admin)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            quoted = '"' + name.replace('"', '""') + '"'
            await conn.execute(f"CREATE DATABASE {quoted}")
    finally:
        await conn.close()


class TraceStore:
    """Spans in PostgreSQL: `spans` table, one row per span (re-sent spans are ignored)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: Any = None

    async def open(self, *, create: bool = True) -> None:
        """Connect (creating the database and table when asked)."""
        if create:
            await ensure_database(self.url)
        self._pool = await asyncpg.create_pool(asyncpg_dsn(self.url), min_size=1, max_size=4)
        if create:
            async with self._pool.acquire() as conn:
                await conn.execute(SCHEMA)

    async def close(self) -> None:
        """Close the connection pool."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def add(self, spans: Sequence[SpanRecord]) -> None:
        """Store spans."""
        if not spans:
            return
        async with self._pool.acquire() as conn:
            await conn.executemany(
                """INSERT INTO spans (trace_id, span_id, parent_span_id, service, name, kind,
                       start_time, end_time, status, attributes, links)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11::jsonb)
                   ON CONFLICT (trace_id, span_id) DO NOTHING""",
                [
                    (
                        s.trace_id,
                        s.span_id,
                        s.parent_span_id,
                        s.service,
                        s.name,
                        s.kind,
                        s.start_time,
                        s.end_time,
                        s.status,
                        json.dumps(s.attributes, default=str),
                        json.dumps(s.links),
                    )
                    for s in spans
                ],
            )

    async def recent_trace_ids(self, limit: int) -> list[str]:
        """The ids of the `limit` traces that started last, newest first."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT trace_id FROM spans GROUP BY trace_id
                   ORDER BY min(start_time) DESC LIMIT $1""",
                limit,
            )
        return [r["trace_id"] for r in rows]

    async def trace(self, trace_id: str) -> list[SpanRecord]:
        """Every stored span of one trace, by start time."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM spans WHERE trace_id = $1 ORDER BY start_time, span_id", trace_id
            )
        return [_record(r) for r in rows]

    async def count(self) -> int:
        """How many spans are stored."""
        async with self._pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM spans"))

    async def slowest_trace_ids(
        self, root_name: str, since: datetime, until: datetime, limit: int
    ) -> list[str]:
        """The `limit` traces with a span named `root_name` (their root: the request or
        the action a person waits on) started in [since, until], longest first: from that
        span's start to the end of the trace's last span."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT r.trace_id FROM spans r JOIN spans s ON s.trace_id = r.trace_id
                   WHERE r.name = $1 AND r.start_time BETWEEN $2 AND $3
                   GROUP BY r.trace_id, r.span_id, r.start_time
                   ORDER BY max(s.end_time) - r.start_time DESC LIMIT $4""",
                root_name,
                since,
                until,
                limit,
            )
        return [r["trace_id"] for r in rows]

    async def all_spans(self) -> list[SpanRecord]:
        """Every stored span (tests and small local stacks only)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch("SELECT * FROM spans ORDER BY start_time, span_id")
        return [_record(r) for r in rows]


def _record(row: Any) -> SpanRecord:
    return SpanRecord(
        trace_id=row["trace_id"],
        span_id=row["span_id"],
        parent_span_id=row["parent_span_id"],
        service=row["service"],
        name=row["name"],
        kind=row["kind"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        status=row["status"],
        attributes=json.loads(row["attributes"]),
        links=json.loads(row["links"]),
    )


# -- the receiver -------------------------------------------------------------------------------


def build_app(store: TraceStore, *, manage_store: bool = True) -> Starlette:
    """The OTLP/HTTP receiver: `POST /v1/traces`, `GET /readyz`, `GET /healthz`."""

    async def receive(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0] != "application/x-protobuf":
            return JSONResponse(
                {"title": "Unsupported Media Type", "detail": "Send OTLP protobuf."},
                status_code=415,
                media_type="application/problem+json",
            )
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"title": "Too large"}, status_code=413)
        try:
            spans = decode_request(body)
        except Exception:
            return JSONResponse(
                {"title": "Bad Request", "detail": "Not an OTLP ExportTraceServiceRequest."},
                status_code=400,
                media_type="application/problem+json",
            )
        await store.add(spans)
        return Response(
            ExportTraceServiceResponse().SerializeToString(),
            media_type="application/x-protobuf",
        )

    async def ready(_request: Request) -> Response:
        return JSONResponse({"status": "ready"})

    async def lifespan(_app: Starlette) -> Any:
        if manage_store:
            await store.open()
        try:
            yield
        finally:
            if manage_store:
                await store.close()

    return Starlette(
        routes=[
            Route("/v1/traces", receive, methods=["POST"]),
            Route("/readyz", ready),
            Route("/healthz", ready),
        ],
        lifespan=lifespan,
    )


def create_app() -> Starlette:
    """uvicorn factory for the local stack (`--factory devstack.tracesink:create_app`).

    Leaves its database URL in `.data/trace-sink.url`, so `make traces` finds the spans
    without being told where the stack's PostgreSQL is.
    """
    url = database_url_from_env()
    URL_FILE.parent.mkdir(parents=True, exist_ok=True)
    URL_FILE.write_text(url + "\n", encoding="utf-8")
    return build_app(TraceStore(url))


# Relative to the working directory: the supervisor runs the sink at the repository root,
# where `make traces` runs too.
URL_FILE = Path(".data") / "trace-sink.url"


def database_url_from_env() -> str:
    """`TRACES_DATABASE_URL`, else what the running stack's sink left in `.data/`."""
    url = os.environ.get("TRACES_DATABASE_URL", "")
    if not url and URL_FILE.exists():
        url = URL_FILE.read_text(encoding="utf-8").strip()
    if not url:
        raise SystemExit(
            "TRACES_DATABASE_URL is not set and no trace sink has run (make up TRACING=1): "
            "the PostgreSQL database the trace sink keeps spans in "
            "(e.g. postgresql://postgres@/portal_traces?host=/path/to/socket)"
        )
    return url


# -- trees --------------------------------------------------------------------------------------


@dataclass
class SpanNode:
    """A span with its children, for printing and for tests."""

    span: SpanRecord
    children: list[SpanNode] = field(default_factory=list)

    def walk(self, depth: int = 0) -> Iterable[tuple[int, SpanRecord]]:
        """Depth-first: (depth, span)."""
        yield depth, self.span
        for child in self.children:
            yield from child.walk(depth + 1)


def build_trees(spans: Sequence[SpanRecord]) -> list[SpanNode]:
    """The trace's spans as trees: a span whose parent was not received is a root."""
    nodes = {s.span_id: SpanNode(s) for s in spans}
    roots: list[SpanNode] = []
    for node in nodes.values():
        parent = nodes.get(node.span.parent_span_id or "")
        (parent.children if parent is not None else roots).append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: n.span.start_time)
    roots.sort(key=lambda n: n.span.start_time)
    return roots


def format_trace(spans: Sequence[SpanRecord]) -> str:
    """One trace as an indented tree, one line per span."""
    if not spans:
        return ""
    first = min(s.start_time for s in spans)
    last = max(s.end_time for s in spans)
    services = sorted({s.service for s in spans})
    lines = [
        f"trace {spans[0].trace_id}  {first.isoformat(timespec='milliseconds')}  "
        f"{len(spans)} spans  {(last - first).total_seconds() * 1000:.1f} ms  "
        f"[{', '.join(services)}]"
    ]
    for root in build_trees(spans):
        for depth, span in root.walk():
            offset = (span.start_time - first).total_seconds() * 1000
            mark = " ERROR" if span.status == "ERROR" else ""
            links = "".join(f"  (link: trace {ln['trace_id'][:8]}…)" for ln in span.links)
            orphan = (
                "  (parent not received)" if depth == 0 and span.parent_span_id is not None else ""
            )
            lines.append(
                f"  {'  ' * depth}{span.service:<14} {span.kind:<8} {span.name}"
                f"  +{offset:.1f} ms  {span.duration_ms:.1f} ms{mark}{links}{orphan}"
            )
    return "\n".join(lines)


def _as_json(span: SpanRecord) -> dict[str, Any]:
    out = dict(span.__dict__)
    out["start_time"] = span.start_time.isoformat()
    out["end_time"] = span.end_time.isoformat()
    out["duration_ms"] = round(span.duration_ms, 3)
    return out


async def show(url: str, limit: int, trace_id: str | None, as_json: bool) -> str:
    """The last `limit` traces (or one) as text trees or JSON."""
    store = TraceStore(url)
    await store.open(create=False)
    try:
        ids = [trace_id] if trace_id else await store.recent_trace_ids(limit)
        traces = [await store.trace(t) for t in ids]
    finally:
        await store.close()
    if as_json:
        return json.dumps([[_as_json(s) for s in spans] for spans in traces], indent=2)
    if not traces:
        return "no traces stored yet (is the stack running with TRACING=1?)"
    return "\n\n".join(format_trace(spans) for spans in reversed(traces))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m devstack.tracesink serve|show`."""
    parser = argparse.ArgumentParser(prog="python -m devstack.tracesink", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="receive OTLP/HTTP spans into PostgreSQL")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    printer = commands.add_parser("show", help="print the last traces as trees")
    printer.add_argument("--limit", type=int, default=5)
    printer.add_argument("--trace", help="one trace id (32 hex digits)")
    printer.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    url = database_url_from_env()
    if args.command == "serve":
        import uvicorn

        uvicorn.run(build_app(TraceStore(url)), host=args.host, port=args.port, log_level="warning")
        return 0
    try:
        sys.stdout.write(asyncio.run(show(url, args.limit, args.trace, args.json)) + "\n")
    except (OSError, asyncpg.PostgresError) as exc:
        sys.stderr.write(f"cannot read traces from TRACES_DATABASE_URL: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
