"""Triage benchmark: run the rule engine over the development vignettes and report.

Prints a confusion matrix (rows: correct urgency, columns: engine's), overall accuracy,
emergency sensitivity, over- and under-triage rates, the under-triage rate of urgent cases,
the cases it got wrong, and finally one JSON line with the headline figures. Exits 1 when a
target is missed: 100% of emergencies found, >= 90% overall, urgent under-triage <= 5%.

The vignettes (bench/triage/vignettes_*.yaml) were written for this project; published
symptom-checker vignette sets are deliberately not used (kept for independent evaluation).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from contracts.triage import Urgency
from triage.app import engine_for
from triage.domain import RANK, Sex
from triage.engine import Patient

HERE = Path(__file__).resolve().parent
ORDER = [Urgency.EMERGENCY, Urgency.URGENT, Urgency.ROUTINE, Urgency.SELF_CARE]
TARGETS = {"emergency_sensitivity": 1.0, "accuracy": 0.90, "urgent_under_triage": 0.05}


def load_vignettes(folder: Path = HERE) -> list[dict[str, Any]]:
    """Every vignette, with an id `<file>:<n>`."""
    out: list[dict[str, Any]] = []
    for path in sorted(folder.glob("vignettes_*.yaml")):
        for n, (age, sex, urgency, text, why) in enumerate(yaml.safe_load(path.read_text()), 1):
            out.append(
                {
                    "id": f"{path.stem}:{n}",
                    "age": age,
                    "sex": sex,
                    "urgency": Urgency(urgency),
                    "text": text,
                    "why": why,
                }
            )
    return out


def main(argv: list[str]) -> int:
    """Run the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="only the JSON line")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    engine = engine_for("")
    build_s = time.perf_counter() - started
    vignettes = load_vignettes()
    matrix = {t: dict.fromkeys(ORDER, 0) for t in ORDER}
    wrong: list[str] = []
    started = time.perf_counter()
    for v in vignettes:
        got = engine.assess(Patient(v["age"], Sex(v["sex"])), v["text"]).urgency
        matrix[v["urgency"]][got] += 1
        if got != v["urgency"]:
            wrong.append(
                f"  {v['id']}: expected {v['urgency'].value}, got {got.value}: {v['text']}"
            )
    per_case_ms = (time.perf_counter() - started) * 1000 / max(len(vignettes), 1)
    total = len(vignettes)
    correct = sum(matrix[t][t] for t in ORDER)
    over = sum(matrix[t][g] for t in ORDER for g in ORDER if RANK[g] > RANK[t])
    under = sum(matrix[t][g] for t in ORDER for g in ORDER if RANK[g] < RANK[t])
    emergencies = sum(matrix[Urgency.EMERGENCY].values())
    urgent = sum(matrix[Urgency.URGENT].values())
    urgent_under = (
        matrix[Urgency.URGENT][Urgency.ROUTINE] + matrix[Urgency.URGENT][Urgency.SELF_CARE]
    )
    result = {
        "benchmark": "triage",
        "rule_set_version": engine.rules.version,
        "vignettes": total,
        "accuracy": round(correct / total, 4),
        "emergency_sensitivity": round(
            matrix[Urgency.EMERGENCY][Urgency.EMERGENCY] / emergencies, 4
        ),
        "over_triage": round(over / total, 4),
        "under_triage": round(under / total, 4),
        "urgent_under_triage": round(urgent_under / urgent, 4),
        "self_care_given_to_non_self_care": sum(
            matrix[t][Urgency.SELF_CARE] for t in ORDER if t != Urgency.SELF_CARE
        ),
        "engine_build_s": round(build_s, 2),
        "ms_per_case": round(per_case_ms, 2),
    }
    if not args.quiet:
        width = max(len(u.value) for u in ORDER) + 2
        print("confusion matrix (rows: correct, columns: engine)")
        print(" " * width + "".join(u.value.rjust(width) for u in ORDER))
        for t in ORDER:
            print(t.value.ljust(width) + "".join(str(matrix[t][g]).rjust(width) for g in ORDER))
        print(f"accuracy {result['accuracy']:.1%}  emergency sensitivity "
              f"{result['emergency_sensitivity']:.1%}  over-triage {result['over_triage']:.1%}  "
              f"under-triage {result['under_triage']:.1%}  urgent under-triage "
              f"{result['urgent_under_triage']:.1%}")  # fmt: skip
        if wrong:
            print(f"{len(wrong)} disagreements:")
            print("\n".join(wrong))
    missed = [
        name
        for name, target in TARGETS.items()
        if (result[name] < target if name != "urgent_under_triage" else result[name] > target)
    ]
    result["targets_met"] = not missed
    print(json.dumps(result))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
