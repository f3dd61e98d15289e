"""Linking a portal account to a patient in the EHR."""

from __future__ import annotations

from pydantic import Field

from contracts.base import FhirId, Instant, InternalId, Payload


class PatientLinkedV1(Payload):
    """A portal account was linked to its EHR Patient; the connector back-fills history."""

    patient_id: InternalId
    patient_fhir_id: FhirId
    linked_at: Instant
    backfill: bool = Field(default=True, description="Import the patient's history")
