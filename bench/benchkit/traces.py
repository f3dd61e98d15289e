"""`--traces`: where one slow request's time went, hop by hop, kept beside the figures.

The stack runs with the trace sink (every service sends its spans: HTTP, database
statements, Kafka hops, EHR calls). After a benchmark, the slowest traces of the action it
times (`ROOTS`: the span a person waits on) that started during it are written as trees to
`<results>/traces/<benchmark>.txt`, each span with its offset and duration. Spans cost the
services time, so a traced run's figures are not the ones to compare.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Final

from devstack.tracesink import URL_FILE, TraceStore, format_trace

# The span each benchmark's latency starts at: the EHR's notification of a lab result
# reaching the connector (benchmark 1: the sandbox itself sends no spans, so the time from
# its commit to that POST is not in the trace), the patient's booking request (2), the
# patient's summary read (4).
ROOTS: Final = {
    "m1": "POST /fhir/notifications",
    "m2": "POST /v1/me/appointments",
    "m4": "GET /v1/me/summary",
}
SLOWEST: Final = 5
# The services send spans in batches every second (OTEL_BSP_SCHEDULE_DELAY): wait until
# the count of stored spans stops growing, at most this long.
SETTLE_S: Final = 10.0


async def _settled(store: TraceStore, interval_s: float) -> None:
    seen = -1
    deadline = asyncio.get_running_loop().time() + SETTLE_S
    while asyncio.get_running_loop().time() < deadline:
        count = await store.count()
        if count == seen:
            return
        seen = count
        await asyncio.sleep(interval_s)


async def write_slowest(
    repo: Path,
    name: str,
    since: datetime,
    until: datetime,
    out_dir: Path,
    *,
    settle_interval_s: float = 1.5,
) -> Path | None:
    """The slowest traces of benchmark `name` between `since` and `until` to a file
    (None: the benchmark has no root span to follow)."""
    root = ROOTS.get(name)
    if root is None:
        return None
    store = TraceStore((repo / URL_FILE).read_text(encoding="utf-8").strip())
    await store.open(create=False)
    try:
        await _settled(store, settle_interval_s)
        ids = await store.slowest_trace_ids(root, since, until, SLOWEST)
        traces = [await store.trace(t) for t in ids]
    finally:
        await store.close()
    header = f"The {len(traces)} slowest traces from `{root}` during benchmark {name}\n\n"
    text = header + "\n\n".join(format_trace(t) for t in traces) + "\n"
    return await asyncio.to_thread(_write, out_dir / f"{name}.txt", text)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
