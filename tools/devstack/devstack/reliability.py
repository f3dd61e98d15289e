"""`python -m devstack reliability-report`: the acceptance journeys and fault scenarios on
the stack `make up` starts, as a table and one JSON line of headline figures.

Runs `pytest tests/acceptance` (each journey is a scenario: volume, concurrent booking,
conversation, triage, every process killed once, overload, a connector that cannot
process), collects the per-journey rows the suite writes, prints them, and ends with
`{"scenarios": N, "passed": N, "acknowledged": N, "lost": N, "duplicated": N,
"reordered": N}`. The exit code is pytest's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from devstack._paths import repo_root


def summarise(rows: list[dict[str, Any]], passed: int) -> dict[str, int]:
    """The headline figures of the journeys' rows."""
    return {
        "scenarios": len(rows),
        "passed": passed,
        "acknowledged": sum(int(r["acknowledged"]) for r in rows),
        "lost": sum(int(r["lost"]) for r in rows),
        "duplicated": sum(int(r["duplicated"]) for r in rows),
        "reordered": sum(int(r["out_of_order"]) for r in rows),
    }


def run(kafka: str, extra: list[str]) -> int:
    """Run the journeys; print the table and the JSON line; return pytest's exit code."""
    root = repo_root()
    with tempfile.TemporaryDirectory(prefix="reliability-") as work:
        report = Path(work) / "journeys.json"
        env = {**os.environ, "ACCEPTANCE_REPORT": str(report), "ACCEPTANCE_KAFKA": kafka}
        code = subprocess.call(
            [
                sys.executable,
                "-m",
                "pytest",
                "tests/acceptance",
                "-p",
                "no:cacheprovider",
                *extra,
            ],
            cwd=root,
            env=env,
        )
        found: dict[str, Any] = json.loads(report.read_text()) if report.exists() else {}
        rows: list[dict[str, Any]] = found.get("rows", [])
        passed = int(found.get("passed", 0))
    print(json.dumps(summarise(rows, passed), sort_keys=False))
    return code
