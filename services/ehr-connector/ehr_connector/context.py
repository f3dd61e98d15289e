"""What the event handlers need at run time, per running service.

Handlers are module-level functions registered on `handlers.router` (the inbound side adds
its own), and the kit calls them with the event and a unit of work (or, outside the transaction,
what the kit gives before it) only. The composition root attaches a
`Connector` to the service at start-up, keyed by the service's outbox (the one per-service
object every unit of work carries), so two services in one process (tests) never share an
EHR client and nothing is a global singleton.
"""

from __future__ import annotations

from dataclasses import dataclass
from weakref import WeakKeyDictionary

from ehr_connector.ehr.port import EhrPort
from ehr_connector.outbound.lookups import BOOKING_CONSUMER
from ehr_connector.outbound.recipients import Recipients
from ehr_connector.settings import Settings
from servicekit.errors import DependencyUnavailable
from servicekit.outbox import Outbox


@dataclass(frozen=True)
class Connector:
    """The running connector's settings, its EHR and who in the EHR each pool is."""

    settings: Settings
    ehr: EhrPort
    recipients: Recipients

    @property
    def booking_consumer(self) -> str:
        """The consumer (group) id of the `appointment.booked` handler, whose dead letters
        tell a waiting intake or cancel that its booking cannot come."""
        return self.settings.group_id(BOOKING_CONSUMER)


_connectors: WeakKeyDictionary[Outbox, Connector] = WeakKeyDictionary()


def attach(outbox: Outbox, connector: Connector) -> None:
    """Make `connector` what handlers of the service owning `outbox` use."""
    _connectors[outbox] = connector


def detach(outbox: Outbox) -> None:
    """Forget the connector of a stopped service."""
    _connectors.pop(outbox, None)


def connector_for(outbox: Outbox) -> Connector:
    """The connector of the service owning `outbox` (the one a handler is given)."""
    connector = _connectors.get(outbox)
    if connector is None:
        # Only while starting or stopping: the event waits in Kafka.
        raise DependencyUnavailable("the EHR client is not running")
    return connector
