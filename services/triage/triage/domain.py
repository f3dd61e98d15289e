"""The triage rule set: symptoms in the patient's words to an urgency, free of I/O.

Rules are red-flag patterns in the spirit of telephone-triage protocols: the most urgent
matching rule wins; a negated mention ("no chest pain") does not match; age and sex
qualify some rules. The rule-set version is recorded with every outcome so a decision can
be explained later. This is decision support for the care team, not a diagnosis: when
nothing matches, the outcome is `routine` (a clinician looks at it), never `self-care`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from contracts.base import Coding
from contracts.triage import Urgency

RULE_SET_VERSION = "2026.11.1"
SNOMED = "http://snomed.info/sct"

_ORDER = {Urgency.EMERGENCY: 0, Urgency.URGENT: 1, Urgency.ROUTINE: 2, Urgency.SELF_CARE: 3}
_NEGATION = re.compile(r"\b(no|not|without|denies|never|none)\b(?:\s+\w+){0,3}\s*$")


class Sex(StrEnum):
    """Administrative sex as FHIR codes it."""

    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Rule:
    """One red-flag or reassurance rule."""

    id: str
    urgency: Urgency
    patterns: tuple[str, ...]
    finding: Coding
    pool: str
    min_age: int | None = None
    max_age: int | None = None
    sex: Sex | None = None
    requires_any: tuple[str, ...] = field(default_factory=tuple)

    def matches(self, text: str, age: int, sex: Sex) -> bool:
        """Whether this rule applies to the (normalised) text and the patient."""
        if self.min_age is not None and age < self.min_age:
            return False
        if self.max_age is not None and age > self.max_age:
            return False
        if self.sex is not None and sex != self.sex:
            return False
        if not any(_mentions(text, p) for p in self.patterns):
            return False
        return not self.requires_any or any(_mentions(text, p) for p in self.requires_any)


def _mentions(text: str, pattern: str) -> bool:
    for match in re.finditer(pattern, text):
        if not _NEGATION.search(text[: match.start()].split(".")[-1].split(",")[-1]):
            return True
    return False


RULES: tuple[Rule, ...] = (
    Rule(
        "chest-pain",
        Urgency.EMERGENCY,
        (r"chest (pain|pressure|tightness)", r"tight(ness)? (in|of) (my |the )?chest"),
        Coding(system=SNOMED, code="29857009", display="Chest pain"),
        "emergency",
        min_age=30,
    ),
    Rule(
        "stroke-signs",
        Urgency.EMERGENCY,
        (
            r"face (is )?droop",
            r"slurred speech",
            r"(one|1) side (of my body )?(is )?(numb|weak)",
            r"sudden(ly)? (can'?t|cannot) (speak|talk|see)",
        ),
        Coding(system=SNOMED, code="230690007", display="Cerebrovascular accident"),
        "emergency",
    ),
    Rule(
        "breathing",
        Urgency.EMERGENCY,
        (r"can'?t breathe", r"cannot breathe", r"struggling to breathe", r"blue lips"),
        Coding(system=SNOMED, code="267036007", display="Dyspnea"),
        "emergency",
    ),
    Rule(
        "anaphylaxis",
        Urgency.EMERGENCY,
        (r"(throat|tongue|lips?) (is |are )?swell", r"swollen (throat|tongue)"),
        Coding(system=SNOMED, code="39579001", display="Anaphylaxis"),
        "emergency",
    ),
    Rule(
        "suicidal",
        Urgency.EMERGENCY,
        (r"suicid", r"kill myself", r"end my life"),
        Coding(system=SNOMED, code="6471006", display="Suicidal thoughts"),
        "emergency",
    ),
    Rule(
        "severe-bleeding",
        Urgency.EMERGENCY,
        (r"bleeding (heavily|a lot|won'?t stop)", r"vomiting blood", r"coughing (up )?blood"),
        Coding(system=SNOMED, code="131148009", display="Bleeding"),
        "emergency",
    ),
    Rule(
        "pregnancy-bleeding",
        Urgency.URGENT,
        (r"bleed",),
        Coding(system=SNOMED, code="289530006", display="Bleeding in pregnancy"),
        "obstetrics",
        sex=Sex.FEMALE,
        requires_any=(r"pregnan",),
    ),
    Rule(
        "short-of-breath",
        Urgency.URGENT,
        (r"short(ness)? of breath", r"breathless", r"wheez"),
        Coding(system=SNOMED, code="267036007", display="Dyspnea"),
        "urgent-nurses",
    ),
    Rule(
        "high-fever",
        Urgency.URGENT,
        (r"fever", r"temperature (of )?(39|40|41)", r"high temperature"),
        Coding(system=SNOMED, code="386661006", display="Fever"),
        "urgent-nurses",
        requires_any=(r"stiff neck", r"rash", r"(39|40|41)(\.\d)? ?(c|°)", r"days", r"confus"),
    ),
    Rule(
        "infant-fever",
        Urgency.URGENT,
        (r"fever", r"temperature"),
        Coding(system=SNOMED, code="386661006", display="Fever"),
        "paediatrics",
        max_age=1,
    ),
    Rule(
        "abdominal-pain",
        Urgency.URGENT,
        (r"(severe|bad|sharp) (abdominal|stomach|belly) pain",),
        Coding(system=SNOMED, code="21522001", display="Abdominal pain"),
        "urgent-nurses",
    ),
    Rule(
        "chest-pain-young",
        Urgency.URGENT,
        (r"chest (pain|pressure|tightness)",),
        Coding(system=SNOMED, code="29857009", display="Chest pain"),
        "urgent-nurses",
        max_age=29,
    ),
    Rule(
        "headache",
        Urgency.ROUTINE,
        (r"headache", r"migraine"),
        Coding(system=SNOMED, code="25064002", display="Headache"),
        "care-team",
    ),
    Rule(
        "back-pain",
        Urgency.ROUTINE,
        (r"back pain", r"backache"),
        Coding(system=SNOMED, code="161891005", display="Backache"),
        "care-team",
    ),
    Rule(
        "cough",
        Urgency.ROUTINE,
        (r"cough",),
        Coding(system=SNOMED, code="49727002", display="Cough"),
        "care-team",
    ),
    Rule(
        "cold",
        Urgency.SELF_CARE,
        (r"runny nose", r"sneez", r"blocked nose", r"common cold"),
        Coding(system=SNOMED, code="82272006", display="Common cold"),
        "care-team",
    ),
)


@dataclass(frozen=True)
class Assessment:
    """The outcome of one assessment."""

    urgency: Urgency
    findings: tuple[Coding, ...]
    matched_rules: tuple[str, ...]
    recommended_pool: str
    advice: str
    rule_set_version: str = RULE_SET_VERSION


_ADVICE = {
    Urgency.EMERGENCY: "Call emergency services (911) now or go to the nearest emergency room.",
    Urgency.URGENT: "Contact the clinic today; a nurse will call you back within hours.",
    Urgency.ROUTINE: "Book a routine appointment; the care team will review your answers.",
    Urgency.SELF_CARE: "Rest and fluids usually help; book an appointment if it lasts over a week.",
}


def normalise(text: str) -> str:
    """Lower-case, typographic apostrophes folded, whitespace collapsed."""
    return re.sub(r"\s+", " ", text.lower().replace("\u2019", "'")).strip()


def assess(age: int, sex: Sex, text: str) -> Assessment:
    """The urgency of the complaint in `text` for a patient of `age` and `sex`."""
    words = normalise(text)
    matched = [r for r in RULES if r.matches(words, age, sex)]
    if not matched:
        return Assessment(Urgency.ROUTINE, (), (), "care-team", _ADVICE[Urgency.ROUTINE])
    matched.sort(key=lambda r: _ORDER[r.urgency])
    top = matched[0].urgency
    findings: dict[str, Coding] = {}
    for rule in matched:
        findings.setdefault(rule.finding.code, rule.finding)
    return Assessment(
        urgency=top,
        findings=tuple(findings.values()),
        matched_rules=tuple(r.id for r in matched),
        recommended_pool=matched[0].pool,
        advice=_ADVICE[top],
    )


def summary(assessment: Assessment, age: int, sex: Sex) -> str:
    """A short summary for the care team (findings, not the patient's own words)."""
    found = ", ".join(f.display or f.code for f in assessment.findings) or "no red flags"
    return f"{assessment.urgency.value}: {found}; {age}y {sex.value}; rules {RULE_SET_VERSION}"
