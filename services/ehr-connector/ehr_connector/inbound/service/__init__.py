"""The inbound use cases and the running parts that carry them out.

`webhook` (what the EHR POSTs) and `processor` (a change → an outcome and its event, in one
transaction), `recovery` (gaps, heartbeats), `subscriptions` (one active Subscription per
topic), `backfill` and `appointment_import` (a linked patient's history), `slot_sync`,
`canary`; `runtime` holds them for one running connector and `lifecycle` starts and stops
it with the service.
"""
