"""Security events of the gateway, counted in `security_events_total{service,event}`
(failed tokens, missing scopes, refused links, rate-limit hits) for breach monitoring."""

from __future__ import annotations

from servicekit.app import Service
from servicekit.limits import SECURITY_EVENTS


def count(service: Service, event: str) -> None:
    """Count one security event of the service."""
    SECURITY_EVENTS.labels(service.settings.service_name, event).inc()
