"""Composition root of the scheduling service."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from scheduling import api, handlers, store
from scheduling.settings import Settings
from servicekit.app import Service, ServiceDefinition, create_service

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def build(settings: Settings | None = None) -> Service:
    """The scheduling service with the given (default: environment) settings."""
    return create_service(
        ServiceDefinition(
            settings=settings or Settings(),
            title="scheduling",
            description="Slots cached from the EHR, appointments and intake.",
            api=api.router,
            handlers=handlers.router,
            publishes=("appointment.booked", "appointment.cancelled", "intake.submitted"),
            metadata=store.metadata,
            migrations=MIGRATIONS,
        )
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app (`uvicorn --factory scheduling.app:create_app`)."""
    return build(settings).app
