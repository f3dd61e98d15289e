"""The app factory: builds a service's engine, outbox relay, consumers, broker and HTTP app.

A service's `app.py` describes itself with a `ServiceDefinition` (its settings, routes,
handlers, published events, tables, dependencies) and calls `create_service`; tests build
the same service with other settings. `Service` holds the running parts and is on
`app.state.service` for routes.

Dependencies are injected, never module-level (cosmicpython's bootstrap is the model): the
definition's `deps` builds them from the running service at start-up (clients, use cases)
and closes them at stop; handlers get them as `uow.deps` / `reads.deps`, routes as
`service.deps`. Two services in one process (tests) therefore never share them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.telemetry import TelemetryConfig
from faststream.kafka import KafkaBroker
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import MetaData

from servicekit import (
    flow_metrics,
    identity,
    kafka_security,
    limits,
    ops_api,
    problems,
    telemetry,
)
from servicekit.consumer import ConsumerRuntime, EventRouter
from servicekit.crypto import Cipher
from servicekit.db import Database
from servicekit.db_tls import DatabaseTLS
from servicekit.logging import configure_logging, get_logger
from servicekit.messaging import build_broker, sample_lag
from servicekit.metrics_server import MetricsServer
from servicekit.migrations import upgrade
from servicekit.outbox import Outbox, OutboxRelay
from servicekit.settings import ServiceSettings
from servicekit.telemetry import setup_tracing

log = get_logger(__name__)
NO_NATIVE_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}
Hook = Callable[["Service"], Awaitable[None]]
Check = Callable[["Service"], Awaitable[str | None]]
# Builds a running service's dependencies on entry and closes them on exit.
DepsFactory = Callable[["Service"], contextlib.AbstractAsyncContextManager[Any]]


@dataclass
class ServiceDefinition:
    """What a service is made of; everything but `settings` and `title` is optional."""

    settings: ServiceSettings
    title: str
    description: str = ""
    # Routes other services call: every one requires a service token (servicekit.identity).
    api: APIRouter | None = None
    # Routes with their own authentication (the gateway's patient API, the connector's
    # webhook): the app factory adds no service-token check to them.
    public_api: APIRouter | None = None
    handlers: EventRouter = field(default_factory=EventRouter)
    publishes: tuple[str, ...] = ()
    metadata: MetaData | None = None
    migrations: Path | None = None
    readiness_checks: dict[str, Check] = field(default_factory=dict)
    on_startup: list[Hook] = field(default_factory=list)
    on_shutdown: list[Hook] = field(default_factory=list)
    # A service holding patients' free text seals its outbox payloads and stored answers
    # with its cipher too (servicekit.sealing).
    cipher: Cipher | None = None
    # The composition root's dependencies (module docstring): entered at start-up after the
    # migrations and before `on_startup`, exited at stop after `on_shutdown`.
    deps: DepsFactory | None = None


class Service:
    """The running parts of one service."""

    def __init__(self, definition: ServiceDefinition) -> None:
        self.definition = definition
        self.settings = definition.settings
        # Now, at the app factory, not only at start-up: uvicorn's own lines that follow
        # ("Started server process", "Application startup complete") come out JSON too.
        configure_logging(
            self.settings.service_name, self.settings.log_level, self.settings.log_format
        )
        self.db = Database(
            self.settings.resolved_database_url(),
            echo=self.settings.database_echo,
            tls=DatabaseTLS.of(self.settings),
        )
        self.outbox = Outbox(self.settings, definition.cipher)
        self.relay = OutboxRelay(self.db, self.settings, self.outbox)
        self.runtime = ConsumerRuntime(self.settings, self.db, self.outbox, definition.handlers)
        self.broker: KafkaBroker = build_broker(self.settings, self.runtime, definition.publishes)
        self.broker_connected = asyncio.Event()
        # Why the broker refuses this service (its login), while it does; None otherwise.
        self.broker_problem: str | None = None
        # Set once every subscriber has joined its group (readiness reports it).
        self.consumers_started = asyncio.Event()
        self.state: dict[str, Any] = {}
        # What `definition.deps` built: None before start-up and after stop.
        self.deps: Any = None
        self._deps_scope = contextlib.AsyncExitStack()
        self.service_token_verifier = identity.ServiceTokenVerifier.of(self.settings)
        # Mints this service's tokens for the services it calls.
        self.service_tokens = identity.ServiceTokens.of(self.settings)
        self._tasks: list[asyncio.Task[None]] = []
        # /metrics on a port of its own (METRICS_PORT), else on the API port.
        self.metrics_server = (
            MetricsServer(
                self.settings.service_name,
                self.db,
                self.settings.http_host,
                self.settings.metrics_port,
            )
            if self.settings.metrics_port
            else None
        )
        self.app = self._build_app()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Migrate, then start the relay and the consumers (the broker may come later)."""
        configure_logging(
            self.settings.service_name, self.settings.log_level, self.settings.log_format
        )
        setup_tracing(self.settings.service_name, self.settings.otlp_endpoint)
        self._instrument()
        if self.settings.auto_migrate:
            await self.prepare_database()
        if self.definition.deps is not None:
            self.deps = await self._deps_scope.enter_async_context(self.definition.deps(self))
            self.runtime.deps = self.deps
        for hook in self.definition.on_startup:
            await hook(self)
        if self.settings.relay_enabled:
            self._tasks.append(asyncio.create_task(self.relay.run(), name="outbox-relay"))
        self._tasks.append(asyncio.create_task(self._connect_broker(), name="broker-connect"))
        if self.settings.consumers_enabled and self.runtime.router.subscriptions:
            self._tasks.append(asyncio.create_task(self._lag_loop(), name="consumer-lag"))
        await self.runtime.refresh_gauges()
        if self.metrics_server is not None:
            await self.metrics_server.start()
        _freeze_start_up_objects()
        log.info("service.started", port=self.settings.http_port)

    async def prepare_database(self) -> None:
        """Run the kit's and the service's migrations (tables without migrations are created
        directly: only the kit's own test services have none)."""
        await upgrade(
            self.db.url, self.definition.migrations, self.definition.metadata, self.db.tls
        )
        metadata = self.definition.metadata
        if self.definition.migrations is None and metadata is not None:
            async with self.db.engine.begin() as conn:
                await conn.run_sync(metadata.create_all)

    async def _connect_broker(self) -> None:
        # The HTTP side comes up even while Kafka is away; /readyz says so until connected.
        attempt = 0
        while True:
            try:
                # Connected is what readiness reports; starting the subscribers can take a
                # consumer-group rebalance longer and must not hold readiness back.
                await self.broker.connect()
                self.broker_problem = None
                self.broker_connected.set()
                if self.settings.consumers_enabled:
                    await self._start_subscribers()
                log.info("service.broker_connected")
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure to reach Kafka is retried
                self.broker_connected.clear()
                attempt += 1
                # A refused login (wrong password, user or mechanism) is not an outage: say
                # so at start-up and in readiness, naming the settings to check.
                self.broker_problem = kafka_security.start_up_problem(
                    self.settings, exc
                ) or await kafka_security.refused_login(self.settings)
                if self.broker_problem:
                    log.error(
                        "service.kafka_login_refused", problem=self.broker_problem, attempt=attempt
                    )
                else:
                    log.warning(
                        "service.broker_unavailable", error=type(exc).__name__, attempt=attempt
                    )
                with contextlib.suppress(Exception):
                    await self.broker.stop()
                await asyncio.sleep(min(5.0, 0.5 * attempt))

    async def _start_subscribers(self) -> None:
        """Start every subscriber at once, then the publishers.

        FastStream's `broker.start()` starts subscribers one after another, and starting a
        group consumer waits for its group to be joined (about 5 s each on Tansu): a
        service with five consumers took 25 s to hear its last topic, and the connector
        could drop a notification for a patient whose `patient.linked` it had not read yet.
        Joined together, the wait is that of one group.
        """
        await asyncio.gather(*(subscriber.start() for subscriber in self.broker.subscribers))
        for publisher in self.broker.publishers:
            await publisher.start()
        self.broker.running = True
        self.consumers_started.set()

    async def _lag_loop(self) -> None:
        await self.broker_connected.wait()
        while True:
            try:
                await sample_lag(self.settings, self.runtime, self.broker)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away or rebalancing: try next round
                log.debug("service.lag_sample_failed", error=type(exc).__name__)
            await asyncio.sleep(self.settings.metrics_interval_s)

    async def stop(self) -> None:
        """Stop consumers first (their work commits), then the relay, then the database."""
        for hook in reversed(self.definition.on_shutdown):
            with contextlib.suppress(Exception):
                await hook(self)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        # Handlers from now on find no dependencies (DependencyUnavailable: the event waits
        # in Kafka) rather than closed ones.
        self.deps = self.runtime.deps = None
        with contextlib.suppress(Exception):
            await self._deps_scope.aclose()
        # The broker's start (in the background) is cancelled before the broker stops: a
        # start still running would otherwise go on after it and leave a consumer behind
        # (FastStream restarted its loop without a consumer for ever, in a tight loop).
        for task in self._tasks:
            if task.get_name() in ("broker-connect", "consumer-lag") and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(Exception):
            await self.broker.stop()
        self.relay.stop()
        for task in self._tasks:
            if task.get_name() == "outbox-relay":
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(task, timeout=10)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.db.dispose()
        log.info("service.stopped")

    def _instrument(self) -> None:
        # Server spans are wired when the app is built (`telemetry.instrument_app`); client
        # spans patch httpx once per process (always: they carry `traceparent` on); database
        # spans are per engine, from when spans are exported (a statement's span adds
        # nothing to the trace's ids).
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        telemetry.instrument_http_clients()
        engine = self.db.sync_engine
        telemetry.when_exporting(lambda: SQLAlchemyInstrumentor().instrument(engine=engine))

    # -- readiness ------------------------------------------------------------------------

    async def readiness(self) -> dict[str, str]:
        """Each dependency's state: `ok` or what is wrong."""
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.db.ping(), timeout=2)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        if not self.broker_connected.is_set():
            checks["broker"] = self.broker_problem or "connecting"
        else:
            try:
                alive = await self.broker.ping(timeout=2)
                checks["broker"] = "ok" if alive else "unavailable"
            except Exception as exc:
                checks["broker"] = f"unavailable: {type(exc).__name__}"
        if self.settings.consumers_enabled and self.broker.subscribers:
            # Not ready to act on events until every consumer has its partitions: a service
            # that says ready must not let an event of its first seconds go unheard.
            checks["consumers"] = "ok" if self.consumers_started.is_set() else "joining"
        for name, check in self.definition.readiness_checks.items():
            try:
                problem = await asyncio.wait_for(check(self), timeout=3)
                checks[name] = problem or "ok"
            except Exception as exc:
                checks[name] = f"unavailable: {type(exc).__name__}"
        return checks

    # -- HTTP -----------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        app = FastAPI(
            # FastAPI's own telemetry records raw URL paths, query strings and exception
            # messages (PHI); the OpenTelemetry instrumentation with our redacting hooks
            # (`telemetry.instrument_app`) traces requests instead.
            telemetry=NO_NATIVE_TELEMETRY,
            title=self.definition.title,
            description=self.definition.description,
            version="0.1.0",
            lifespan=lifespan,
        )
        app.state.service = self
        telemetry.instrument_app(app)
        problems.install(app)
        # Bodies are bounded as they stream in, before any route, auth or parser sees them.
        app.add_middleware(
            limits.BodyLimitMiddleware,
            max_body_bytes=self.settings.max_body_bytes,
            max_json_depth=self.settings.max_json_depth,
            service=self.settings.service_name,
        )
        app.include_router(_health_router(serve_metrics=self.metrics_server is None))
        app.include_router(ops_api.router)
        if self.definition.api is not None:
            app.include_router(
                self.definition.api, dependencies=[Depends(identity.require_service_token)]
            )
        if self.definition.public_api is not None:
            app.include_router(self.definition.public_api)
        return app


_frozen = False


def _freeze_start_up_objects() -> None:
    """Move what start-up made (modules, app, engine, metadata: alive as long as the
    process) out of the garbage collector's way, so its full collections stop walking it
    again and again: a consumer's batch allocates enough to trigger them often, and they
    were ~30% of its time per event. Once per process (a test process starts many services;
    frozen objects are never freed)."""
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()


def _health_router(*, serve_metrics: bool) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive: the process answers."""
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request) -> Response:
        """Ready: the database, the broker and the service's own dependencies answer."""
        service: Service = request.app.state.service
        checks = await service.readiness()
        if all(v == "ok" or v.startswith("warning") for v in checks.values()):
            return Response(
                content=_json({"status": "ready", "checks": checks}), media_type="application/json"
            )
        return problems.problem(503, "Not ready", "A dependency is unavailable.", checks=checks)

    if not serve_metrics:
        return router  # served on METRICS_PORT instead (servicekit.metrics_server)

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus metrics."""
        service: Service = request.app.state.service
        await flow_metrics.refresh_outbox_age(service.settings.service_name, service.db)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def _json(body: object) -> str:
    import json

    return json.dumps(body)


def create_service(definition: ServiceDefinition) -> Service:
    """Build a service from its definition (nothing starts until the app's lifespan)."""
    return Service(definition)
