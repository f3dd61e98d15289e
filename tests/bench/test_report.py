"""The benchmark report's arithmetic and files (bench/benchkit/report.py): percentiles,
ratios, the Markdown tables, the results files and the headline line. No benchmark runs
here and no figure is judged: only the code that turns figures into a report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from benchkit.report import (
    Result,
    headline,
    latency_summary,
    markdown,
    percentile,
    ratio,
    write_results,
)

MACHINE = {
    "cpus": 2,
    "processor": "test cpu",
    "memory_gb": 4.0,
    "platform": "Linux",
    "python": "3.11.9",
    "load_avg_1m": 0.5,
}
RUN = {"started": "2026-12-03T10:00:00+00:00", "mode": "quick", "kafka": "tansu"}


def _result() -> Result:
    return Result(
        name="m1_lab_to_patient",
        title="1. Lab result to patient",
        config={"patients": 2},
        figures={"stream_p99_ms": 30.0, "lost": 0},
        baseline={"stream_p99_ms": 10.0, "lost": 0},
        ratios={"stream_p99_ms": ratio(30.0, 10.0)},
        samples={"ours": [1.0, 2.0]},
    )


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    # Order of the input does not matter.
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_latency_summary_counts_and_rounds() -> None:
    summary = latency_summary([1.04, 2.0, 3.0, 4.0])
    assert summary["count"] == 4
    assert summary["p50_ms"] == 2.5
    assert summary["max_ms"] == 4.0
    assert latency_summary([])["p99_ms"] is None


def test_ratio_is_ours_over_baseline_and_none_without_both() -> None:
    assert ratio(30.0, 10.0) == 3.0
    assert ratio(1.0, 3.0) == 0.333
    assert ratio(12.8, 2609.8) == 0.0049
    assert ratio(2000.0, 3.0) == 667.0
    assert ratio(None, 3.0) is None
    assert ratio(3.0, None) is None
    assert ratio(3.0, 0) is None


def test_markdown_has_one_row_per_figure_with_baseline_and_ratio() -> None:
    text = markdown([_result()], MACHINE, RUN)
    assert "## 2026-12-03T10:00:00+00:00 · quick · broker tansu" in text
    assert "Machine: 2 CPUs (test cpu), 4.0 GB" in text
    assert "| stream_p99_ms | 30.0 | 10.0 | 3.00 |" in text
    assert "| lost | 0 | 0 | n/a |" in text


def test_write_results_writes_json_and_appends_to_the_report(tmp_path: Path) -> None:
    write_results([_result()], tmp_path, MACHINE, RUN)
    write_results([_result()], tmp_path, MACHINE, RUN)
    data = json.loads((tmp_path / "m1_lab_to_patient.json").read_text())
    assert data["figures"]["stream_p99_ms"] == 30.0
    assert data["ratios"]["stream_p99_ms"] == 3.0
    assert data["machine"]["cpus"] == 2
    assert data["samples_ms"]["ours"] == [1.0, 2.0]
    report = (tmp_path / "REPORT.md").read_text()
    assert report.startswith("# Benchmark report")
    assert report.count("### 1. Lab result to patient") == 2


def test_headline_picks_figures_and_ratios_and_nulls_what_did_not_run() -> None:
    line = headline(
        [_result()],
        {
            "m1_p99_ms": ("m1_lab_to_patient", "figures", "stream_p99_ms"),
            "m1_ratio": ("m1_lab_to_patient", "ratios", "stream_p99_ms"),
            "m4_rps": ("m4_gateway_load", "figures", "rps"),
        },
    )
    assert line == {"m1_p99_ms": 30.0, "m1_ratio": 3.0, "m4_rps": None}
    json.dumps(line)
