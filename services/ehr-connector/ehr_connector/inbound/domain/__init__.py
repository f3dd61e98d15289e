"""The inbound side's pure rules: FHIR JSON in, decisions and `contracts` payloads out.

No I/O (an import-linter contract forbids sqlalchemy, fastapi and httpx here): `rules`
(outcomes, echo verdict, heartbeat deadline), `notifications` (Bundle parsing), `mapping/`
(FHIR → payloads), `fhir_values` (total readers of FHIR JSON values) and `canary_data`.
"""
