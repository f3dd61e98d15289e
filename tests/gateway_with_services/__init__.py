"""The gateway with the services behind it (records, scheduling, messaging, triage) assembled
in-process on one PostgreSQL and one broker: what a patient sees through the gateway."""
