"""The outbound side: portal events become FHIR writes in the EHR.

Laid out like a service: `handlers` (the subscribers, registered on the service's router in
`ehr_connector.handlers`) → `service` (the use cases, which talk to the EHR through the
port and record what they did) → `domain` (pure mapping: events and EHR state → R4
resources and decisions).
"""
