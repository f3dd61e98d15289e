"""Composition root of the gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from fastapi import FastAPI

from gateway import (
    audit,
    docs,
    handlers,
    ops,
    portal,
    store,
)
from gateway.api import appointments, caregivers, me, messages, records, triage
from gateway.auth import TokenVerifier
from gateway.hub import NotificationHub
from gateway.no_store import NoStoreMiddleware
from gateway.ratelimit import RateLimitMiddleware, RateLimits
from gateway.settings import Settings
from gateway.upstream import Upstreams, pooled_client
from servicekit.app import Service, ServiceDefinition, create_service
from servicekit.crypto import Cipher, Keyring
from servicekit.ops_api import kit_encryption_routes

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


async def _open_clients(service: Service) -> None:
    settings: Settings = service.settings  # type: ignore[assignment]
    mounts = service.state.get("upstream_mounts")
    http = pooled_client(settings, mounts)
    service.state["http"] = http
    service.state["verifier"] = TokenVerifier(settings, http)
    service.state["upstreams"] = Upstreams(settings, http, service.service_tokens)
    # Group commit of the access log: every audited request waits for its record's commit.
    writer = audit.AuditWriter(
        service.db,
        audit.key_of(service),
        max_queue=settings.audit_queue_max,
        max_batch=settings.audit_batch_max,
        timeout_s=settings.audit_commit_timeout_s,
    )
    writer.start()
    service.state["audit_writer"] = writer
    # Anchors and verifies the access log now and every AUDIT_VERIFY_INTERVAL_S.
    service.state["audit_task"] = asyncio.create_task(
        audit.scheduled_verification(service), name="audit-verification"
    )


async def _close_clients(service: Service) -> None:
    task: asyncio.Task[None] | None = service.state.get("audit_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    writer: audit.AuditWriter | None = service.state.pop("audit_writer", None)
    if writer is not None:
        await writer.stop()
    http: httpx.AsyncClient | None = service.state.get("http")
    if http is not None:
        await http.aclose()


@contextlib.asynccontextmanager
async def _notification_hub(_service: Service) -> AsyncIterator[NotificationHub]:
    # The service's `deps`: its handlers wake the streams its routes hold, per service.
    yield NotificationHub()


def build(
    settings: Settings | None = None, mounts: dict[str, httpx.AsyncBaseTransport] | None = None
) -> Service:
    """The gateway; `mounts` (httpx URL patterns to transports) let tests route calls to
    in-process services."""
    from fastapi import APIRouter

    routes = APIRouter()
    routes.include_router(portal.router)
    for part in (me, records, appointments, messages, triage, caregivers):
        routes.include_router(part.router)
    routes.include_router(ops.router)
    # `GET /ops/encryption`, `POST /ops/encryption/reencrypt` (ops token): after a rotation.
    routes.include_router(kit_encryption_routes())
    settings = settings or Settings()
    # Events it consumes (lab values, messages, appointments for the patients' streams) sit
    # whole in the kit's dead-letter and parked tables, and its outbox links patients to
    # their EHR ids: sealed at rest (servicekit.sealing). Bad keys, or none in prod, fail here.
    cipher = Cipher(Keyring.from_settings(settings, settings.environment))
    service = create_service(
        ServiceDefinition(
            settings=settings,
            title="gateway",
            description="Patient API (BFF), real-time events (SSE) and the portal page.",
            # The public door: patients' tokens (and the ops token for /ops), not service
            # tokens.
            public_api=routes,
            handlers=handlers.router,
            publishes=("patient.linked", "consent.granted", "consent.revoked"),
            metadata=store.metadata,
            migrations=MIGRATIONS,
            deps=_notification_hub,
            on_startup=[_open_clients],
            on_shutdown=[_close_clients],
            cipher=cipher,
        )
    )
    if mounts is not None:
        service.state["upstream_mounts"] = mounts
    docs.replace_default_docs(service.app)
    portal.mount_static(service.app)
    gw: Settings = service.settings  # type: ignore[assignment]
    service.app.add_middleware(NoStoreMiddleware)
    # Outermost: a client over its limit costs no body read, token check or JWKS fetch.
    service.app.add_middleware(
        RateLimitMiddleware,
        limits=RateLimits(
            ip_rate=gw.rate_limit_ip_per_s,
            ip_burst=gw.rate_limit_ip_burst,
            token_rate=gw.rate_limit_token_per_s,
            token_burst=gw.rate_limit_token_burst,
            forwarded_hops=gw.forwarded_for_hops,
        ),
        service=gw.service_name,
    )
    return service


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app (`uvicorn --factory gateway.app:create_app`)."""
    return build(settings).app
