"""Event handlers of the triage service: it consumes no events (it only publishes
`triage.completed`), so its router stays empty."""

from __future__ import annotations

from servicekit.consumer import EventRouter

router = EventRouter()
