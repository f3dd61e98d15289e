"""The synthetic lab result the canary writes, and how its notification is recognised.

The canary's DiagnosticReport carries an identifier of the canary's own system whose value
is the run id, so the processor can tie the `lab.resulted` it publishes to the run. It is
tagged as synthetic (not with the portal's origin tag: that would make it an echo and
nothing would be published, which is the very path the canary measures).
"""

from __future__ import annotations

from datetime import datetime

from ehr_connector.inbound.domain.fhir_values import Resource, as_list

CANARY_IDENTIFIER_SYSTEM = "http://portal.example.org/fhir/sid/canary-run"
SYNTHETIC_TAG = {
    "system": "http://portal.example.org/fhir/CodeSystem/synthetic",
    "code": "canary",
    "display": "Synthetic monitoring data",
}
_LOINC = "http://loinc.org"
_GLUCOSE = {
    "system": _LOINC,
    "code": "2345-7",
    "display": "Glucose [Mass/volume] in Serum or Plasma",
}


def _instant(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def canary_observation(patient_fhir_id: str, run_id: str, now: datetime) -> Resource:
    """A final glucose result for the canary patient."""
    return {
        "resourceType": "Observation",
        "meta": {"tag": [dict(SYNTHETIC_TAG)]},
        "identifier": [{"system": CANARY_IDENTIFIER_SYSTEM, "value": run_id}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [dict(_GLUCOSE)]},
        "subject": {"reference": f"Patient/{patient_fhir_id}"},
        "effectiveDateTime": _instant(now),
        "issued": _instant(now),
        "valueQuantity": {
            "value": 95,
            "unit": "mg/dL",
            "system": "http://unitsofmeasure.org",
            "code": "mg/dL",
        },
        "referenceRange": [
            {
                "low": {"value": 70, "unit": "mg/dL", "system": "http://unitsofmeasure.org"},
                "high": {"value": 99, "unit": "mg/dL", "system": "http://unitsofmeasure.org"},
            }
        ],
    }


def canary_report(
    patient_fhir_id: str, run_id: str, observation_id: str, now: datetime
) -> Resource:
    """A final report over the canary's Observation."""
    return {
        "resourceType": "DiagnosticReport",
        "meta": {"tag": [dict(SYNTHETIC_TAG)]},
        "identifier": [{"system": CANARY_IDENTIFIER_SYSTEM, "value": run_id}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "code": "LAB",
                    }
                ]
            }
        ],
        "code": {"coding": [dict(_GLUCOSE)]},
        "subject": {"reference": f"Patient/{patient_fhir_id}"},
        "effectiveDateTime": _instant(now),
        "issued": _instant(now),
        "result": [{"reference": f"Observation/{observation_id}"}],
    }


def canary_run_id(resource: Resource) -> str | None:
    """The run id of a canary resource (None for anything else)."""
    for identifier in as_list(resource.get("identifier")):
        if isinstance(identifier, dict) and identifier.get("system") == CANARY_IDENTIFIER_SYSTEM:
            value = identifier.get("value")
            return value if isinstance(value, str) else None
    return None
