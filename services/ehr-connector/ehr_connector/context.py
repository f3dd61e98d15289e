"""What the handlers and routes need at run time, per running service (the EHR client, the
pools' recipients and the inbound side).

The composition root (`ehr_connector.app`) builds a `Connector` at start-up as the
service's `deps` (servicekit.app), and the kit hands it to every handler with its unit of
work (`reads.deps`, `uow.deps`) and to routes as `service.deps`: two services in one
process (tests) never share an EHR client, and nothing is module-level state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ehr_connector.ehr.port import EhrPort
from ehr_connector.inbound.service.runtime import Inbound
from ehr_connector.outbound.service.lookups import BOOKING_CONSUMER
from ehr_connector.outbound.service.recipients import Recipients
from ehr_connector.settings import Settings
from servicekit.consumer import running_deps


@dataclass(frozen=True)
class Connector:
    """The running connector's settings, its EHR and who in the EHR each pool is."""

    settings: Settings
    ehr: EhrPort
    recipients: Recipients
    # Readiness: whether the EHR answers and the real client's circuit is closed (tests may
    # wrap the client as `ehr`; the probe is the client's own).
    probe: Callable[[], Awaitable[str | None]]
    # The inbound side (Subscriptions, webhook, back-fill, canary), built here and started
    # by `inbound.lifecycle.start` once the service is up.
    inbound: Inbound

    @property
    def booking_consumer(self) -> str:
        """The consumer (group) id of the `appointment.booked` handler, whose dead letters
        tell a waiting intake or cancel that its booking cannot come."""
        return self.settings.group_id(BOOKING_CONSUMER)


def connector_for(deps: object) -> Connector:
    """The running connector a handler or route was given (`reads.deps`, `uow.deps`,
    `service.deps`); none while the service starts or stops: the event waits in Kafka."""
    return running_deps(deps, Connector)
