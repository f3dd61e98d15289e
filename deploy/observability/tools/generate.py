# ruff: noqa: E501 - the panel table below is PromQL: queries read best on one line
"""Generate the observability artefacts shipped by the k8s overlays, or check they are current.

* `prometheusrule.yaml`: the PrometheusRule (prometheus-operator) carrying
  `prometheus/alerts.yaml`, the single source of the alert rules.
* `grafana/dashboards/*.json`: the Grafana dashboards, from the panel lists below (one place
  to read what each dashboard shows; Grafana's JSON is generated, never edited by hand).

    python deploy/observability/tools/generate.py           # write them
    python deploy/observability/tools/generate.py --check   # exit 1 if a file is stale
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "prometheus" / "alerts.yaml"
PROMETHEUS_RULE = ROOT / "prometheusrule.yaml"
DASHBOARDS = ROOT / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
HEADER = (
    "# Generated from prometheus/alerts.yaml by tools/generate.py: edit alerts.yaml, then\n"
    "# run `python deploy/observability/tools/generate.py`.\n"
)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, as they are written in alerts.yaml."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def prometheus_rule() -> str:
    """The PrometheusRule document for the alert rules."""
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "portal-alerts",
            "labels": {"app.kubernetes.io/part-of": "portal", "role": "alert-rules"},
        },
        "spec": {"groups": rules["groups"]},
    }
    return HEADER + yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, width=100)


# -- dashboards ---------------------------------------------------------------------------------


@dataclass
class Panel:
    """One panel: a title, PromQL targets (expr, legend), a unit and a kind."""

    title: str
    targets: list[tuple[str, str]]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    description: str = ""


@dataclass
class Row:
    """A titled row of panels."""

    title: str
    panels: list[Panel] = field(default_factory=list)


@dataclass
class Dashboard:
    """A dashboard: uid (file name), title, rows, and whether it has a service selector."""

    uid: str
    title: str
    description: str
    rows: list[Row]
    per_service: bool = False


def _p(quantile: float, metric: str, by: str, selector: str = "") -> str:
    return (
        f"histogram_quantile({quantile}, sum by (le, {by}) (rate({metric}_bucket{selector}[5m])))"
    )


SVC = '{service=~"$service"}'
DASHBOARD_SPECS = [
    Dashboard(
        uid="portal-overview",
        title="Portal: system overview",
        description="Is the portal healthy? What a patient feels, then the parts behind it.",
        rows=[
            Row(
                "Patients",
                [
                    Panel(
                        "Notification latency (EHR write to SSE push)",
                        [
                            (
                                _p(0.5, "patient_notification_latency_seconds", "kind"),
                                "p50 {{kind}}",
                            ),
                            (
                                _p(0.99, "patient_notification_latency_seconds", "kind"),
                                "p99 {{kind}}",
                            ),
                        ],
                        unit="s",
                        description="SLO: 99% within 30 s (alerts NotificationLatencyBudgetBurn*)",
                    ),
                    Panel("Open SSE streams", [("sum(sse_connections)", "streams")], width=6),
                    Panel(
                        "Notifications pushed / s",
                        [("sum by (kind) (rate(sse_notifications_sent_total[5m]))", "{{kind}}")],
                        width=6,
                    ),
                ],
            ),
            Row(
                "Events",
                [
                    Panel(
                        "Oldest unpublished event",
                        [("max by (service) (outbox_oldest_pending_age_seconds)", "{{service}}")],
                        unit="s",
                    ),
                    Panel(
                        "Consumer lag",
                        [("sum by (service) (consumer_lag)", "{{service}}")],
                    ),
                    Panel(
                        "Open dead letters",
                        [("sum by (service) (dead_letters_open)", "{{service}}")],
                        kind="stat",
                        width=6,
                    ),
                    Panel(
                        "Parked messages",
                        [("sum by (service) (parked_messages)", "{{service}}")],
                        kind="stat",
                        width=6,
                    ),
                ],
            ),
            Row(
                "EHR",
                [
                    Panel(
                        "EHR calls failing",
                        [
                            (
                                'sum(rate(ehr_call_seconds_count{status=~"5..|429|timeout|'
                                'connection_error"}[5m])) / sum(rate(ehr_call_seconds_count[5m]))',
                                "failing",
                            )
                        ],
                        unit="percentunit",
                    ),
                    Panel(
                        "Circuit breaker (0 closed, 1 half-open, 2 open)",
                        [("max(ehr_circuit_breaker_state)", "state")],
                        kind="stat",
                        width=6,
                    ),
                    Panel(
                        "Since the last canary success",
                        [("time() - max(canary_last_success_timestamp_seconds > 0)", "age")],
                        unit="s",
                        kind="stat",
                        width=6,
                    ),
                    Panel(
                        "Subscriptions not active",
                        [
                            (
                                'sum(inbound_subscription_status{status=~"error|off|missing"})',
                                "not active",
                            )
                        ],
                        kind="stat",
                        width=6,
                    ),
                    Panel(
                        "Heartbeats missing",
                        [("sum(inbound_heartbeat_missing)", "topics")],
                        kind="stat",
                        width=6,
                    ),
                ],
            ),
        ],
    ),
    Dashboard(
        uid="portal-service",
        title="Portal: per service",
        description="One service's outbox, consumers and dead letters (choose it above).",
        per_service=True,
        rows=[
            Row(
                "Outbox",
                [
                    Panel("Backlog", [(f"sum by (service) (outbox_backlog{SVC})", "{{service}}")]),
                    Panel(
                        "Oldest unpublished event",
                        [
                            (
                                f"max by (service) (outbox_oldest_pending_age_seconds{SVC})",
                                "{{service}}",
                            )
                        ],
                        unit="s",
                    ),
                    Panel(
                        "Published / s by topic",
                        [(f"sum by (topic) (rate(outbox_published_total{SVC}[5m]))", "{{topic}}")],
                    ),
                    Panel(
                        "Publish errors / s",
                        [
                            (
                                f"sum by (service) (rate(outbox_publish_errors_total{SVC}[5m]))",
                                "{{service}}",
                            )
                        ],
                    ),
                ],
            ),
            Row(
                "Consumers",
                [
                    Panel(
                        "Messages / s by outcome",
                        [
                            (
                                f"sum by (consumer, outcome) (rate(consumer_messages_total{SVC}[5m]))",
                                "{{consumer}} {{outcome}}",
                            )
                        ],
                    ),
                    Panel(
                        "Handler time p95",
                        [(_p(0.95, "consumer_handler_seconds", "consumer", SVC), "{{consumer}}")],
                        unit="s",
                    ),
                    Panel(
                        "Event age at handling p95 (end to end per hop)",
                        [(_p(0.95, "event_age_seconds", "consumer", SVC), "{{consumer}}")],
                        unit="s",
                    ),
                    Panel(
                        "Lag by consumer",
                        [(f"sum by (consumer) (consumer_lag{SVC})", "{{consumer}}")],
                    ),
                    Panel(
                        "Open dead letters",
                        [(f"sum by (consumer) (dead_letters_open{SVC})", "{{consumer}}")],
                    ),
                    Panel(
                        "Parked messages",
                        [(f"sum by (consumer) (parked_messages{SVC})", "{{consumer}}")],
                    ),
                    Panel(
                        "Dead-lettered / s by kind",
                        [
                            (
                                f"sum by (consumer, kind) (rate(dead_letters_total{SVC}[5m]))",
                                "{{consumer}} {{kind}}",
                            )
                        ],
                        width=24,
                    ),
                ],
            ),
        ],
    ),
    Dashboard(
        uid="portal-ehr",
        title="Portal: EHR integration health",
        description="The ehr-connector: calls to the EHR, Subscriptions, back-fills, canary.",
        rows=[
            Row(
                "Calls to the EHR",
                [
                    Panel(
                        "Calls / s by status",
                        [("sum by (status) (rate(ehr_call_seconds_count[5m]))", "{{status}}")],
                    ),
                    Panel(
                        "Latency p95 by interaction",
                        [(_p(0.95, "ehr_call_seconds", "interaction"), "{{interaction}}")],
                        unit="s",
                    ),
                    Panel(
                        "Retries / s by reason",
                        [("sum by (reason) (rate(ehr_call_retries_total[5m]))", "{{reason}}")],
                    ),
                    Panel(
                        "Circuit breaker state",
                        [("max(ehr_circuit_breaker_state)", "0 closed, 1 half-open, 2 open")],
                    ),
                    Panel(
                        "Token requests / s by outcome",
                        [("sum by (outcome) (rate(ehr_token_requests_total[5m]))", "{{outcome}}")],
                        width=24,
                    ),
                ],
            ),
            Row(
                "Subscriptions and notifications",
                [
                    Panel(
                        "Subscription status",
                        [
                            (
                                "max by (topic, status) (inbound_subscription_status) == 1",
                                "{{topic}}: {{status}}",
                            )
                        ],
                        kind="stat",
                    ),
                    Panel(
                        "Heartbeat missing",
                        [("max by (topic) (inbound_heartbeat_missing)", "{{topic}}")],
                    ),
                    Panel(
                        "Notifications / s by type",
                        [("sum by (type) (rate(inbound_notifications_total[5m]))", "{{type}}")],
                    ),
                    Panel(
                        "Failed or rejected notifications / s by reason",
                        [
                            (
                                "sum by (reason) (rate(inbound_notifications_rejected_total[5m]))",
                                "{{reason}}",
                            )
                        ],
                    ),
                    Panel(
                        "Events / s by outcome",
                        [
                            (
                                "sum by (resource_type, outcome) (rate(inbound_events_total[5m]))",
                                "{{resource_type}} {{outcome}}",
                            )
                        ],
                    ),
                    Panel(
                        "Gaps detected and recovered",
                        [
                            (
                                "sum by (topic) (increase(inbound_gaps_detected_total[1h]))",
                                "detected {{topic}}",
                            ),
                            (
                                "sum by (topic, method) (increase(inbound_gaps_recovered_total[1h]))",
                                "recovered {{topic}} {{method}}",
                            ),
                        ],
                    ),
                    Panel(
                        "EHR notification delay p95 by topic (event at the EHR to received)",
                        [
                            (
                                "histogram_quantile(0.95, sum by (topic, le) "
                                "(rate(inbound_notification_delay_seconds_bucket[5m])))",
                                "{{topic}}",
                            )
                        ],
                        unit="s",
                    ),
                ],
            ),
            Row(
                "Back-fills and canary",
                [
                    Panel("Back-fills by state", [("sum by (state) (backfills)", "{{state}}")]),
                    Panel(
                        "History entries published / s",
                        [("sum(rate(backfill_entries_total[5m]))", "entries")],
                    ),
                    Panel(
                        "Canary latency (EHR write to Kafka)",
                        [
                            (
                                "histogram_quantile(0.5, sum by (le) (rate(canary_latency_seconds_bucket[30m])))",
                                "p50",
                            ),
                            (
                                "histogram_quantile(0.95, sum by (le) (rate(canary_latency_seconds_bucket[30m])))",
                                "p95",
                            ),
                        ],
                        unit="s",
                    ),
                    Panel(
                        "Canary failures by stage",
                        [("sum by (stage) (increase(canary_failures_total[1h]))", "{{stage}}")],
                    ),
                ],
            ),
        ],
    ),
    Dashboard(
        uid="portal-event-flow",
        title="Portal: event flow",
        description="Events from outbox to consumers, and the care-team work they create.",
        rows=[
            Row(
                "Publish and consume",
                [
                    Panel(
                        "Published / s by topic",
                        [("sum by (topic) (rate(outbox_published_total[5m]))", "{{topic}}")],
                    ),
                    Panel(
                        "Handled / s by service and outcome",
                        [
                            (
                                "sum by (service, outcome) (rate(consumer_messages_total[5m]))",
                                "{{service}} {{outcome}}",
                            )
                        ],
                    ),
                    Panel(
                        "Event age at handling p95, per consumer",
                        [
                            (
                                _p(0.95, "event_age_seconds", "service, consumer"),
                                "{{service}}/{{consumer}}",
                            )
                        ],
                        unit="s",
                    ),
                    Panel(
                        "Consumer lag",
                        [("sum by (service, consumer) (consumer_lag)", "{{service}}/{{consumer}}")],
                    ),
                    Panel(
                        "Oldest unpublished event",
                        [("max by (service) (outbox_oldest_pending_age_seconds)", "{{service}}")],
                        unit="s",
                    ),
                    Panel(
                        "Dead-lettered / s",
                        [
                            (
                                "sum by (service, kind) (rate(dead_letters_total[5m]))",
                                "{{service}} {{kind}}",
                            )
                        ],
                    ),
                ],
            ),
            Row(
                "To the patient",
                [
                    Panel(
                        "Notification latency p95 by kind",
                        [(_p(0.95, "patient_notification_latency_seconds", "kind"), "{{kind}}")],
                        unit="s",
                    ),
                    Panel(
                        "Pushed / s by kind",
                        [("sum by (kind) (rate(sse_notifications_sent_total[5m]))", "{{kind}}")],
                    ),
                ],
            ),
            Row(
                "Care-team pools",
                [
                    Panel(
                        "Triage summaries queued by pool (1h)",
                        [
                            (
                                "sum by (pool, urgency) (increase(messaging_pool_triage_items_total[1h]))",
                                "{{pool}} {{urgency}}",
                            )
                        ],
                    ),
                    Panel(
                        "Messages by pool (1h)",
                        [
                            (
                                "sum by (pool, direction) (increase(messaging_pool_messages_total[1h]))",
                                "{{pool}} {{direction}}",
                            )
                        ],
                    ),
                    Panel(
                        "Triage assessments by urgency (1h)",
                        [
                            (
                                "sum by (urgency) (increase(triage_assessments_total[1h]))",
                                "{{urgency}}",
                            )
                        ],
                        width=24,
                    ),
                ],
            ),
        ],
    ),
    Dashboard(
        uid="portal-security",
        title="Portal: security events",
        description="Refused tokens, probing for other patients' data, forged notifications.",
        rows=[
            Row(
                "Patients' side (gateway)",
                [
                    Panel(
                        "Refused tokens / min by reason",
                        [
                            (
                                "sum by (reason) (rate(gateway_auth_failures_total[5m])) * 60",
                                "{{reason}}",
                            )
                        ],
                    ),
                    Panel(
                        "Reads of ids not the caller's / min",
                        [
                            (
                                "sum by (resource) (rate(gateway_foreign_id_reads_total[5m])) * 60",
                                "{{resource}}",
                            )
                        ],
                    ),
                    Panel(
                        "Requests beyond the token's scopes / min",
                        [
                            (
                                "sum by (resource) (rate(gateway_scope_denials_total[5m])) * 60",
                                "{{resource}}",
                            )
                        ],
                        width=24,
                    ),
                ],
            ),
            Row(
                "EHR side (webhook)",
                [
                    Panel(
                        "Rejected notifications / min by reason",
                        [
                            (
                                "sum by (reason) (rate(inbound_notifications_rejected_total[5m])) * 60",
                                "{{reason}}",
                            )
                        ],
                        width=24,
                    ),
                ],
            ),
        ],
    ),
]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(panel.targets)
        ],
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {},
    }


def dashboard_json(spec: Dashboard) -> dict[str, Any]:
    """A Grafana dashboard (JSON model, schema 39) for one spec."""
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row in spec.rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel_json(panel, next_id, x, y))
            next_id += 1
            x += panel.width
        y += 8
    variables: list[dict[str, Any]] = [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        }
    ]
    if spec.per_service:
        variables.append(
            {
                "name": "service",
                "label": "Service",
                "type": "query",
                "datasource": DATASOURCE,
                "query": {"query": "label_values(outbox_backlog, service)", "refId": "service"},
                "definition": "label_values(outbox_backlog, service)",
                "refresh": 2,
                "includeAll": True,
                "multi": True,
                "current": {},
                "hide": 0,
            }
        )
    return {
        "uid": spec.uid,
        "title": spec.title,
        "description": spec.description,
        "tags": ["portal"],
        "timezone": "utc",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def expected_files() -> dict[Path, str]:
    """Every generated file and its content."""
    files = {PROMETHEUS_RULE: prometheus_rule()}
    for spec in DASHBOARD_SPECS:
        files[DASHBOARDS / f"{spec.uid}.json"] = (
            json.dumps(dashboard_json(spec), indent=2, ensure_ascii=False) + "\n"
        )
    return files


def main(argv: list[str]) -> int:
    """Write the files, or with `--check` report stale ones (exit 1)."""
    check = "--check" in argv
    stale = []
    for path, content in expected_files().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == content:
            continue
        if check:
            stale.append(path.relative_to(ROOT))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
            sys.stdout.write(f"wrote {path.relative_to(ROOT)}\n")
    if stale:
        sys.stderr.write(
            "stale generated files (run python deploy/observability/tools/generate.py): "
            + ", ".join(map(str, stale))
            + "\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
