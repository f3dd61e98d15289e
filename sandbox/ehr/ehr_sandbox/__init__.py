"""The EHR sandbox: a FHIR R4 server that stands in for a vendor EHR in development and tests.

It speaks FHIR R4 (4.0.1) JSON over HTTP exactly as a vendor would, validates with the
`fhir.resources.R4B` models (the R4B models parse R4 payloads; `fhir.resources` no longer
ships R4 models that import under pydantic 2), and adds dev-only conveniences: demo
patients, simulated clinician and lab actions, and fault injection.
"""
