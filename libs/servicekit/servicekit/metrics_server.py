"""The metrics port (METRICS_PORT): Prometheus' `/metrics`, and nothing else, on a port of its
own.

In Kubernetes the monitoring namespace may reach this port and no other, so a scraper can
never call a service's API, its `/ops` routes or its docs (NetworkPolicy, deploy/k8s). When
the port is set, the API port stops serving `/metrics`. Off by default: on the local stack
every service answers `/metrics` on its API port (the fixed ports of docs/design.md).

A second uvicorn server in the service's own event loop: it shares the process's registry
and database pool, and leaves signal handling to the main server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from servicekit import flow_metrics
from servicekit.db import Database
from servicekit.logging import get_logger

log = get_logger(__name__)


def metrics_app(service_name: str, db: Database) -> FastAPI:
    """An app serving `GET /metrics` only (no docs, no OpenAPI document)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics."""
        await flow_metrics.refresh_outbox_age(service_name, db)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


class _Server(uvicorn.Server):
    # The main server handles SIGTERM/SIGINT and stops this one through the lifespan;
    # uvicorn's own capture would take the signals from it.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class MetricsServer:
    """Serves `metrics_app` on host:port until stopped."""

    def __init__(self, service_name: str, db: Database, host: str, port: int) -> None:
        config = uvicorn.Config(
            metrics_app(service_name, db),
            host=host,
            port=port,
            lifespan="off",
            access_log=False,
            log_config=None,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        self.port = port

    async def start(self) -> None:
        """Listen; raises when the port cannot be bound (start-up fails, as it should)."""
        self._task = asyncio.create_task(self._server.serve(), name="metrics-server")
        while not self._server.started:
            if self._task.done():
                # uvicorn exits (SystemExit) when it cannot bind: say which port.
                with contextlib.suppress(BaseException):
                    self._task.result()
                raise RuntimeError(f"METRICS_PORT {self.port} cannot be served (in use?)")
            await asyncio.sleep(0.02)
        log.info("service.metrics_port", port=self.port)

    async def stop(self) -> None:
        """Stop listening and wait for the server to finish."""
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self._task, timeout=10)
        self._task = None
