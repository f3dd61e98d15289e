"""Composition root of the messaging service."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from messaging import api, handlers, store
from messaging.settings import Settings
from servicekit.app import Service, ServiceDefinition, create_service

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def build(settings: Settings | None = None) -> Service:
    """The messaging service with the given (default: environment) settings."""
    return create_service(
        ServiceDefinition(
            settings=settings or Settings(),
            title="messaging",
            description="Secure message threads and care-team routing.",
            api=api.router,
            handlers=handlers.router,
            publishes=("message.sent",),
            metadata=store.metadata,
            migrations=MIGRATIONS,
        )
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app (`uvicorn --factory messaging.app:create_app`)."""
    return build(settings).app
