"""`make security-report`: run tests/security (real servers on local ports, the session's
embedded PostgreSQL and Kafka broker; no `make up` needed), then print one row per attack
(attack -> expected -> observed) and a last line of JSON:
`{"attacks": N, "held": N, "failed": N}`. Exits non-zero when an attack was not held.

Usage: python tests/security/report.py [extra pytest arguments]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _rows(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _table(rows: list[dict[str, object]]) -> str:
    headers = ("attack", "expected", "observed", "held")
    cells = [
        (str(r["attack"]), str(r["expected"]), str(r["observed"]), "yes" if r["held"] else "NO")
        for r in rows
    ]
    widths = [
        min(70, max(len(h), *(len(c[i]) for c in cells))) if cells else len(h)
        for i, h in enumerate(headers)
    ]

    def line(values: tuple[str, ...]) -> str:
        return " | ".join(v[: widths[i]].ljust(widths[i]) for i, v in enumerate(values))

    out = [line(headers), "-+-".join("-" * w for w in widths)]
    out.extend(line(c) for c in cells)
    return "\n".join(out)


def main(argv: list[str]) -> int:
    """Run the attacks, print the table and the JSON line; 0 when every attack was held."""
    with tempfile.TemporaryDirectory(prefix="security-report-") as tmp:
        results = Path(tmp) / "attacks.jsonl"
        env = {**os.environ, "SECURITY_REPORT": str(results)}
        command = [sys.executable, "-m", "pytest", "tests/security", "-q", "-p", "no:randomly"]
        run = subprocess.run([*command, *argv], cwd=ROOT, env=env, check=False)
        rows = _rows(results)
    held = sum(1 for r in rows if r["held"])
    print()
    print(_table(rows))
    summary = {"attacks": len(rows), "held": held, "failed": len(rows) - held}
    print(json.dumps(summary))
    if not rows:
        return run.returncode or 1
    return 0 if held == len(rows) and run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
