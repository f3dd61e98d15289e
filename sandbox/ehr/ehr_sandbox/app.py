"""Composition root of the EHR sandbox: settings, logging, store, change feed, routers.

Run it with `uvicorn --factory ehr_sandbox.app:create_app --port 8090`; tests call
`create_app(SandboxSettings(...))` with their own database and settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ehr_sandbox.auth import router as auth_router
from ehr_sandbox.dev.api import router as dev_router
from ehr_sandbox.dev.faults import FaultConfig, FaultInjectionMiddleware, FaultState
from ehr_sandbox.fhir.api import router as fhir_router
from ehr_sandbox.fhir.changes import ChangeFeed, ResourceChange
from ehr_sandbox.fhir.outcomes import install_error_handlers
from ehr_sandbox.metrics import MetricsMiddleware, SandboxMetrics
from ehr_sandbox.seed import seed_clinic
from ehr_sandbox.settings import SandboxSettings
from ehr_sandbox.store import Store
from ehr_sandbox.subscriptions import setup as setup_subscriptions
from servicekit.logging import configure_logging, get_logger

SERVICE_NAME = "ehr-sandbox"

log = get_logger(__name__)


def create_app(settings: SandboxSettings | None = None) -> FastAPI:
    """Build the sandbox app (the `--factory` entry point for uvicorn)."""
    settings = settings or SandboxSettings()
    configure_logging(SERVICE_NAME, settings.log_level, settings.log_format)
    feed = ChangeFeed()
    store = Store(settings.resolved_database_url(), change_feed=feed, fhir_base=settings.fhir_base)
    metrics = SandboxMetrics()

    async def count_write(change: ResourceChange) -> None:
        metrics.writes.labels(change.resource_type, change.interaction).inc()

    feed.subscribe(count_write)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await store.start()
        if settings.seed:
            await seed_clinic(
                store, timezone=settings.clinic_timezone, examples=settings.examples_dir
            )
        await store.analyze()
        log.info("ehr_sandbox_started", base_url=settings.base_url, dev_mode=settings.dev_mode)
        try:
            yield
        finally:
            await feed.close()
            await store.close()

    app = FastAPI(
        # No native FastAPI telemetry: it would record patient ids and search values
        # from URLs into spans of whatever tracer provider the process has.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        title="EHR sandbox",
        summary="A FHIR R4 stand-in for a vendor EHR",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.change_feed = feed
    app.state.metrics = metrics
    app.state.faults = FaultConfig()
    app.state.fault_state = FaultState()

    install_error_handlers(app)
    # Added first, so it runs inside the metrics middleware: injected faults are counted.
    app.add_middleware(FaultInjectionMiddleware)
    app.add_middleware(MetricsMiddleware)

    # Auth first: its `/fhir/.well-known/smart-configuration` would otherwise be taken
    # for a read of a resource type called ".well-known".
    app.include_router(auth_router)
    app.include_router(fhir_router)
    app.include_router(dev_router)
    # After the FHIR router: it puts its Subscription routes ahead of the generic ones, and
    # its lifespan runs inside ours (after the store has started and the seed is loaded).
    setup_subscriptions(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        """Alive."""
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        """Ready when the database answers."""
        ready = await request.app.state.store.ping()
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "database": ready},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        """Prometheus metrics of this app."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
