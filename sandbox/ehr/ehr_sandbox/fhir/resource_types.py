"""The resource types the sandbox serves and the search parameters it supports for each.

This is the single source of truth for both the search index (`search.extract_index`) and
the CapabilityStatement, so `/fhir/metadata` can only advertise what the server does.
Names, types and paths follow the FHIR R4 SearchParameter registry; choice elements
(`effective[x]`) are listed as their concrete JSON names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

ParamType = Literal["token", "string", "date", "reference", "uri"]

SUPPORTED_TYPES: tuple[str, ...] = (
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "CareTeam",
    "Schedule",
    "Slot",
    "Appointment",
    "Encounter",
    "Observation",
    "DiagnosticReport",
    "MedicationRequest",
    "AllergyIntolerance",
    "Condition",
    "Immunization",
    "DocumentReference",
    "Communication",
    "Questionnaire",
    "QuestionnaireResponse",
    "Task",
    "Subscription",
    "Basic",
    "RelatedPerson",
    "Consent",
)

# Bumped when the shape of index rows changes, so existing databases are re-indexed.
INDEX_FORMAT_VERSION = "1"


@dataclass(frozen=True)
class SearchParam:
    """One search parameter: its FHIR name and type, and where its values live."""

    name: str
    type: ParamType
    paths: tuple[str, ...]
    # For reference parameters: the resource types a reference must point to be indexed
    # (`Observation.patient` is `subject` restricted to Patient); empty means any type.
    targets: tuple[str, ...] = ()
    documentation: str = ""
    definition: str = ""

    def definition_url(self, resource_type: str) -> str:
        """The canonical URL of the SearchParameter this parameter implements."""
        if self.definition:
            return self.definition
        base = "Resource" if self.name.startswith("_") else resource_type
        return f"http://hl7.org/fhir/SearchParameter/{base}-{self.name.lstrip('_')}"


@dataclass
class _Registry:
    params: dict[str, dict[str, SearchParam]] = field(default_factory=dict)


_REGISTRY = _Registry()

# Parameters every type has. `_id` and `_lastUpdated` are answered from the version
# table itself, so they have no paths and are never written to the search index.
COMMON_PARAMS: tuple[SearchParam, ...] = (
    SearchParam("_id", "token", (), documentation="Logical id of the resource"),
    SearchParam("_lastUpdated", "date", (), documentation="When the resource last changed"),
    SearchParam("_tag", "token", ("meta.tag",), documentation="Tags in meta.tag"),
    SearchParam("_profile", "uri", ("meta.profile",), documentation="Profiles in meta.profile"),
)
SPECIAL_PARAMS = frozenset({"_id", "_lastUpdated"})


def _p(
    name: str,
    type_: ParamType,
    *paths: str,
    targets: tuple[str, ...] = (),
    doc: str = "",
) -> SearchParam:
    return SearchParam(name, type_, tuple(paths), targets, doc)


_PATIENT = ("Patient",)
_PRACTITIONER = ("Practitioner",)
_LOCATION = ("Location",)
_EFFECTIVE = ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "effectiveTiming")


def _identifier() -> SearchParam:
    return _p("identifier", "token", "identifier", doc="A business identifier (system|value)")


def _subject_pair(path: str = "subject") -> tuple[SearchParam, SearchParam]:
    return (
        _p("patient", "reference", path, targets=_PATIENT, doc="The patient (Patient/id or id)"),
        _p("subject", "reference", path, doc="The subject"),
    )


_BUILTIN: dict[str, tuple[SearchParam, ...]] = {
    "Patient": (
        _identifier(),
        _p("name", "string", "name", doc="Any part of any name (starts-with, accent-blind)"),
        _p("family", "string", "name.family"),
        _p("given", "string", "name.given"),
        _p("birthdate", "date", "birthDate"),
        _p("gender", "token", "gender"),
        _p("active", "token", "active"),
        _p("telecom", "token", "telecom"),
        _p("address", "string", "address"),
        _p("general-practitioner", "reference", "generalPractitioner"),
        _p("organization", "reference", "managingOrganization"),
    ),
    "Practitioner": (
        _identifier(),
        _p("name", "string", "name", doc="Any part of any name (starts-with, accent-blind)"),
        _p("family", "string", "name.family"),
        _p("given", "string", "name.given"),
        _p("active", "token", "active"),
        _p("telecom", "token", "telecom"),
    ),
    "PractitionerRole": (
        _identifier(),
        _p("practitioner", "reference", "practitioner"),
        _p("organization", "reference", "organization"),
        _p("location", "reference", "location"),
        _p("specialty", "token", "specialty"),
        _p("role", "token", "code"),
        _p("active", "token", "active"),
    ),
    "Organization": (
        _identifier(),
        _p("name", "string", "name", "alias"),
        _p("type", "token", "type"),
        _p("active", "token", "active"),
        _p("partof", "reference", "partOf"),
    ),
    "Location": (
        _identifier(),
        _p("name", "string", "name", "alias"),
        _p("organization", "reference", "managingOrganization"),
        _p("status", "token", "status"),
        _p("type", "token", "type"),
        _p("address", "string", "address"),
        _p("partof", "reference", "partOf"),
    ),
    "CareTeam": (
        _identifier(),
        *_subject_pair(),
        _p("status", "token", "status"),
        _p("category", "token", "category"),
        _p("participant", "reference", "participant.member"),
        _p("date", "date", "period"),
        _p("encounter", "reference", "encounter"),
    ),
    "Schedule": (
        _identifier(),
        _p("actor", "reference", "actor"),
        _p("active", "token", "active"),
        _p("date", "date", "planningHorizon"),
        _p("service-type", "token", "serviceType"),
        _p("specialty", "token", "specialty"),
    ),
    "Slot": (
        _identifier(),
        _p("schedule", "reference", "schedule"),
        _p("start", "date", "start"),
        _p("status", "token", "status"),
        _p("service-type", "token", "serviceType"),
        _p("specialty", "token", "specialty"),
        _p("appointment-type", "token", "appointmentType"),
    ),
    "Appointment": (
        _identifier(),
        _p("patient", "reference", "participant.actor", targets=_PATIENT),
        _p("practitioner", "reference", "participant.actor", targets=_PRACTITIONER),
        _p("location", "reference", "participant.actor", targets=_LOCATION),
        _p("actor", "reference", "participant.actor"),
        _p("date", "date", "start", doc="Appointment start"),
        _p("status", "token", "status"),
        _p("slot", "reference", "slot"),
        _p("service-type", "token", "serviceType"),
        _p("appointment-type", "token", "appointmentType"),
        _p("based-on", "reference", "basedOn"),
        _p("part-status", "token", "participant.status"),
        _p("reason-code", "token", "reasonCode"),
    ),
    "Encounter": (
        _identifier(),
        *_subject_pair(),
        _p("status", "token", "status"),
        _p("class", "token", "class"),
        _p("type", "token", "type"),
        _p("date", "date", "period"),
        _p("participant", "reference", "participant.individual"),
        _p("practitioner", "reference", "participant.individual", targets=_PRACTITIONER),
        _p("appointment", "reference", "appointment"),
        _p("location", "reference", "location.location"),
        _p("service-provider", "reference", "serviceProvider"),
        _p("reason-code", "token", "reasonCode"),
        _p("part-of", "reference", "partOf"),
    ),
    "Observation": (
        _identifier(),
        *_subject_pair(),
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        _p("status", "token", "status"),
        _p("date", "date", *_EFFECTIVE),
        _p("based-on", "reference", "basedOn"),
        _p("encounter", "reference", "encounter"),
        _p("performer", "reference", "performer"),
        _p("derived-from", "reference", "derivedFrom"),
        _p("has-member", "reference", "hasMember"),
        _p("part-of", "reference", "partOf"),
        _p("value-concept", "token", "valueCodeableConcept"),
    ),
    "DiagnosticReport": (
        _identifier(),
        *_subject_pair(),
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        _p("status", "token", "status"),
        _p("date", "date", "effectiveDateTime", "effectivePeriod"),
        _p("issued", "date", "issued"),
        _p("result", "reference", "result"),
        _p("based-on", "reference", "basedOn"),
        _p("encounter", "reference", "encounter"),
        _p("performer", "reference", "performer"),
        _p("results-interpreter", "reference", "resultsInterpreter"),
        _p("conclusion", "token", "conclusionCode"),
    ),
    "MedicationRequest": (
        _identifier(),
        *_subject_pair(),
        _p("status", "token", "status"),
        _p("intent", "token", "intent"),
        _p("category", "token", "category"),
        _p("priority", "token", "priority"),
        _p("code", "token", "medicationCodeableConcept"),
        _p("medication", "reference", "medicationReference"),
        _p("authoredon", "date", "authoredOn"),
        _p("date", "date", "dosageInstruction.timing.event", doc="Dosage timing events"),
        _p("requester", "reference", "requester"),
        _p("encounter", "reference", "encounter"),
        _p("intended-performer", "reference", "performer"),
    ),
    "AllergyIntolerance": (
        _identifier(),
        _p("patient", "reference", "patient", targets=_PATIENT),
        _p("clinical-status", "token", "clinicalStatus"),
        _p("verification-status", "token", "verificationStatus"),
        _p("category", "token", "category"),
        _p("type", "token", "type"),
        _p("code", "token", "code", "reaction.substance"),
        _p("criticality", "token", "criticality"),
        _p("date", "date", "recordedDate"),
        _p("onset", "date", "reaction.onset"),
        _p("manifestation", "token", "reaction.manifestation"),
        _p("severity", "token", "reaction.severity"),
        _p("recorder", "reference", "recorder"),
        _p("asserter", "reference", "asserter"),
    ),
    "Condition": (
        _identifier(),
        *_subject_pair(),
        _p("clinical-status", "token", "clinicalStatus"),
        _p("verification-status", "token", "verificationStatus"),
        _p("category", "token", "category"),
        _p("code", "token", "code"),
        _p("severity", "token", "severity"),
        _p("body-site", "token", "bodySite"),
        _p("encounter", "reference", "encounter"),
        _p("onset-date", "date", "onsetDateTime", "onsetPeriod"),
        _p("abatement-date", "date", "abatementDateTime", "abatementPeriod"),
        _p("recorded-date", "date", "recordedDate"),
        _p("asserter", "reference", "asserter"),
    ),
    "Immunization": (
        _identifier(),
        _p("patient", "reference", "patient", targets=_PATIENT),
        _p("status", "token", "status"),
        _p("date", "date", "occurrenceDateTime"),
        _p("vaccine-code", "token", "vaccineCode"),
        _p("location", "reference", "location"),
        _p("performer", "reference", "performer.actor"),
        _p("manufacturer", "reference", "manufacturer"),
        _p("lot-number", "string", "lotNumber"),
        _p("reason-code", "token", "reasonCode"),
        _p("status-reason", "token", "statusReason"),
    ),
    "DocumentReference": (
        _p("identifier", "token", "masterIdentifier", "identifier"),
        *_subject_pair(),
        _p("status", "token", "status"),
        _p("type", "token", "type"),
        _p("category", "token", "category"),
        _p("date", "date", "date"),
        _p("author", "reference", "author"),
        _p("custodian", "reference", "custodian"),
        _p("encounter", "reference", "context.encounter"),
        _p("period", "date", "context.period"),
        _p("relatesto", "reference", "relatesTo.target"),
        _p("contenttype", "token", "content.attachment.contentType"),
        _p("description", "string", "description"),
    ),
    "Communication": (
        _identifier(),
        *_subject_pair(),
        _p("recipient", "reference", "recipient"),
        _p("sender", "reference", "sender"),
        _p("part-of", "reference", "partOf"),
        _p("based-on", "reference", "basedOn"),
        _p("status", "token", "status"),
        _p("category", "token", "category"),
        _p("medium", "token", "medium"),
        _p("sent", "date", "sent"),
        _p("received", "date", "received"),
        _p("encounter", "reference", "encounter"),
    ),
    "Questionnaire": (
        _identifier(),
        _p("url", "uri", "url"),
        _p("name", "string", "name"),
        _p("title", "string", "title"),
        _p("status", "token", "status"),
        _p("version", "token", "version"),
        _p("code", "token", "code", "item.code"),
        _p("date", "date", "date"),
        _p("publisher", "string", "publisher"),
    ),
    "QuestionnaireResponse": (
        _identifier(),
        _p(
            "questionnaire",
            "reference",
            "questionnaire",
            doc="The canonical URL, Questionnaire/id or id",
        ),
        *_subject_pair(),
        _p("status", "token", "status"),
        _p("authored", "date", "authored"),
        _p("author", "reference", "author"),
        _p("based-on", "reference", "basedOn"),
        _p("part-of", "reference", "partOf"),
        _p("encounter", "reference", "encounter"),
        _p("source", "reference", "source"),
    ),
    "Task": (
        _identifier(),
        _p("patient", "reference", "for", targets=_PATIENT),
        _p("subject", "reference", "for"),
        _p("owner", "reference", "owner"),
        _p("status", "token", "status"),
        _p("business-status", "token", "businessStatus"),
        _p("code", "token", "code"),
        _p("intent", "token", "intent"),
        _p("priority", "token", "priority"),
        _p("requester", "reference", "requester"),
        _p("performer", "token", "performerType"),
        _p("focus", "reference", "focus"),
        _p("based-on", "reference", "basedOn"),
        _p("part-of", "reference", "partOf"),
        _p("encounter", "reference", "encounter"),
        _p("authored-on", "date", "authoredOn"),
        _p("modified", "date", "lastModified"),
        _p("period", "date", "executionPeriod"),
        _p("group-identifier", "token", "groupIdentifier"),
    ),
    "Subscription": (
        _p("status", "token", "status"),
        _p("url", "uri", "channel.endpoint"),
        _p("criteria", "string", "criteria"),
        _p("type", "token", "channel.type"),
        _p("payload", "token", "channel.payload"),
        _p("contact", "token", "contact"),
    ),
    "Basic": (
        _identifier(),
        _p("code", "token", "code"),
        *_subject_pair(),
        _p("created", "date", "created"),
        _p("author", "reference", "author"),
    ),
    # A patient's caregivers (parents, family) as users who may act for the patient.
    "RelatedPerson": (
        _identifier(),
        _p("patient", "reference", "patient", targets=_PATIENT),
        _p("relationship", "token", "relationship"),
        _p("active", "token", "active"),
        _p("name", "string", "name"),
    ),
    # A patient's privacy consents (proxy access granted to a RelatedPerson).
    "Consent": (
        _identifier(),
        _p("patient", "reference", "patient", targets=_PATIENT),
        _p("status", "token", "status"),
        _p("scope", "token", "scope"),
        _p("category", "token", "category"),
        _p("actor", "reference", "provision.actor.reference"),
        _p("action", "token", "provision.action"),
        _p("period", "date", "provision.period"),
        _p("date", "date", "dateTime"),
    ),
}


def _load_builtin() -> None:
    for resource_type in SUPPORTED_TYPES:
        table = _REGISTRY.params.setdefault(resource_type, {})
        for param in (*COMMON_PARAMS, *_BUILTIN.get(resource_type, ())):
            table[param.name] = param


_load_builtin()


def is_supported(resource_type: str) -> bool:
    """Whether the sandbox serves `resource_type`."""
    return resource_type in _REGISTRY.params


def params_for(resource_type: str) -> dict[str, SearchParam]:
    """The search parameters of `resource_type`, by name."""
    return _REGISTRY.params.get(resource_type, {})


def register_search_param(resource_type: str, param: SearchParam) -> None:
    """Add (or replace) a search parameter of a supported type.

    Register before the app starts (at import time or in a setup hook): the store re-indexes
    existing resources at start-up whenever the set of parameters has changed.
    """
    if resource_type not in _REGISTRY.params:
        raise ValueError(f"unsupported resource type {resource_type!r}")
    _REGISTRY.params[resource_type][param.name] = param


def index_signature() -> str:
    """A digest of every indexed parameter: when it changes, the search index is rebuilt."""
    digest = hashlib.sha256(INDEX_FORMAT_VERSION.encode())
    for resource_type in sorted(_REGISTRY.params):
        for name in sorted(_REGISTRY.params[resource_type]):
            p = _REGISTRY.params[resource_type][name]
            digest.update(repr((resource_type, p.name, p.type, p.paths, p.targets)).encode())
    return digest.hexdigest()
