"""Composition root of the records service."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from records import api, explanations, handlers, store
from records.settings import Settings
from servicekit.app import Service, ServiceDefinition, create_service

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def build(settings: Settings | None = None) -> Service:
    """The records service with the given (default: environment) settings."""
    service = create_service(
        ServiceDefinition(
            settings=settings or Settings(),
            title="records",
            description="Read model of the patient's chart: labs, medications, allergies, ...",
            api=api.router,
            handlers=handlers.router,
            metadata=store.metadata,
            migrations=MIGRATIONS,
        )
    )
    # Read once at start-up: a broken catalogue stops the service rather than a request.
    service.state["explanations"] = explanations.load()
    return service


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app (`uvicorn --factory records.app:create_app`)."""
    return build(settings).app
