"""The FHIR R4 core of the sandbox: the REST API, the resource types and search parameters
it serves, its CapabilityStatement, validation, OperationOutcomes and the change feed."""
