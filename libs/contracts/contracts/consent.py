"""A patient's consent to a caregiver's (proxy) access: granted and revoked in the portal,
recorded in the EHR as a FHIR `Consent` by the connector."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from contracts.base import FhirId, Instant, InternalId, Payload


class CaregiverPart(StrEnum):
    """A part of the portal a caregiver may be granted (each maps to FHIR data classes)."""

    RESULTS = "results"  # lab results and their trends
    RECORDS = "records"  # medications, allergies, conditions, immunizations, vitals, documents
    APPOINTMENTS = "appointments"  # free times, appointments, intake questions
    MESSAGES = "messages"  # conversations with the care team
    TRIAGE = "triage"  # symptom checks


class ConsentGrantedV1(Payload):
    """A patient let a caregiver (a RelatedPerson in the EHR) act for them in the chosen
    parts of the portal during a period."""

    consent_id: InternalId = Field(description="The portal's id of the grant")
    patient_id: InternalId
    patient_fhir_id: FhirId
    related_person_fhir_id: FhirId
    parts: list[CaregiverPart] = Field(min_length=1, max_length=len(CaregiverPart))
    start: Instant
    end: Instant
    granted_at: Instant


class ConsentRevokedV1(Payload):
    """A patient withdrew a caregiver's access; it ended at `revoked_at`."""

    consent_id: InternalId
    patient_id: InternalId
    patient_fhir_id: FhirId
    related_person_fhir_id: FhirId
    revoked_at: Instant
