"""The alert rules and dashboards (deploy/observability) match the code.

Always: every metric an alert or a dashboard queries is one the services export (a renamed
metric silently empties a panel and disarms an alert), every alert has a promtool unit test
that fires it, and the generated PrometheusRule and dashboards are current. With promtool
(Debian's `prometheus`; deploy/observability/tools/check.sh installs it): the rules load and
their unit tests pass.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "deploy" / "observability"
ALERTS = ROOT / "prometheus" / "alerts.yaml"
TESTS = ROOT / "prometheus" / "tests"
DEFINITION = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"")
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "deriv", "time", "by", "and",
    "or", "unless", "on", "without", "histogram_quantile", "le", "abs", "offset", "bool",
}  # fmt: skip


def exported_metrics() -> set[str]:
    """Every series name the code's prometheus_client metrics expose."""
    names: set[str] = set()
    for path in [*REPO.glob("libs/*/*/**/*.py"), *REPO.glob("services/*/*/**/*.py")]:
        for kind, name in DEFINITION.findall(path.read_text(encoding="utf-8")):
            if kind == "Counter":
                base = name.removesuffix("_total")
                names |= {f"{base}_total", f"{base}_created"}
            elif kind in ("Histogram", "Summary"):
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum", name}
            else:
                names.add(name)
    return names


def metrics_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (labels, functions, numbers left out)."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("portal:")}


def alert_rules() -> list[dict[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text(encoding="utf-8"))["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.stem}: {panel['title']}", target["expr"]))
    return found


def test_alerts_and_dashboards_query_exported_metrics() -> None:
    exported = exported_metrics()
    assert "event_age_seconds_bucket" in exported and "dead_letters_open" in exported
    unknown = {
        (where, name)
        for where, expr in [
            *((r.get("alert") or r.get("record", "?"), r["expr"]) for r in alert_rules()),
            *dashboard_exprs(),
        ]
        for name in metrics_in(expr)
        if name not in exported
    }
    assert unknown == set()


def test_the_metric_check_catches_a_misspelled_metric() -> None:
    assert metrics_in('sum by (service) (rate(outbox_publishd_total{service="x"}[5m]))') == {
        "outbox_publishd_total"
    }


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    alerts = {r["alert"] for r in alert_rules() if "alert" in r}
    fired = {
        case["alertname"]
        for path in TESTS.glob("*.yaml")
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts - fired == set()


def test_generated_rule_and_dashboards_are_current() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_promtool_checks_and_unit_tests_pass() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing: deploy/observability/tools/check.sh installs it")
    checked = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", *sorted(p.name for p in TESTS.glob("*.yaml"))],
        cwd=TESTS,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
