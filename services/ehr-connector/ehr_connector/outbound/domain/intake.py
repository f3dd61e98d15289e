"""Intake answers → a QuestionnaireResponse. No I/O.

R4 limits `QuestionnaireResponse.basedOn` to CarePlan and ServiceRequest, `partOf` to
Observation and Procedure, `encounter` to Encounter, and no core extension may point from a
QuestionnaireResponse to an Appointment (`event-basedOn` is defined for Condition only in
R4; the official validator rejects it here). The link to the visit is therefore the
portal's own extension `intake-appointment` (Reference(Appointment)), which the validator
accepts, plus the intake identifier; when the EHR opens an Encounter for the visit it can
set `encounter` itself.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from contracts.intake import IntakeAnswer, IntakeSubmittedV1
from ehr_connector.outbound.domain.identifiers import INTAKE_ID, identifier
from ehr_connector.outbound.domain.tags import tagged

FhirJson = dict[str, Any]

INTAKE_APPOINTMENT: Final = "http://portal.example.org/fhir/StructureDefinition/intake-appointment"


def answer_value(answer: IntakeAnswer) -> FhirJson | None:
    """The `answer` element of one answered item (None when nothing was answered)."""
    if answer.value_string is not None:
        return {"valueString": answer.value_string}
    if answer.value_boolean is not None:
        return {"valueBoolean": answer.value_boolean}
    if answer.value_integer is not None:
        return {"valueInteger": answer.value_integer}
    if answer.value_coding is not None:
        coding = {"code": answer.value_coding.code}
        if answer.value_coding.system:  # a form's option may have no code system
            coding["system"] = answer.value_coding.system
        if answer.value_coding.display:
            coding["display"] = answer.value_coding.display
        return {"valueCoding": coding}
    return None


def items(answers: list[IntakeAnswer]) -> list[FhirJson]:
    """QuestionnaireResponse items in question order; repeated linkIds become one item
    with several answers (a repeating question)."""
    by_link: dict[str, list[FhirJson]] = {}
    for answer in answers:
        value = answer_value(answer)
        if value is not None:
            by_link.setdefault(answer.link_id, []).append(value)
    return [{"linkId": link_id, "answer": values} for link_id, values in by_link.items()]


def intake_response(
    data: IntakeSubmittedV1, *, patient_fhir_id: str, appointment_fhir_id: str | None
) -> FhirJson:
    """The completed QuestionnaireResponse of an intake, authored by the patient."""
    patient = {"reference": f"Patient/{patient_fhir_id}"}
    response: FhirJson = {
        "resourceType": "QuestionnaireResponse",
        "identifier": identifier(INTAKE_ID, data.intake_id),
        "questionnaire": data.questionnaire_canonical,
        "status": "completed",
        "subject": patient,
        "authored": data.submitted_at.isoformat(),
        "author": patient,
        "source": patient,
        "item": items(data.answers),
    }
    if appointment_fhir_id:
        response["extension"] = [
            {
                "url": INTAKE_APPOINTMENT,
                "valueReference": {"reference": f"Appointment/{appointment_fhir_id}"},
            }
        ]
    if not response["item"]:
        del response["item"]
    return tagged(response)


def amended(current: FhirJson, data: IntakeSubmittedV1) -> FhirJson | None:
    """The filed QuestionnaireResponse with the patient's amended answers (status
    `amended`); None when it already has them (a replayed amendment)."""
    new_items = items(data.answers)
    if current.get("item", []) == new_items and current.get("status") == "amended":
        return None
    changed = copy.deepcopy(current)
    changed["status"] = "amended"
    changed["authored"] = data.submitted_at.isoformat()
    if new_items:
        changed["item"] = new_items
    else:
        changed.pop("item", None)
    return tagged(changed)
