#!/usr/bin/env bash
# Check the observability artefacts: the generated PrometheusRule and dashboards are current,
# the alert rules load (`promtool check rules`), every alert's unit tests pass
# (`promtool test rules prometheus/tests/*.yaml`) and every alert has a test that fires it.
#
# promtool: $PROMTOOL if set, else the one on PATH, else Debian's `prometheus` package is
# installed (apt-get, as root or with sudo; CI images are Debian). Exit 3 without one.
#
#   deploy/observability/tools/check.sh
set -euo pipefail

tools="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$tools")"
repo="$(cd "$root/../.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"

find_promtool() {
	if [[ -n "${PROMTOOL:-}" ]]; then
		echo "$PROMTOOL"
		return
	fi
	if command -v promtool >/dev/null 2>&1; then
		command -v promtool
		return
	fi
	local sudo=""
	if [[ $(id -u) -ne 0 ]]; then
		if ! command -v sudo >/dev/null 2>&1; then
			echo "check.sh: promtool is missing and apt-get needs root (apt-get install prometheus)" >&2
			exit 3
		fi
		sudo="sudo"
	fi
	if ! command -v apt-get >/dev/null 2>&1; then
		echo "check.sh: promtool is missing and this is not a Debian system" >&2
		exit 3
	fi
	echo "installing promtool: apt-get install prometheus" >&2
	$sudo apt-get install -y --no-install-recommends prometheus >&2 ||
		{ $sudo apt-get update >&2 && $sudo apt-get install -y --no-install-recommends prometheus >&2; }
	# The package starts a Prometheus server; only promtool is wanted here.
	$sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
	command -v promtool
}

promtool="$(find_promtool)"
echo "promtool: $promtool ($("$promtool" --version 2>&1 | head -n 1))"

echo "==> generated files are current"
"$python" "$tools/generate.py" --check

echo "==> promtool check rules"
"$promtool" check rules "$root/prometheus/alerts.yaml"

echo "==> promtool test rules"
(cd "$root/prometheus/tests" && "$promtool" test rules ./*.yaml)

echo "==> every alert has a test that fires it"
"$python" - "$root" <<'PY'
import sys
from pathlib import Path

import yaml

root = Path(sys.argv[1])
rules = yaml.safe_load((root / "prometheus/alerts.yaml").read_text())
alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
fired = set()
for path in (root / "prometheus/tests").glob("*.yaml"):
    for test in yaml.safe_load(path.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            if case.get("exp_alerts"):
                fired.add(case["alertname"])
missing = sorted(alerts - fired)
if missing:
    sys.exit(f"alerts without a unit test that fires them: {', '.join(missing)}")
print(f"{len(alerts)} alerts, each fired by a unit test")
PY
echo "check.sh: alert rules and dashboards are valid"
