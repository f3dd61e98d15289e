"""Figures, ratios and the report files: pure code, unit-tested in tests/bench.

A benchmark returns a `Result` (its figures, its baseline's figures, the ratios between
them and the latencies for a plot); `write_results` writes `bench/results/<name>.json`,
appends the run's table to `bench/results/REPORT.md`, and `headline` picks the figures of
the final JSON line.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0-100) by linear interpolation between closest ranks; None
    without values. Same definition as numpy's default, without needing numpy."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50, p90, p99 and max of latencies in ms, rounded to 0.1 ms."""

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "count": len(values_ms),
        "p50_ms": rounded(percentile(values_ms, 50)),
        "p90_ms": rounded(percentile(values_ms, 90)),
        "p99_ms": rounded(percentile(values_ms, 99)),
        "max_ms": rounded(max(values_ms) if values_ms else None),
    }


def ratio(ours: float | None, baseline: float | None) -> float | None:
    """ours / baseline to 3 significant digits; None when either is missing or the baseline
    is 0.

    For latencies a ratio of 3 means three times the baseline's time; for rates 0.5 means
    half the baseline's rate."""
    if ours is None or baseline is None or baseline == 0:
        return None
    return float(f"{ours / baseline:.3g}")


@dataclass
class Result:
    """One benchmark's outcome."""

    name: str
    title: str
    config: dict[str, Any]
    figures: dict[str, Any]
    baseline: dict[str, Any]
    ratios: dict[str, float | None] = field(default_factory=dict)
    # Latency samples (ms) per series, for the plot; kept in the JSON too.
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_json(self, machine: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        """Everything about the result, for `bench/results/<name>.json`."""
        return {
            "name": self.name,
            "title": self.title,
            "run": run,
            "machine": machine,
            "config": self.config,
            "figures": self.figures,
            "baseline": self.baseline,
            "ratios": self.ratios,
            "notes": self.notes,
            "elapsed_s": round(self.elapsed_s, 1),
            "samples_ms": {k: [round(v, 2) for v in vs] for k, vs in self.samples.items()},
        }


def machine_info() -> dict[str, Any]:
    """What the figures came from: CPUs, memory, OS, Python, and the load at the start."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "processor": _cpu_model(),
    }
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        info["load_avg_1m"] = None
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        info["memory_gb"] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line(machine: dict[str, Any]) -> str:
    """One line describing the machine, for the report."""
    return (
        f"{machine.get('cpus')} CPUs ({machine.get('processor')}), "
        f"{machine.get('memory_gb')} GB, {machine.get('platform')}, "
        f"Python {machine.get('python')}, "
        f"load {machine.get('load_avg_1m')} at start"
    )


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.1:
            return f"{value:.3g}"
        return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(results: Iterable[Result], machine: dict[str, Any], run: dict[str, Any]) -> str:
    """The run's section of REPORT.md: one table per benchmark (ours, baseline, ratio)."""
    lines = [
        f"## {run['started']} · {run['mode']} · broker {run['kafka']}"
        + (" · traced (spans cost time: not figures to compare)" if run.get("traced") else ""),
        "",
        f"Machine: {machine_line(machine)}.",
        "",
    ]
    for result in results:
        lines += [f"### {result.title}", ""]
        config = ", ".join(f"{k}={v}" for k, v in result.config.items())
        if config:
            lines += [f"Config: {config}.", ""]
        keys = list(dict.fromkeys([*result.figures, *result.baseline]))
        lines += ["| figure | ours | baseline | ratio |", "|---|---:|---:|---:|"]
        for key in keys:
            lines.append(
                f"| {key} | {_cell(result.figures.get(key))} | "
                f"{_cell(result.baseline.get(key))} | {_cell(result.ratios.get(key))} |"
            )
        for note in result.notes:
            lines.append(f"\n- {note}")
        lines.append("")
    return "\n".join(lines) + "\n"


def headline(results: Iterable[Result], keys: dict[str, tuple[str, str, str]]) -> dict[str, Any]:
    """The final JSON line: `keys` maps a headline name to (benchmark, section, figure),
    section being "figures", "baseline" or "ratios". Missing benchmarks give null."""
    by_name = {r.name: r for r in results}
    line: dict[str, Any] = {}
    for name, (bench, section, figure) in keys.items():
        result = by_name.get(bench)
        value = None if result is None else getattr(result, section).get(figure)
        line[name] = value
    return line


def write_results(
    results: Sequence[Result],
    directory: Path,
    machine: dict[str, Any],
    run: dict[str, Any],
) -> list[Path]:
    """`<directory>/<name>.json` per result, and the run's tables appended to REPORT.md."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for result in results:
        path = directory / f"{result.name}.json"
        path.write_text(json.dumps(result.to_json(machine, run), indent=2) + "\n")
        written.append(path)
    report = directory / "REPORT.md"
    if not report.exists():
        report.write_text(
            "# Benchmark report\n\nEach run of `make bench` / `make bench-quick` appends its "
            "section. Ratios: latency ours/baseline (lower is better), rates ours/baseline "
            "(higher is better); the baselines do the same hops with no logic, on the same "
            "machine, in the same run.\n\n"
        )
    with report.open("a") as out:
        out.write(markdown(results, machine, run))
    written.append(report)
    return written


def plot(result: Result, path: Path) -> Path | None:
    """A latency distribution plot (histogram and CDF per series) as PNG; None if there is
    nothing to plot."""
    series = {k: v for k, v in result.samples.items() if v}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(11, 4))
    # Shared log-spaced bins: baselines and our figures can be orders of magnitude apart.
    low = max(0.1, min(min(v) for v in series.values()))
    high = max(low * 1.01, max(max(v) for v in series.values()))
    bins = [low * (high / low) ** (i / 60) for i in range(61)]
    for label, values in series.items():
        ordered = sorted(values)
        hist.hist([max(low, v) for v in ordered], bins=bins, alpha=0.5, label=label)
        cdf.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
    hist.set_xscale("log")
    hist.set_xlabel("latency (ms)")
    hist.set_ylabel("count")
    cdf.set_xlabel("latency (ms)")
    cdf.set_ylabel("fraction ≤ x")
    cdf.set_xscale("log")
    cdf.grid(True, which="both", alpha=0.3)
    hist.legend(fontsize=8)
    cdf.legend(fontsize=8)
    fig.suptitle(result.title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


class Progress:
    """A progress line while a benchmark runs: done, rate, elapsed, remaining."""

    def __init__(self, label: str, total_s: float, out: TextIO | None = None) -> None:
        self.label = label
        self.total_s = total_s
        self.out = out if out is not None else sys.stderr
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, done: int, unit: str = "ops", force: bool = False) -> None:
        """Print at most once a second (or when forced)."""
        now = time.monotonic()
        if not force and now - self._last < 1.0:
            return
        self._last = now
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        remaining = max(0.0, self.total_s - elapsed)
        self.out.write(
            f"  [{self.label}] {done:,} {unit}, {rate:,.1f}/s, "
            f"{elapsed:,.0f} s elapsed, ~{remaining:,.0f} s left\n"
        )
        self.out.flush()


def utc_now() -> str:
    """Now, RFC 3339 with offset."""
    return datetime.now(UTC).isoformat(timespec="seconds")
