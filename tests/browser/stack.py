"""The whole stack for the browser journeys, every boundary real: the EHR sandbox, the
ehr-connector and the gateway under uvicorn on free ports; records, scheduling, messaging
and triage in-process behind the gateway (ASGI transports), each on its own PostgreSQL
database and the session's Kafka broker, as the e2e journeys start them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from devstack.topics import ensure_topics
from ehr_connector.app import build as build_connector
from ehr_connector.settings import Settings as ConnectorSettings
from ehr_sandbox.auth.settings import AuthSettings
from ehr_sandbox.subscriptions.settings import SubscriptionSettings
from ehr_sandbox.testing.http import RunningSandbox, free_port, running_sandbox, serve
from gateway.app import build as build_gateway
from gateway.settings import Settings as GatewaySettings
from messaging.app import build as build_messaging
from messaging.settings import Settings as MessagingSettings
from records.app import build as build_records
from records.settings import Settings as RecordsSettings
from scheduling.app import build as build_scheduling
from scheduling.settings import Settings as SchedulingSettings
from servicekit.testing import isolated_settings
from triage.app import build as build_triage
from triage.settings import Settings as TriageSettings

SERVICES = ("connector", "records", "scheduling", "messaging", "triage", "gateway")


@dataclass
class Stack:
    """The running stack: the sandbox (with an admin client) and the gateway's URL."""

    sandbox: RunningSandbox
    gateway_url: str


@asynccontextmanager
async def running_stack(
    data_dir: Path,
    make_database: Callable[[], Awaitable[str]],
    kafka_bootstrap: str,
    prefix: str,
) -> AsyncIterator[Stack]:
    """Start everything; yields once the gateway answers on its port."""
    await ensure_topics(kafka_bootstrap, prefix)
    db = {name: await make_database() for name in SERVICES}

    def isolated(name: str) -> dict[str, object]:
        return isolated_settings(db[name], kafka_bootstrap, prefix)

    subscriptions = SubscriptionSettings(delivery_retry_base_s=0.2, delivery_retry_max_s=2.0)
    async with AsyncExitStack() as stack:
        sandbox = await stack.enter_async_context(
            running_sandbox(
                data_dir,
                port=free_port(),
                seed=True,
                subscriptions=subscriptions,
                # A sign-in lasts longer than one journey on a loaded machine.
                auth=AuthSettings(data_dir=data_dir / "auth", access_token_ttl_s=1800),
            )
        )
        connector_port = free_port()
        connector = build_connector(
            ConnectorSettings(
                **isolated("connector"),  # type: ignore[arg-type]
                http_port=connector_port,
                ehr_base_url=sandbox.fhir,
                inbound_webhook_url=f"http://127.0.0.1:{connector_port}/fhir/notifications",
                canary_enabled=False,
                slot_sync_days=10,  # fewer slots to cache: the journeys look days ahead
            )
        )
        connector_url = await stack.enter_async_context(serve(connector.app, connector_port))
        records = build_records(RecordsSettings(**isolated("records")))  # type: ignore[arg-type]
        triage = build_triage(TriageSettings(**isolated("triage")))  # type: ignore[arg-type]
        scheduling = build_scheduling(
            SchedulingSettings(
                **isolated("scheduling"),  # type: ignore[arg-type]
                ehr_connector_url=connector_url,
            )
        )
        messaging = build_messaging(
            MessagingSettings(
                **isolated("messaging"),  # type: ignore[arg-type]
                triage_url="http://triage",
            ),
            triage_transport=httpx.ASGITransport(app=triage.app),
        )
        for service in (records, triage, scheduling, messaging):
            await stack.enter_async_context(
                LifespanManager(service.app, startup_timeout=60, shutdown_timeout=60)
            )
        gateway_port = free_port()
        gateway = build_gateway(
            GatewaySettings(
                **isolated("gateway"),  # type: ignore[arg-type]
                oidc_issuer=sandbox.url,
                records_url="http://records",
                scheduling_url="http://scheduling",
                messaging_url="http://messaging",
                triage_url="http://triage",
                # The browser signs in and reloads many pages from one address.
                rate_limit_ip_per_s=1000,
                rate_limit_ip_burst=1000,
            ),
            mounts={
                "http://records": httpx.ASGITransport(app=records.app),
                "http://scheduling": httpx.ASGITransport(app=scheduling.app),
                "http://messaging": httpx.ASGITransport(app=messaging.app),
                "http://triage": httpx.ASGITransport(app=triage.app),
            },
        )
        gateway_url = await stack.enter_async_context(serve(gateway.app, gateway_port))
        yield Stack(sandbox=sandbox, gateway_url=gateway_url)
