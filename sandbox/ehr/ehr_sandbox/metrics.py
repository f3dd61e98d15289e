"""Prometheus metrics of the sandbox, on a registry of its own per app instance."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class SandboxMetrics:
    """The sandbox's counters and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ehr_sandbox_http_requests_total",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ehr_sandbox_http_request_seconds",
            "HTTP request duration by method and route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.writes = Counter(
            "ehr_sandbox_writes_total",
            "Committed resource writes by type and interaction",
            ["resource_type", "interaction"],
            registry=self.registry,
        )
        self.faults_injected = Counter(
            "ehr_sandbox_faults_injected_total",
            "Requests answered by fault injection, by status",
            ["status"],
            registry=self.registry,
        )


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (never by raw path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Record the request's status and duration."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics: SandboxMetrics = scope["app"].state.metrics
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            metrics.requests.labels(method, template, str(status)).inc()
            metrics.latency.labels(method, template).observe(time.perf_counter() - started)
