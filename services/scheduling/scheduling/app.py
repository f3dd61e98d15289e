"""Composition root of the scheduling service."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path

import httpx
from fastapi import FastAPI

from scheduling import api, handlers, service, store
from scheduling.questionnaires import QuestionnaireSource
from scheduling.settings import Settings
from servicekit.app import Service, ServiceDefinition, create_service
from servicekit.crypto import Cipher, Keyring
from servicekit.logging import get_logger
from servicekit.ops_api import kit_encryption_routes

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
log = get_logger(__name__)


async def _housekeeping(running: Service) -> None:
    """Remind about missing intake before visits (the kit's relay forgets old idempotency
    answers)."""
    settings: Settings = running.settings  # type: ignore[assignment]
    ctx = service.Context.of(running)
    while True:
        try:
            async with running.db.transaction() as session:
                reminded = await service.remind_missing_intake(ctx, session, datetime.now(UTC))
            if reminded:
                log.info("scheduling.intake_reminders", count=reminded)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next round tries again
            log.warning("scheduling.housekeeping_failed", error=type(exc).__name__)
        await asyncio.sleep(settings.intake_reminder_interval_s)


async def _start(running: Service) -> None:
    settings: Settings = running.settings  # type: ignore[assignment]
    http = httpx.AsyncClient(
        timeout=settings.ehr_connector_timeout_s,
        mounts=running.state.get("connector_mounts"),
        auth=running.service_tokens.auth("ehr-connector"),
    )
    running.state["http"] = http
    running.state["questionnaires"] = QuestionnaireSource(
        running.db, http, settings.ehr_connector_url
    )
    running.state["housekeeping"] = asyncio.create_task(
        _housekeeping(running), name="scheduling-housekeeping"
    )


async def _stop(running: Service) -> None:
    task: asyncio.Task[None] | None = running.state.get("housekeeping")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    http: httpx.AsyncClient | None = running.state.get("http")
    if http is not None:
        await http.aclose()


def build(
    settings: Settings | None = None, mounts: dict[str, httpx.AsyncBaseTransport] | None = None
) -> Service:
    """The scheduling service with the given (default: environment) settings; `mounts`
    (httpx URL patterns to transports) let tests reach an in-process connector."""
    settings = settings or Settings()
    # Appointments, intake answers and reminders travel through the kit's tables (outbox,
    # stored answers, dead letters, parked events): sealed at rest (servicekit.sealing).
    # Bad keys, or none in prod, fail here.
    cipher = Cipher(Keyring.from_settings(settings, settings.environment))
    running = create_service(
        ServiceDefinition(
            settings=settings,
            title="scheduling",
            description="Slots cached from the EHR, appointments and intake.",
            api=api.router,
            handlers=handlers.router,
            publishes=(
                "appointment.booked",
                "appointment.cancelled",
                "appointment.rescheduled",
                "intake.submitted",
                "intake.reminded",
            ),
            metadata=store.metadata,
            migrations=MIGRATIONS,
            on_startup=[_start],
            on_shutdown=[_stop],
            cipher=cipher,
        )
    )
    # `GET /ops/encryption`, `POST /ops/encryption/reencrypt` (ops token): after a rotation.
    running.app.include_router(kit_encryption_routes())
    if mounts is not None:
        running.state["connector_mounts"] = mounts
    return running


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app (`uvicorn --factory scheduling.app:create_app`)."""
    return build(settings).app
