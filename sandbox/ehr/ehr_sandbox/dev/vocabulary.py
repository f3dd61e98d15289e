"""The clinical vocabulary the sandbox writes with: lab panels (LOINC, UCUM) and a formulary.

Shared by the seed (history of the demo patients) and the simulator (new results and
medication changes), so both produce resources shaped the way a real lab system or
prescriber would: coded, with units, reference ranges and interpretations.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"


def coding(system: str, code: str, display: str) -> dict[str, str]:
    """A Coding."""
    return {"system": system, "code": code, "display": display}


def concept(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    """A CodeableConcept with one coding."""
    return {"coding": [coding(system, code, display)], "text": text or display}


def reference(resource_type: str, resource_id: str, display: str | None = None) -> dict[str, str]:
    """A literal Reference."""
    ref = {"reference": f"{resource_type}/{resource_id}"}
    if display:
        ref["display"] = display
    return ref


@dataclass(frozen=True)
class Analyte:
    """One lab test: its LOINC code, UCUM unit and adult reference range."""

    code: str
    display: str
    unit: str
    low: float | None
    high: float | None
    decimals: int = 0


@dataclass(frozen=True)
class Panel:
    """A lab panel: the report's LOINC code and its analytes."""

    code: str
    display: str
    analytes: tuple[Analyte, ...]


PANELS: dict[str, Panel] = {
    "bmp": Panel(
        "51990-0",
        "Basic metabolic panel - Blood",
        (
            Analyte("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99),
            Analyte("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 7, 20),
            Analyte("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3, 2),
            Analyte("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136, 145),
            Analyte("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 1),
            Analyte("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 98, 107),
            Analyte(
                "2028-9",
                "Carbon dioxide, total [Moles/volume] in Serum or Plasma",
                "mmol/L",
                22,
                29,
            ),
            Analyte("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 8.6, 10.3, 1),
        ),
    ),
    "cbc": Panel(
        "58410-2",
        "CBC panel - Blood by Automated count",
        (
            Analyte(
                "6690-2",
                "Leukocytes [#/volume] in Blood by Automated count",
                "10*3/uL",
                4.5,
                11.0,
                1,
            ),
            Analyte(
                "789-8",
                "Erythrocytes [#/volume] in Blood by Automated count",
                "10*6/uL",
                4.2,
                5.9,
                2,
            ),
            Analyte("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5, 1),
            Analyte(
                "4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", 36, 53, 1
            ),
            Analyte(
                "777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 400
            ),
        ),
    ),
    "lipid": Panel(
        "57698-3",
        "Lipid panel with direct LDL - Serum or Plasma",
        (
            Analyte("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", None, 200),
            Analyte(
                "2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 40, None
            ),
            Analyte(
                "18262-6",
                "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay",
                "mg/dL",
                None,
                100,
            ),
            Analyte("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", None, 150),
        ),
    ),
    "a1c": Panel(
        "4548-4",
        "Hemoglobin A1c/Hemoglobin.total in Blood",
        (Analyte("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6, 1),),
    ),
}


def sample_value(analyte: Analyte, *, abnormal: bool, rng: random.Random) -> float:
    """A plausible value: inside the reference range, or above it when `abnormal`."""
    low = analyte.low if analyte.low is not None else (analyte.high or 1) * 0.5
    high = analyte.high if analyte.high is not None else low * 2
    if abnormal:
        if analyte.high is None:  # only a lower bound (HDL): abnormal is low
            value = low * rng.uniform(0.6, 0.9)
        else:
            value = high * rng.uniform(1.1, 1.4)
    else:
        value = rng.uniform(low + (high - low) * 0.15, high - (high - low) * 0.15)
    return round(value, analyte.decimals)


def interpretation(analyte: Analyte, value: float) -> tuple[str, str]:
    """The v3 interpretation code and display of `value`."""
    if analyte.low is not None and value < analyte.low:
        return "L", "Low"
    if analyte.high is not None and value > analyte.high:
        return "H", "High"
    return "N", "Normal"


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def lab_observation(
    patient_id: str,
    analyte: Analyte,
    value: float,
    *,
    effective: str,
    issued: str,
    status: str,
    performer: list[dict[str, str]],
    resource_id: str | None = None,
) -> dict[str, Any]:
    """A laboratory Observation with its value, reference range and interpretation."""
    code, display = interpretation(analyte, value)
    reference_range: dict[str, Any] = {}
    if analyte.low is not None:
        reference_range["low"] = _quantity(analyte.low, analyte.unit)
    if analyte.high is not None:
        reference_range["high"] = _quantity(analyte.high, analyte.unit)
    observation: dict[str, Any] = {"resourceType": "Observation"}
    if resource_id:
        observation["id"] = resource_id
    observation |= {
        "status": status,
        "category": [concept(OBSERVATION_CATEGORY, "laboratory", "Laboratory")],
        "code": concept(LOINC, analyte.code, analyte.display),
        "subject": reference("Patient", patient_id),
        "effectiveDateTime": effective,
        "issued": issued,
        "performer": performer,
        "valueQuantity": _quantity(value, analyte.unit),
        "interpretation": [concept(INTERPRETATION, code, display)],
        "referenceRange": [reference_range],
    }
    return observation


def lab_report(
    patient_id: str,
    panel: Panel,
    results: list[dict[str, str]],
    *,
    effective: str,
    issued: str,
    status: str,
    performer: list[dict[str, str]],
    interpreter: list[dict[str, str]],
    conclusion: str,
    resource_id: str | None = None,
) -> dict[str, Any]:
    """A laboratory DiagnosticReport over `results` (references to its Observations)."""
    report: dict[str, Any] = {"resourceType": "DiagnosticReport"}
    if resource_id:
        report["id"] = resource_id
    report |= {
        "status": status,
        "category": [concept(DIAGNOSTIC_SERVICE, "LAB", "Laboratory")],
        "code": concept(LOINC, panel.code, panel.display),
        "subject": reference("Patient", patient_id),
        "effectiveDateTime": effective,
        "issued": issued,
        "performer": performer,
        "resultsInterpreter": interpreter,
        "result": results,
        "conclusion": conclusion,
    }
    return report


def conclusion_for(observations: list[dict[str, Any]]) -> str:
    """A short conclusion naming the abnormal results, as a lab would write it."""
    flagged = [
        f"{o['code']['coding'][0]['display'].split(' [')[0]} "
        f"{o['interpretation'][0]['coding'][0]['display'].lower()}"
        for o in observations
        if o["interpretation"][0]["coding"][0]["code"] != "N"
    ]
    return (
        "Abnormal: " + "; ".join(flagged) + "."
        if flagged
        else "All results within reference range."
    )


@dataclass(frozen=True)
class Drug:
    """A formulary entry: the RxNorm code and the usual adult sig."""

    key: str
    rxnorm: str
    display: str
    sig: str
    dose: float
    dose_unit: str
    frequency: int
    period_unit: str = "d"


FORMULARY: dict[str, Drug] = {
    drug.key: drug
    for drug in (
        Drug(
            "metformin",
            "861007",
            "metformin hydrochloride 500 MG Oral Tablet",
            "Take 1 tablet by mouth twice daily with meals",
            1,
            "tablet",
            2,
        ),
        Drug(
            "lisinopril",
            "314076",
            "lisinopril 10 MG Oral Tablet",
            "Take 1 tablet by mouth once daily",
            1,
            "tablet",
            1,
        ),
        Drug(
            "atorvastatin",
            "617310",
            "atorvastatin 20 MG Oral Tablet",
            "Take 1 tablet by mouth once daily at bedtime",
            1,
            "tablet",
            1,
        ),
        Drug(
            "amlodipine",
            "197361",
            "amlodipine 5 MG Oral Tablet",
            "Take 1 tablet by mouth once daily",
            1,
            "tablet",
            1,
        ),
        Drug(
            "albuterol",
            "745679",
            "albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
            "Inhale 2 puffs every 4 to 6 hours as needed for wheezing",
            2,
            "puff",
            6,
        ),
    )
}


def dosage(drug: Drug, *, dose: float | None = None, text: str | None = None) -> dict[str, Any]:
    """A Dosage for `drug` (optionally with another dose per administration)."""
    amount = dose if dose is not None else drug.dose
    return {
        "sequence": 1,
        "text": text or drug.sig,
        "timing": {
            "repeat": {"frequency": drug.frequency, "period": 1, "periodUnit": drug.period_unit}
        },
        "route": concept(SNOMED, "26643006", "Oral route")
        if drug.dose_unit == "tablet"
        else concept(SNOMED, "447694001", "Respiratory tract route"),
        "doseAndRate": [
            {
                "doseQuantity": {
                    "value": amount,
                    "unit": drug.dose_unit,
                    "system": UCUM,
                    "code": "{" + drug.dose_unit + "}",
                }
            }
        ],
    }


def medication_request(
    patient_id: str,
    drug: Drug,
    *,
    authored_on: str,
    requester: dict[str, str],
    status: str = "active",
    resource_id: str | None = None,
) -> dict[str, Any]:
    """An outpatient MedicationRequest (an order) for `drug`."""
    request: dict[str, Any] = {"resourceType": "MedicationRequest"}
    if resource_id:
        request["id"] = resource_id
    request |= {
        "status": status,
        "intent": "order",
        "category": [
            concept(
                "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                "outpatient",
                "Outpatient",
            )
        ],
        "medicationCodeableConcept": concept(RXNORM, drug.rxnorm, drug.display),
        "subject": reference("Patient", patient_id),
        "authoredOn": authored_on,
        "requester": requester,
        "dosageInstruction": [dosage(drug)],
        "dispenseRequest": {
            "numberOfRepeatsAllowed": 3,
            "expectedSupplyDuration": {"value": 30, "unit": "days", "system": UCUM, "code": "d"},
        },
    }
    return request
