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
        junit = Path(work) / "junit.xml"
        env = {**os.environ, "ACCEPTANCE_REPORT": str(report), "ACCEPTANCE_KAFKA": kafka}
        code = subprocess.call(
            [
                sys.executable,
                "-m",
                "pytest",
                "tests/acceptance",
                "-p",
                "no:cacheprovider",
                f"--junitxml={junit}",
                *extra,
            ],
            cwd=root,
            env=env,
        )
        rows: list[dict[str, Any]] = json.loads(report.read_text()) if report.exists() else []
        passed = _passed(junit)
    print(json.dumps(summarise(rows, passed), sort_keys=False))
    return code


def _passed(junit: Path) -> int:
    """How many journeys passed, from pytest's JUnit XML."""
    import xml.etree.ElementTree as ET  # noqa: N817 - the conventional name

    if not junit.exists():
        return 0
    passed = 0
    for case in ET.parse(junit).getroot().iter("testcase"):
        if not any(child.tag in ("failure", "error", "skipped") for child in case):
            passed += 1
    return passed
