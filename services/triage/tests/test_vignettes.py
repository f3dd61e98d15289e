"""The development vignettes (bench/triage) through the engine: the benchmark's targets hold,
and every red flag of the rule file is reached by at least one vignette."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contracts.triage import Urgency
from triage.app import engine_for
from triage.domain import Sex
from triage.engine import Engine, Patient

BENCH = Path(__file__).resolve().parents[3] / "bench" / "triage"
RANK = {Urgency.SELF_CARE: 0, Urgency.ROUTINE: 1, Urgency.URGENT: 2, Urgency.EMERGENCY: 3}


@pytest.fixture(scope="module")
def outcomes() -> list[tuple[Urgency, Urgency, set[str]]]:
    engine: Engine = engine_for("")
    out = []
    for path in sorted(BENCH.glob("vignettes_*.yaml")):
        for age, sex, urgency, text, _why in yaml.safe_load(path.read_text()):
            result = engine.assess(Patient(age, Sex(sex)), text)
            out.append((Urgency(urgency), result.urgency, {f.id for f in result.flags}))
    return out


def test_benchmark_targets_hold(outcomes: list[tuple[Urgency, Urgency, set[str]]]) -> None:
    assert len(outcomes) >= 300
    emergencies = [got for want, got, _ in outcomes if want == Urgency.EMERGENCY]
    urgent = [got for want, got, _ in outcomes if want == Urgency.URGENT]
    assert all(got == Urgency.EMERGENCY for got in emergencies)
    assert sum(want == got for want, got, _ in outcomes) / len(outcomes) >= 0.90
    assert sum(RANK[got] < RANK[Urgency.URGENT] for got in urgent) / len(urgent) <= 0.05


def test_every_red_flag_is_reached_by_a_vignette(
    outcomes: list[tuple[Urgency, Urgency, set[str]]],
) -> None:
    rules = engine_for("").rules
    red = {f.id for c in rules.complaints for f in c.flags if f.level == "red"}
    fired = set().union(*(flags for _, _, flags in outcomes))
    assert sorted(red - fired) == []
