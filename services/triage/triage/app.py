"""Composition root of the triage service: the rule set and NLP pipeline (built once per
process and shared), the optional model reviewer, the use cases, the HTTP app."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import httpx
from fastapi import FastAPI

from servicekit.app import Service, ServiceDefinition, create_service
from servicekit.crypto import Cipher, Keyring
from triage import api, handlers, ruleset, store
from triage.engine import Engine
from triage.llm import ModelReviewer
from triage.service import TriageService
from triage.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


@cache
def engine_for(rules_dir: str = "") -> Engine:
    """The rule engine for a rules folder ("" = packaged), built once per process (the
    NLP pipeline takes about a second; tests build many apps)."""
    rules = ruleset.load(Path(rules_dir)) if rules_dir else ruleset.default_rules()
    return Engine(rules)


async def _open(service: Service) -> None:
    settings: Settings = service.settings  # type: ignore[assignment]
    reviewer = None
    if settings.triage_llm_url:
        http = httpx.AsyncClient()
        service.state["llm_http"] = http
        engine: Engine = service.state["engine"]
        reviewer = ModelReviewer(
            http,
            url=settings.triage_llm_url,
            model=settings.triage_llm_model,
            api_key=settings.triage_llm_api_key,
            timeout_s=settings.triage_llm_timeout_s,
            concept_ids=engine.rules.concepts,
        )
    cipher = service.outbox.cipher
    assert cipher is not None  # built with the service (below)
    service.state["triage"] = TriageService(
        service.db, service.outbox, service.state["engine"], reviewer, cipher
    )


async def _close(service: Service) -> None:
    http: httpx.AsyncClient | None = service.state.pop("llm_http", None)
    if http is not None:
        await http.aclose()


def build(settings: Settings | None = None) -> Service:
    """The triage service with the given (default: environment) settings."""
    settings = settings or Settings()
    # At build time, not at start-up: bad keys fail the build (and `make up`).
    cipher = Cipher(Keyring.from_settings(settings, settings.environment))
    service = create_service(
        ServiceDefinition(
            settings=settings,
            title="triage",
            description="Symptom assessment before a visit; publishes triage.completed.",
            api=api.router,
            public_api=api.ops_router,
            handlers=handlers.router,
            publishes=("triage.completed",),
            metadata=store.metadata,
            migrations=MIGRATIONS,
            on_startup=[_open],
            on_shutdown=[_close],
            cipher=cipher,
        )
    )
    # Built here, not at start-up, so a broken rule file fails the build (and `make up`).
    service.state["engine"] = engine_for(settings.triage_rules_dir)
    return service


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app (`uvicorn --factory triage.app:create_app`)."""
    return build(settings).app
