"""Composition root of the ehr-connector: the FHIR client, the handlers, the HTTP app.

The EHR client is built at start-up (it owns a connection pool) and attached to the
service for the handlers (`ehr_connector.context`); `/readyz` asks it whether the EHR
answers and its circuit is closed. Tests build the same service with other settings, and
may wrap the real client (`wrap_ehr`) to interfere between calls the way a clinician
editing the chart at the same moment would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI

from ehr_connector import context, handlers, questionnaires, store
from ehr_connector.ehr.fhir_client import FhirClient
from ehr_connector.ehr.port import EhrPort
from ehr_connector.inbound import api as inbound_api
from ehr_connector.inbound import lifecycle as inbound
from ehr_connector.outbound import recipients as pool_recipients
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
FHIR_CLIENT = "fhir_client"


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

    async def start_ehr(service: Service) -> None:
        client = FhirClient(settings)
        service.state[FHIR_CLIENT] = client
        ehr: EhrPort = wrap_ehr(client) if wrap_ehr is not None else client
        try:
            # An unknown recipient fails start-up with a message naming it.
            if settings.ehr_verify_recipients:
                await pool_recipients.verify(ehr, recipients)
        except pool_recipients.RecipientsError:
            await client.aclose()
            raise
        context.attach(
            service.outbox, context.Connector(settings=settings, ehr=ehr, recipients=recipients)
        )
        service.state[inbound.EHR_STATE_KEY] = ehr

    async def stop_ehr(service: Service) -> None:
        context.detach(service.outbox)
        client: FhirClient | None = service.state.pop(FHIR_CLIENT, None)
        if client is not None:
            await client.aclose()

    async def ehr_ready(service: Service) -> str | None:
        client: FhirClient | None = service.state.get(FHIR_CLIENT)
        if client is None:
            return "unavailable: EHR client not started"
        return await client.probe()

    return create_service(
        ServiceDefinition(
            settings=settings,
            title="ehr-connector",
            description="The only service that speaks FHIR to the EHR.",
            # Services call /ehr/...: a service token. The EHR's webhook and /ops carry
            # their own authentication.
            api=questionnaires.router,
            public_api=inbound_api.router,
            handlers=handlers.router,
            publishes=PUBLISHES,
            metadata=store.metadata,
            migrations=MIGRATIONS,
            readiness_checks={"ehr": ehr_ready, "inbound": inbound.readiness},
            on_startup=[start_ehr, inbound.start],
            on_shutdown=[stop_ehr, inbound.stop],
            cipher=cipher,
        )
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app (`uvicorn --factory ehr_connector.app:create_app`)."""
    return build(settings).app
