"""Topic-based Subscriptions per the HL7 Subscriptions R5 Backport IG, on FHIR R4.

`setup(app)` wires them into the sandbox app: the `$status`/`$events` operations and the
validating Subscription create/update routes (placed ahead of the generic FHIR routes, so
`/fhir/Subscription/$status` is not read as a resource id), the topics and operations in
the CapabilityStatement, and a start-up/shut-down step (a lifespan merged into the app's)
that runs the `SubscriptionManager` on `app.state.subscriptions`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from ehr_sandbox.fhir import capabilities
from ehr_sandbox.subscriptions.api import router as operations_router
from ehr_sandbox.subscriptions.manager import SubscriptionManager
from ehr_sandbox.subscriptions.settings import SubscriptionSettings
from ehr_sandbox.subscriptions.topics import TOPICS

__all__ = ["SubscriptionManager", "SubscriptionSettings", "setup"]

_BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport"
TOPIC_CANONICAL_EXTENSION = (
    f"{_BACKPORT}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
)
STATUS_OPERATION = f"{_BACKPORT}/OperationDefinition/backport-subscription-status"
EVENTS_OPERATION = f"{_BACKPORT}/OperationDefinition/backport-subscription-events"
SUBSCRIPTION_PROFILE = f"{_BACKPORT}/StructureDefinition/backport-subscription"


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = getattr(app.state, "subscription_settings", None) or SubscriptionSettings()
    manager = SubscriptionManager(app, settings)
    await manager.start()
    app.state.subscriptions = manager
    try:
        yield
    finally:
        await manager.stop()
        app.state.subscriptions = None


def _advertise() -> None:
    capabilities.register_operation("Subscription", "status", STATUS_OPERATION)
    capabilities.register_operation("Subscription", "events", EVENTS_OPERATION)
    capabilities.add_supported_profile("Subscription", SUBSCRIPTION_PROFILE)
    for topic in TOPICS:
        extension = {"url": TOPIC_CANONICAL_EXTENSION, "valueCanonical": topic.canonical}
        # The IG's context for the extension is `rest.resource` (on Subscription); it is
        # also on `rest`, where clients written against the project brief look for it.
        capabilities.add_resource_extension("Subscription", extension)
        capabilities.add_rest_extension(extension)


def setup(app: FastAPI) -> None:
    """Add topic-based Subscriptions to the sandbox app (call once, in the app factory)."""
    if getattr(app.state, "subscriptions_setup", False):
        return
    app.state.subscriptions_setup = True
    app.state.subscriptions = None
    _advertise()
    router = APIRouter(lifespan=_lifespan)
    router.include_router(operations_router)
    app.include_router(router)
    # Matched before the generic `/fhir/{type}/{id}` routes included earlier.
    routes = app.router.routes
    routes.insert(0, routes.pop())
