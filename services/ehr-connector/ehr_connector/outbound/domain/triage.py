"""A triage outcome → a QuestionnaireResponse and a review Task for the care team. No I/O.

The Task's priority follows the urgency: emergency → stat, urgent → asap, routine and
self-care → routine (FHIR's request-priority has no lower level than routine).
"""

from __future__ import annotations

from typing import Any, Final

from contracts.triage import TriageCompletedV1, Urgency
from ehr_connector.outbound.domain.identifiers import TRIAGE_SESSION_ID, identifier
from ehr_connector.outbound.domain.tags import tagged

FhirJson = dict[str, Any]

URGENCY_SYSTEM: Final = "http://portal.example.org/fhir/CodeSystem/triage-urgency"
TASK_PRIORITY: Final[dict[Urgency, str]] = {
    Urgency.EMERGENCY: "stat",
    Urgency.URGENT: "asap",
    Urgency.ROUTINE: "routine",
    Urgency.SELF_CARE: "routine",
}


def triage_response(
    data: TriageCompletedV1, *, patient_fhir_id: str, questionnaire: str
) -> FhirJson:
    """The completed QuestionnaireResponse holding the triage outcome."""
    patient = {"reference": f"Patient/{patient_fhir_id}"}
    item: list[FhirJson] = [
        {
            "linkId": "urgency",
            "text": "Urgency",
            "answer": [{"valueCoding": {"system": URGENCY_SYSTEM, "code": data.urgency.value}}],
        },
        {"linkId": "summary", "text": "Summary", "answer": [{"valueString": data.summary}]},
    ]
    if data.findings:
        item.append(
            {
                "linkId": "findings",
                "text": "Findings",
                "answer": [
                    {
                        "valueCoding": {
                            k: v
                            for k, v in (
                                ("system", f.system),
                                ("code", f.code),
                                ("display", f.display),
                            )
                            if v
                        }
                    }
                    for f in data.findings
                ],
            }
        )
    item += [
        {
            "linkId": "recommended-pool",
            "text": "Recommended care-team pool",
            "answer": [{"valueString": data.recommended_pool}],
        },
        {
            "linkId": "rule-set-version",
            "text": "Triage rule set",
            "answer": [{"valueString": data.rule_set_version}],
        },
    ]
    return tagged(
        {
            "resourceType": "QuestionnaireResponse",
            "identifier": identifier(TRIAGE_SESSION_ID, data.session_id),
            "questionnaire": questionnaire,
            "status": "completed",
            "subject": patient,
            "authored": data.completed_at.isoformat(),
            "source": patient,
            "item": item,
        }
    )


def task_description(data: TriageCompletedV1) -> str:
    """What the care team reads first: the urgency, the red/amber flags with the words that
    raised them, and the patient's own description (events before these fields existed
    give the urgency alone)."""
    lines = [f"Review the patient's portal triage (urgency: {data.urgency.value})"]
    flags = [f for f in data.flags if f.level in ("red", "amber")]
    for flag in flags:
        evidence = "; ".join(f'"{e}"' for e in flag.evidence)
        lines.append(
            f"{flag.level.upper()} flag: {flag.text}" + (f" ({evidence})" if evidence else "")
        )
    if data.patient_text:
        lines.append(f'Patient\'s words: "{data.patient_text}"')
    return "\n".join(lines)


def review_task(
    data: TriageCompletedV1, *, patient_fhir_id: str, response_fhir_id: str, owner: str
) -> FhirJson:
    """The Task asking the care team (`owner`, `CareTeam/<id>`) to review the triage."""
    return tagged(
        {
            "resourceType": "Task",
            "identifier": [identifier(TRIAGE_SESSION_ID, data.session_id)],
            "status": "requested",
            "intent": "order",
            "priority": TASK_PRIORITY[data.urgency],
            "code": {"text": "Review portal triage"},
            "description": task_description(data),
            "focus": {"reference": f"QuestionnaireResponse/{response_fhir_id}"},
            "for": {"reference": f"Patient/{patient_fhir_id}"},
            "authoredOn": data.completed_at.isoformat(),
            "owner": {"reference": owner},
        }
    )
