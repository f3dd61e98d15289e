"""The outbound use cases: they call the EHR through the port with no transaction open and
note what they did in a `Journal`, which the kit records with the inbox row afterwards.

`booking` (appointments and slots), `filing` (intake answers, messages, triage outcomes)
and `consents`; `lookups` finds the EHR resources an event refers to (and waits for a
booking), `recipients` resolves a care-team pool to its EHR recipient.
"""
