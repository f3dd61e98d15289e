"""Digital intake: the patient's answers to a pre-visit questionnaire."""

from __future__ import annotations

from pydantic import Field

from contracts.base import Coding, FhirId, Instant, InternalId, Payload


class IntakeAnswer(Payload):
    """One answered item; exactly one of the value fields is set."""

    link_id: str = Field(description="Questionnaire.item.linkId")
    value_string: str | None = Field(default=None, max_length=2000)
    value_boolean: bool | None = None
    value_integer: int | None = None
    value_coding: Coding | None = None


class IntakeSubmittedV1(Payload):
    """The patient submitted intake answers for an appointment."""

    intake_id: InternalId
    appointment_id: InternalId
    appointment_fhir_id: FhirId | None = None
    patient_id: InternalId
    questionnaire_canonical: str = Field(description="Canonical URL of the Questionnaire")
    answers: list[IntakeAnswer]
    submitted_at: Instant
    revision: int = Field(
        default=1,
        ge=1,
        description="1 for the first submission; each amendment of the same intake_id is the "
        "next number and replaces the answers of the filed QuestionnaireResponse",
    )


class IntakeRemindedV1(Payload):
    """A visit is near and its intake is still missing: remind the patient."""

    appointment_id: InternalId
    patient_id: InternalId
    start: Instant = Field(description="When the visit starts")
    questionnaire_canonical: str = Field(description="Canonical URL|version to fill in")
    reminded_at: Instant
