"""Benchmark 4 reads charts of the size benchmark 1 leaves, even when it runs alone. No
benchmark runs here: a fake portal stands in for the stack."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from benchkit.context import Settings
from benchkit.gateway_load import ensure_lab_history, history_size


def test_the_history_is_what_benchmark_1_leaves_each_patient() -> None:
    assert history_size(Settings.make(quick=False)) == 15  # 50/s for 60 s over 200
    assert history_size(Settings.make(quick=True)) == 2  # 10/s for 10 s over 40, rounded


class _Portal:
    """Lab reports per patient; the simulator files one, listed at once."""

    def __init__(self, charts: dict[str, int]) -> None:
        self.charts = charts
        self.filed: list[str] = []

    async def simulate(self, action: str, **body: Any) -> list[str]:
        assert action == "lab-result"
        self.filed.append(body["patient"])
        self.charts[body["patient"]] += 1
        return []


class _Http:
    def __init__(self, portal: _Portal, patient: str) -> None:
        self.portal, self.patient = portal, patient

    async def get(self, path: str, params: dict[str, Any]) -> Any:
        assert path == "/v1/me/lab-results"
        shown = min(self.portal.charts[self.patient], params["limit"])
        return SimpleNamespace(status_code=200, json=lambda: {"items": [{}] * shown})


async def test_only_the_missing_reports_are_filed() -> None:
    portal = _Portal({"full": 20, "some": 1, "none": 0})
    patients = [SimpleNamespace(id=p, http=_Http(portal, p)) for p in portal.charts]
    ctx = SimpleNamespace(clinic=portal, settings=Settings.make(quick=False))
    counts = await ensure_lab_history(ctx, patients, 3)  # type: ignore[arg-type]
    assert counts == [3, 3, 3]
    assert sorted(portal.filed) == ["none", "none", "none", "some", "some"]
