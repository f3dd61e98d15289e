"""Benchmark 2 times each booking to its Appointment's creation in the EHR, read once the
run is over. No benchmark runs here: a fake EHR stands in for the sandbox."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from benchkit.booking import _to_ehr


def _at(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


class _Ehr:
    """Appointments per patient; each with its history's first version (a later version,
    as after a cancellation, is what a search answers)."""

    def __init__(self, appointments: dict[str, list[tuple[str, str, float]]]) -> None:
        self.appointments = appointments
        self.searches: list[str] = []
        self.http = SimpleNamespace(get=self._get)
        self._first: dict[str, float] = {
            a_id: created for rows in appointments.values() for a_id, _slot, created in rows
        }

    async def search(self, resource_type: str, **params: Any) -> list[dict[str, Any]]:
        assert resource_type == "Appointment"
        self.searches.append(params["patient"])
        return [
            {
                "id": a_id,
                "slot": [{"reference": f"Slot/{slot}"}],
                "meta": {"lastUpdated": _at(created + 5)},
            }
            for a_id, slot, created in self.appointments[params["patient"]]
        ]

    async def _get(self, path: str) -> Any:
        a_id = path.split("/")[3]
        body = {"meta": {"lastUpdated": _at(self._first[a_id])}}
        return SimpleNamespace(status_code=200, json=lambda: body)


async def test_each_booking_is_timed_to_its_first_version_with_one_search_per_patient() -> None:
    ehr = _Ehr(
        {
            "p1": [("a1", "s1", 100.25), ("a2", "s2", 110.5)],
            "p2": [("a3", "s3", 101.0)],
        }
    )
    sent = [("p1", "s1", 100.0), ("p2", "s3", 100.5), ("p1", "s2", 110.0), ("p2", "s9", 120.0)]

    times, missing = await _to_ehr(ehr, sent)

    assert times == [250.0, 500.0, 500.0]  # in booking order; s9 never reached the EHR
    assert missing == 1
    assert sorted(ehr.searches) == ["p1", "p2"]


async def test_a_clock_step_never_yields_a_negative_time() -> None:
    ehr = _Ehr({"p1": [("a1", "s1", 99.0)]})
    assert await _to_ehr(ehr, [("p1", "s1", 100.0)]) == ([0.0], 0)
