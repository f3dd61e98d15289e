"""`bench/run.py --traces` (bench/benchkit/traces.py): the slowest traces of a benchmark's
root action during its run, read from the trace sink's PostgreSQL store."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devstack.tracesink import URL_FILE, SpanRecord, TraceStore

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from benchkit.traces import write_slowest

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 6, 14, 0, tzinfo=UTC)


def _span(
    trace: str, span: str, name: str, start_ms: float, end_ms: float, parent: str | None
) -> SpanRecord:
    return SpanRecord(
        trace_id=trace * 32,
        span_id=span * 16,
        parent_span_id=parent * 16 if parent else None,
        service="gateway" if parent is None else "ehr-connector",
        name=name,
        kind="SERVER" if parent is None else "CLIENT",
        start_time=T0 + timedelta(milliseconds=start_ms),
        end_time=T0 + timedelta(milliseconds=end_ms),
        status="UNSET",
        attributes={},
        links=[],
    )


async def test_the_slowest_traces_from_the_root_during_the_run_longest_first(
    database_url: str, tmp_path: Path
) -> None:
    book = "POST /v1/me/appointments"
    store = TraceStore(database_url)
    await store.open()
    try:
        await store.add(
            [
                # Quick answer, but its EHR write ended 900 ms later: the slowest.
                _span("a", "1", book, 0, 20, None),
                _span("a", "2", "PUT Slot", 600, 900, "1"),
                _span("b", "1", book, 100, 400, None),  # 300 ms
                _span("c", "1", book, 200, 250, None),  # 50 ms
                _span("d", "1", "GET /v1/me/events", 0, 5000, None),  # another root
                _span("e", "1", book, 9000, 99000, None),  # after the run
            ]
        )
    finally:
        await store.close()
    (tmp_path / URL_FILE).parent.mkdir()
    (tmp_path / URL_FILE).write_text(database_url + "\n", encoding="utf-8")

    written = await write_slowest(
        tmp_path, "m2", T0, T0 + timedelta(seconds=5), tmp_path / "out", settle_interval_s=0.01
    )

    assert written == tmp_path / "out" / "m2.txt"
    text = written.read_text()
    assert text.startswith(f"The 3 slowest traces from `{book}` during benchmark m2")
    order = [line.split()[1] for line in text.splitlines() if line.startswith("trace ")]
    assert order == ["a" * 32, "b" * 32, "c" * 32]
    assert "PUT Slot  +600.0 ms  300.0 ms" in text
    assert await write_slowest(tmp_path, "m3", T0, T0, tmp_path / "out") is None
