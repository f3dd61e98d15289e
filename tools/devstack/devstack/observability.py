"""The optional observability processes of the local stack: the trace sink and Prometheus.

`make up TRACING=1` adds the trace sink (`devstack.tracesink`, OTLP/HTTP on 4318, spans in
the stack's PostgreSQL) and points every service at it; `OBSERVABILITY=1` adds Prometheus
(Debian's `prometheus` on 9090) scraping every service with the portal's alert rules loaded.
Grafana is not available from the registries this project reaches; the dashboards in
deploy/observability/grafana/ import into any Grafana 10+ pointed at that Prometheus.

The supervisor asks this module for the processes and the services' extra environment:

    extra = observability.processes(config.python, config.host, root, database_base_url,
                                    tracing=..., metrics=...)
    env   = observability.service_env(config.host, tracing=...)
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from devstack._paths import repo_root
from devstack.supervisor import SERVICES, ProcessSpec

TRACE_SINK_PORT = 4318
PROMETHEUS_PORT = 9090
TRACES_DATABASE = "portal_traces"


def traces_database_url(database_base_url: str) -> str:
    """The trace sink's database on the stack's PostgreSQL server (`portal_traces`)."""
    parts = urlsplit(database_base_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{TRACES_DATABASE}", parts.query, ""))


def service_env(host: str, *, tracing: bool) -> dict[str, str]:
    """What every service gets: its spans go to the trace sink (batched, every second)."""
    if not tracing:
        return {}
    return {
        "OTLP_ENDPOINT": f"http://{host}:{TRACE_SINK_PORT}",
        "OTEL_BSP_SCHEDULE_DELAY": "1000",
    }


def trace_sink(
    python: str, host: str, root: Path, traces_url: str, port: int = TRACE_SINK_PORT
) -> ProcessSpec:
    """The OTLP/HTTP receiver keeping spans in `traces_url` (`make traces` prints them;
    it finds the database through `.data/trace-sink.url` under `root`)."""
    return ProcessSpec(
        name="trace-sink",
        argv=[
            python,
            "-m",
            "uvicorn",
            "--factory",
            "devstack.tracesink:create_app",
            "--host",
            host,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        port=port,
        env={"TRACES_DATABASE_URL": traces_url},
        host=host,
        ready_path="/readyz",
        cwd=root,
    )


def prometheus_config(host: str, ports: Mapping[str, int], rules: Path) -> str:
    """A prometheus.yml scraping the services every 5 s, with the portal's alert rules."""
    lines = [
        "global:",
        "  scrape_interval: 5s",
        "  evaluation_interval: 15s",
        "rule_files:",
        f"  - {rules}",
        "scrape_configs:",
    ]
    for name, port in ports.items():
        lines += [
            f"  - job_name: {name}",
            "    static_configs:",
            f"      - targets: ['{host}:{port}']",
            "        labels:",
            f"          app: {name}",
        ]
    return "\n".join(lines) + "\n"


def prometheus(
    host: str,
    root: Path,
    *,
    port: int = PROMETHEUS_PORT,
    targets: Mapping[str, int] | None = None,
) -> ProcessSpec | None:
    """Prometheus over the services (`targets`: name -> port, default the six services),
    if the binary is installed (apt-get install prometheus); None otherwise."""
    binary = shutil.which("prometheus")
    if binary is None:
        return None
    data = root / ".data" / "prometheus"
    data.mkdir(parents=True, exist_ok=True)
    config = data / "prometheus.yml"
    rules = repo_root() / "deploy" / "observability" / "prometheus" / "alerts.yaml"
    ports = targets if targets is not None else {s.name: s.port for s in SERVICES}
    config.write_text(prometheus_config(host, ports, rules), encoding="utf-8")
    return ProcessSpec(
        name="prometheus",
        argv=[
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={data / 'tsdb'}",
            "--storage.tsdb.retention.time=2d",
            f"--web.listen-address={host}:{port}",
        ],
        port=port,
        host=host,
        ready_path="/-/ready",
        cwd=root,
    )


def processes(
    python: str,
    host: str,
    root: Path,
    database_base_url: str,
    *,
    tracing: bool,
    metrics: bool,
) -> Sequence[ProcessSpec]:
    """The processes to start before the services (the sink must be up to receive)."""
    specs: list[ProcessSpec] = []
    if tracing:
        specs.append(trace_sink(python, host, root, traces_database_url(database_base_url)))
    if metrics:
        spec = prometheus(host, root)
        if spec is not None:
            specs.append(spec)
    return specs
