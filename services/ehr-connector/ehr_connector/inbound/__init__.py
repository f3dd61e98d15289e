"""The inbound side of the connector: EHR Subscriptions, notifications, back-fill, canary.

FHIR facts flow in through topic-based Subscriptions (R5 Backport IG on R4): the EHR posts
notifications to `POST /fhir/notifications`, the connector verifies them, reads the focus
resources with its own credentials, maps them to `contracts` payloads and publishes them
through the outbox. Gaps in event numbers are recovered with `$events` (else a
`_lastUpdated` search); linked patients' history is back-filled as `record.imported`.
"""
