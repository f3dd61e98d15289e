"""Event subscribers of the ehr-connector: the service's one router and what it handles.

The subscribers themselves live beside their use cases, in `outbound/handlers.py` (portal
events → FHIR writes, effect-first: the EHR is called with no transaction open) and
`inbound/handlers.py` (`patient.linked`: which portal patient an EHR Patient is, and the
back-fill of their history). This module is the one table of which event goes where.
"""

from __future__ import annotations

from ehr_connector.inbound import handlers as inbound
from ehr_connector.outbound import handlers as outbound
from servicekit.consumer import EventRouter

router = EventRouter()

# Interactive: a patient waits for the write (a booking's confirmation, a message's delivery).
router.effect_first("appointment.booked", interactive=True)(outbound.book_appointment)
router.effect_first("appointment.cancelled", interactive=True)(outbound.cancel_appointment)
router.effect_first("appointment.rescheduled", interactive=True)(outbound.reschedule_appointment)
router.effect_first("intake.submitted")(outbound.file_intake)
router.effect_first("message.sent", interactive=True)(outbound.send_message_to_care_team)
router.effect_first("triage.completed")(outbound.file_triage)
router.effect_first("consent.granted")(outbound.file_consent)
router.effect_first("consent.revoked")(outbound.revoke_consent)
router.handles("patient.linked")(inbound.link_patient)
