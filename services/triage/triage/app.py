"""Composition root of the triage service."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from servicekit.app import Service, ServiceDefinition, create_service
from triage import api, handlers, store
from triage.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def build(settings: Settings | None = None) -> Service:
    """The triage service with the given (default: environment) settings."""
    return create_service(
        ServiceDefinition(
            settings=settings or Settings(),
            title="triage",
            description="Symptom assessment before a visit; publishes triage.completed.",
            api=api.router,
            handlers=handlers.router,
            publishes=("triage.completed",),
            metadata=store.metadata,
            migrations=MIGRATIONS,
        )
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app (`uvicorn --factory triage.app:create_app`)."""
    return build(settings).app
