"""Start and stop the inbound side with the service (hooks of the composition root).

The composition root builds the `Inbound` runtime into the service's `deps` (`Connector`);
`start` runs after that (hooks come after `deps`) and starts its background tasks; `stop`
ends them before the EHR client closes.
"""

from __future__ import annotations

from ehr_connector.context import Connector
from ehr_connector.inbound.service.runtime import Inbound
from servicekit.app import Service


def inbound_of(service: Service) -> Inbound | None:
    """The inbound side of a running service (None before start-up and after stop)."""
    deps = service.deps
    return deps.inbound if isinstance(deps, Connector) else None


async def start(service: Service) -> None:
    """Start the inbound side's background tasks."""
    inbound = inbound_of(service)
    if inbound is None:
        raise RuntimeError("the connector's deps must be built before the inbound side starts")
    await inbound.start()


async def stop(service: Service) -> None:
    """Stop the inbound side's background tasks."""
    inbound = inbound_of(service)
    if inbound is not None:
        await inbound.stop()


async def readiness(service: Service) -> str | None:
    """Readiness of the inbound side: warnings only (missed heartbeats, inactive
    Subscriptions), so `/readyz` stays 200."""
    inbound = inbound_of(service)
    if inbound is None:
        return "warning: inbound side not started"
    return await inbound.readiness()
