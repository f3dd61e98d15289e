"""Composition root of the ehr-connector: the FHIR client, the handlers, the HTTP app.

The EHR client is built at start-up (it owns a connection pool) into the service's
`deps` (`ehr_connector.context.Connector`), which the kit hands to the handlers and routes;
`/readyz` asks it whether the EHR answers and its circuit is closed. Tests build the same
service with other settings, and may wrap the real client (`wrap_ehr`) to interfere
between calls the way a clinician editing the chart at the same moment would.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fastapi import FastAPI

from ehr_connector import api, context, handlers, store
from ehr_connector.ehr.fhir_client import FhirClient
from ehr_connector.ehr.port import EhrPort
from ehr_connector.inbound import api as inbound_api
from ehr_connector.inbound.service import lifecycle as inbound
from ehr_connector.inbound.service.runtime import Inbound
from ehr_connector.outbound.service import recipients as pool_recipients
from ehr_connector.settings import Settings
from servicekit.app import Service, ServiceDefinition, create_service
from servicekit.crypto import Cipher, Keyring

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Everything the connector publishes through its outbox (declared for the AsyncAPI doc).
PUBLISHES = (
    "appointment.updated",
    "slot.updated",
    "lab.resulted",
    "medication.changed",
    "message.received",
    "message.synced",
    "record.imported",
)


def build(
    settings: Settings | None = None,
    *,
    wrap_ehr: Callable[[FhirClient], EhrPort] | None = None,
) -> Service:
    """The ehr-connector with the given (default: environment) settings."""
    settings = settings or Settings()
    # A malformed recipients file fails here, before anything starts.
    recipients = pool_recipients.load(settings.ehr_recipients_file, settings.ehr_care_teams_by_pool)
    # Its outbox carries what the EHR says about patients (messages from clinicians, lab
    # values): sealed at rest (servicekit.sealing). Bad keys fail here too.
    cipher = Cipher(Keyring.from_settings(settings, settings.environment))

    @contextlib.asynccontextmanager
    async def running_connector(service: Service) -> AsyncIterator[context.Connector]:
        # The service's `deps`: what its handlers and routes use, built per running service.
        client = FhirClient(settings)
        try:
            ehr: EhrPort = wrap_ehr(client) if wrap_ehr is not None else client
            # An unknown recipient fails start-up with a message naming it.
            if settings.ehr_verify_recipients:
                await pool_recipients.verify(ehr, recipients)
            yield context.Connector(
                settings=settings,
                ehr=ehr,
                recipients=recipients,
                probe=client.probe,
                inbound=Inbound(settings, service.db, service.outbox, ehr, written=client.written),
            )
        finally:
            await client.aclose()

    async def ehr_ready(service: Service) -> str | None:
        if not isinstance(service.deps, context.Connector):
            return "unavailable: EHR client not started"
        return await service.deps.probe()

    return create_service(
        ServiceDefinition(
            settings=settings,
            title="ehr-connector",
            description="The only service that speaks FHIR to the EHR.",
            # Services call /ehr/...: a service token. The EHR's webhook and /ops carry
            # their own authentication.
            api=api.router,
            public_api=inbound_api.router,
            handlers=handlers.router,
            publishes=PUBLISHES,
            metadata=store.metadata,
            migrations=MIGRATIONS,
            readiness_checks={"ehr": ehr_ready, "inbound": inbound.readiness},
            deps=running_connector,
            on_startup=[inbound.start],
            on_shutdown=[inbound.stop],
            cipher=cipher,
        )
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app (`uvicorn --factory ehr_connector.app:create_app`)."""
    return build(settings).app
