"""Start and stop the inbound side with the service (hooks of the composition root).

`start` runs after the EHR client is up (the service's `deps`, entered before hooks): it
builds the `Inbound` runtime on `service.state["inbound"]` and starts its background
tasks; `stop` ends them before the EHR client closes. Importing this module registers the
`patient.linked` handler on the service's router.
"""

from __future__ import annotations

from ehr_connector.context import Connector
from ehr_connector.inbound import handlers as _handlers  # noqa: F401 - registers patient.linked
from ehr_connector.inbound.runtime import Inbound
from ehr_connector.settings import Settings
from servicekit.app import Service

STATE_KEY = "inbound"


def inbound_of(service: Service) -> Inbound | None:
    """The running inbound side of a service, if started."""
    inbound: Inbound | None = service.state.get(STATE_KEY)
    return inbound


async def start(service: Service) -> None:
    """Build the inbound runtime and start its background tasks."""
    settings = service.settings
    assert isinstance(settings, Settings)
    if not isinstance(service.deps, Connector):
        raise RuntimeError("the EHR client must start before the inbound side")
    inbound = Inbound(settings, service.db, service.outbox, service.deps.ehr)
    service.state[STATE_KEY] = inbound
    await inbound.start()


async def stop(service: Service) -> None:
    """Stop the inbound side's background tasks."""
    inbound = service.state.pop(STATE_KEY, None)
    if isinstance(inbound, Inbound):
        await inbound.stop()


async def readiness(service: Service) -> str | None:
    """Readiness of the inbound side: warnings only (missed heartbeats, inactive
    Subscriptions), so `/readyz` stays 200."""
    inbound = inbound_of(service)
    if inbound is None:
        return "warning: inbound side not started"
    return await inbound.readiness()
