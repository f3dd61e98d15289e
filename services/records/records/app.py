"""Composition root of the records service."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from records import api, explanations, handlers, store
from records.read_cache import ChartReads
from records.settings import Settings
from servicekit.app import Service, ServiceDefinition, create_service
from servicekit.crypto import Cipher, Keyring
from servicekit.ops_api import kit_encryption_routes

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def build(settings: Settings | None = None) -> Service:
    """The records service with the given (default: environment) settings."""
    settings = settings or Settings()
    # The kit's tables hold what the chart says (lab values, medications) in the payloads
    # of dead-lettered and parked events and of what records publishes: sealed at rest
    # (servicekit.sealing). Bad keys, or none in prod, fail here.
    cipher = Cipher(Keyring.from_settings(settings, settings.environment))
    service = create_service(
        ServiceDefinition(
            settings=settings,
            title="records",
            description="Read model of the patient's chart: labs, medications, allergies, ...",
            api=api.router,
            handlers=handlers.router,
            metadata=store.metadata,
            migrations=MIGRATIONS,
            cipher=cipher,
        )
    )
    # `GET /ops/encryption`, `POST /ops/encryption/reencrypt` (ops token): after a rotation.
    service.app.include_router(kit_encryption_routes())
    # Read once at start-up: a broken catalogue stops the service rather than a request.
    service.state["explanations"] = explanations.load()
    service.state["chart_reads"] = ChartReads(int(settings.chart_read_cache_mb * 2**20))
    return service


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app (`uvicorn --factory records.app:create_app`)."""
    return build(settings).app
