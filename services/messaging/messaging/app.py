"""Composition root of the messaging service: routing rules, keyring, emergency check."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import yaml
from fastapi import FastAPI

from messaging import api, domain, handlers, service, store
from messaging.emergency import EmergencyCheck
from messaging.settings import Settings
from servicekit.app import Service, ServiceDefinition, create_service
from servicekit.crypto import Cipher, Keyring

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def load_rules(path: Path) -> domain.RoutingRules:
    """The routing rules of a data file; `RoutingError` names what is wrong."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise domain.RoutingError(f"cannot read routing rules {path}: {exc}") from exc
    return domain.parse_rules(data)


def build(
    settings: Settings | None = None, *, triage_transport: httpx.AsyncBaseTransport | None = None
) -> Service:
    """The messaging service with the given (default: environment) settings; tests may
    reach triage through another transport (an in-process app)."""
    settings = settings or Settings()
    # Both fail at build time, before anything starts: bad rules or keys never half-run.
    rules = load_rules(settings.routing_file)
    cipher = Cipher(Keyring.from_settings(settings, settings.environment))

    @contextlib.asynccontextmanager
    async def use_cases(running: Service) -> AsyncIterator[service.Messaging]:
        # The use cases of the running service, for its routes and handlers (`deps`).
        client = httpx.AsyncClient(
            base_url=settings.triage_url,
            timeout=settings.emergency_check_timeout_s,
            transport=triage_transport,
            auth=running.service_tokens.auth("triage"),
        )
        try:
            yield service.Messaging(
                settings, running.db, running.outbox, rules, cipher, EmergencyCheck(client)
            )
        finally:
            await client.aclose()

    return create_service(
        ServiceDefinition(
            settings=settings,
            title="messaging",
            description="Secure message threads and care-team routing.",
            api=api.router,
            public_api=api.ops_router,
            handlers=handlers.router,
            publishes=("message.sent",),
            metadata=store.metadata,
            migrations=MIGRATIONS,
            deps=use_cases,
            cipher=cipher,
        )
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app (`uvicorn --factory messaging.app:create_app`)."""
    return build(settings).app
