"""Event subscribers of the ehr-connector.

`router` is the service's one EventRouter: the outbound subscribers live here, and the
inbound side registers its `patient.linked` handler on the same router from
`ehr_connector.backfill` (imported by the composition root).
"""

from __future__ import annotations

from servicekit.consumer import EventRouter

router = EventRouter()
