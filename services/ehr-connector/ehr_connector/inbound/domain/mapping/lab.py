"""DiagnosticReport (+ its result Observations) → `lab.resulted`.

`map_observation` and `report_facts` are the one mapping of a result and of a report: the
live path (`map_report`) and the back-fill (`history.map_history`) both use them, so a
back-filled result carries the same facts as a live one (value and unit or coded/text
value, reference ranges, interpretation, status, effective and issued times, performer).
"""

from __future__ import annotations

from typing import Any

from contracts.base import Coding, ReferenceRange
from contracts.lab import LabObservation, LabResultedV1, ReportStatus
from ehr_connector.inbound.domain.fhir_values import (
    Ref,
    Resource,
    as_list,
    best_coding,
    codings,
    concept_text,
    contained,
    human_name,
    meta_version,
    parse_instant,
    reference_of,
    references,
    string,
)
from ehr_connector.inbound.domain.mapping.common import (
    LOINC,
    SNOMED,
    MappingContext,
    MappingResult,
    Rejected,
    Skipped,
    build,
    clip,
    fhir_id,
    quantity,
    render_quantity,
    source_version,
)

# R4 statuses of a result a patient may see (corrected and appended are kinds of amended).
RESULT_STATUSES = frozenset({"final", "amended", "corrected", "appended"})
_STATUSES = frozenset(s.value for s in ReportStatus)
_REPORT_STATUSES_R4 = _STATUSES | {"registered", "partial", "unknown"}
VALUE_LIMIT = 1000


def patients(report: Resource) -> list[str]:
    """FHIR ids of the patient the report is about."""
    return [r.id for r in references(report.get("subject"), "Patient")]


def needs(report: Resource) -> list[Ref]:
    """Result Observations, and performers named without a display."""
    wanted = list(references(report.get("result"), "Observation"))
    for performer in as_list(report.get("performer")) + as_list(report.get("resultsInterpreter")):
        if isinstance(performer, dict) and not string(performer.get("display")):
            ref = reference_of(performer)
            if ref is not None and ref.type in ("Practitioner", "Organization", "PractitionerRole"):
                wanted.append(ref)
    return wanted


def _effective(resource: Resource) -> Any:
    period = resource.get("effectivePeriod")
    start = period.get("start") if isinstance(period, dict) else None
    return parse_instant(
        resource.get("effectiveDateTime") or resource.get("effectiveInstant") or start
    )


def _performers(resource: Resource, ctx: MappingContext | None) -> list[str]:
    """Display names of the performers: the reference's display, else the resource read
    for it (live path) or contained in the resource."""
    names: list[str] = []
    for performer in as_list(resource.get("performer")):
        if not isinstance(performer, dict):
            continue
        read = ctx.get(reference_of(performer)) if ctx is not None else None
        name = string(performer.get("display")) or human_name(
            read or contained(resource, performer)
        )
        if name and name not in names:
            names.append(name)
    return names


def _reference_ranges(observation: Resource) -> list[ReferenceRange]:
    ranges: list[ReferenceRange] = []
    for item in as_list(observation.get("referenceRange")):
        if not isinstance(item, dict):
            continue
        low, high = quantity(item.get("low")), quantity(item.get("high"))
        text = string(item.get("text"))
        if low is None and high is None and text is None:
            continue
        ranges.append(ReferenceRange(low=low, high=high, text=clip(text, VALUE_LIMIT)))
    return ranges


def _interpretation(observation: Resource) -> list[Coding]:
    found: list[Coding] = []
    for concept in as_list(observation.get("interpretation")):
        found.extend(codings(concept))
    return found


def render_value(element: dict[str, Any]) -> str | None:
    """A non-quantity value[x] as text (ranges, ratios, booleans, times...)."""
    for key in ("valueString", "valueDateTime", "valueTime"):
        if string(element.get(key)):
            return str(element[key])
    if isinstance(element.get("valueBoolean"), bool):
        return "yes" if element["valueBoolean"] else "no"
    value_range = element.get("valueRange")
    if isinstance(value_range, dict):
        low = render_quantity(value_range.get("low"))
        high = render_quantity(value_range.get("high"))
        if low or high:
            return f"{low or ''} to {high or ''}".strip()
    ratio = element.get("valueRatio")
    if isinstance(ratio, dict):
        num = render_quantity(ratio.get("numerator"))
        den = render_quantity(ratio.get("denominator"))
        if num and den:
            return f"{num} / {den}"
    period = element.get("valuePeriod")
    if isinstance(period, dict) and (period.get("start") or period.get("end")):
        return f"{period.get('start', '')} to {period.get('end', '')}".strip()
    return None


def render_components(observation: Resource) -> str | None:
    """Component values (e.g. systolic/diastolic) as one line of text."""
    parts: list[str] = []
    for component in as_list(observation.get("component")):
        if not isinstance(component, dict):
            continue
        label = best_coding(component.get("code"), (LOINC, SNOMED))
        value = render_quantity(component.get("valueQuantity")) or render_value(component)
        concept = best_coding(component.get("valueCodeableConcept"))
        value = value or (concept.display or concept.code if concept else None)
        if value is None:
            continue
        name = (label.display or label.code) if label else None
        parts.append(f"{name}: {value}" if name else value)
    return "; ".join(parts) if parts else None


def _categories(resource: Resource) -> list[Coding]:
    return [c for c in (best_coding(x) for x in as_list(resource.get("category"))) if c]


def map_observation(
    observation: Resource, ctx: MappingContext | None = None
) -> LabObservation | Rejected:
    """One result; rejected when it has no usable id, code or status."""
    observation_id = fhir_id(observation.get("id"))
    if observation_id is None:
        return Rejected("Observation has no valid id.")
    code = best_coding(observation.get("code"), (LOINC, SNOMED))
    if code is None:
        return Rejected(f"Observation/{observation_id}: code has no coding with a system.")
    status = string(observation.get("status"))
    if status is None:
        return Rejected(f"Observation/{observation_id}: no status.")
    value_quantity = quantity(observation.get("valueQuantity"))
    if value_quantity is None and isinstance(observation.get("valueInteger"), int):
        value_quantity = quantity({"value": observation["valueInteger"]})
    value_coding = best_coding(observation.get("valueCodeableConcept"), (SNOMED, LOINC))
    value_string = None
    if value_quantity is None and value_coding is None:
        value_string = render_value(observation) or render_components(observation)
    if value_quantity is None and value_coding is None and value_string is None:
        # A coded value with text only (no system) is still the value the patient sees.
        concept = observation.get("valueCodeableConcept")
        value_string = concept_text(concept) if concept is not None else None
    version_id, last_updated = meta_version(observation)
    built = build(
        LabObservation,
        {
            "observation_fhir_id": observation_id,
            "code": code,
            "status": status,
            "value_quantity": value_quantity,
            "value_string": clip(value_string, VALUE_LIMIT),
            "value_coding": value_coding,
            "reference_ranges": _reference_ranges(observation),
            "interpretation": _interpretation(observation),
            "effective": _effective(observation) or parse_instant(observation.get("issued")),
            "issued": parse_instant(observation.get("issued")),
            "performer": _performers(observation, ctx),
            "category": _categories(observation),
            "version_id": clip(version_id, 64),
            "last_updated": last_updated,
        },
    )
    if isinstance(built, Rejected):
        return Rejected(f"Observation/{observation_id}: {built.reason}")
    assert isinstance(built, LabObservation)
    return built


def report_facts(report: Resource, ctx: MappingContext | None) -> dict[str, Any] | Rejected:
    """What a report itself says (code, category, times, performers), live or back-filled."""
    code = best_coding(report.get("code"), (LOINC, SNOMED))
    if code is None:
        return Rejected("DiagnosticReport.code has no coding with a system.")
    return {
        "code": code,
        "category": _categories(report),
        "effective": _effective(report),
        "issued": parse_instant(report.get("issued")),
        "performer": _performers(report, ctx),
    }


def map_report(report: Resource, ctx: MappingContext) -> MappingResult:
    """A final or amended report with its results → `LabResultedV1`."""
    source = source_version(report)
    if isinstance(source, Rejected):
        return source
    status = report.get("status")
    if status not in _REPORT_STATUSES_R4:
        return Rejected("DiagnosticReport.status is missing or not an R4 code.")
    if status not in RESULT_STATUSES:
        return Skipped(f"DiagnosticReport is {status}, not a final result.")
    facts = report_facts(report, ctx)
    if isinstance(facts, Rejected):
        return facts
    lines: list[LabObservation] = []
    for element in as_list(report.get("result")):
        observation = contained(report, element)
        if observation is None:
            ref = reference_of(element)
            if ref is None or ref.type != "Observation":
                return Rejected("DiagnosticReport.result holds a non-Observation reference.")
            observation = ctx.get(ref)
            if observation is None:
                return Rejected(f"Result {ref.key} could not be read.")
        line = map_observation(observation, ctx)
        if isinstance(line, Rejected):
            return line
        lines.append(line)
    return build(
        LabResultedV1,
        {
            "patient_id": ctx.patient_id,
            "report_fhir_id": source.fhir_id,
            "status": status,
            **facts,
            "observations": lines,
            "source": source,
        },
    )
