"""The EHR behind a port: `port.EhrPort` is what the connector needs, `fhir_client` the FHIR
R4 adapter with SMART Backend Services auth (`auth`), retries and a circuit breaker."""
