"""The patients' API (`/v1`), one module per part of the portal.

`access` is what every route uses (the caller, the scope a route requires, forwarding a
read or a command to the owning service with its access-log entry); `me` holds the
patient's own routes (profile, summary, threads, access log, notification stream);
`records`, `appointments`, `messages`, `triage` and `caregivers` forward the patient's
reads and commands to the service that owns them.
"""
