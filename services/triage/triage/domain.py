"""The triage decision, free of I/O: facts about the patient in, an urgency with reasons out.

Safety rules, in the order they apply:
- every complaint found contributes its disposition, every flag that fires its level
  (red = emergency, amber = urgent); the most urgent wins;
- nothing understood is never self-care: it is "urgent: talk to a nurse today";
- age and pregnancy raise urgency through the rules that name them; a sex of "other" or
  "unknown" never switches a rule off (pregnancy rules apply whenever pregnancy is mentioned);
- a follow-up question is offered only when its answer could still raise the urgency.
This is decision support for the care team, not a diagnosis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from contracts.base import Coding
from contracts.triage import Urgency
from triage.numbers import normalise_value
from triage.ruleset import Complaint, Condition, Flag, Predicate, Question, RuleSet

SNOMED = "http://snomed.info/sct"
RANK = {Urgency.SELF_CARE: 0, Urgency.ROUTINE: 1, Urgency.URGENT: 2, Urgency.EMERGENCY: 3}
LEVEL_URGENCY = {"red": Urgency.EMERGENCY, "amber": Urgency.URGENT, "routine": Urgency.ROUTINE}
NOT_UNDERSTOOD = "not-understood"
MAX_QUESTIONS = 5


class Sex(StrEnum):
    """Administrative sex as FHIR codes it."""

    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Evidence:
    """Why a fact is believed: a span of the patient's text, or an answer."""

    text: str
    start: int | None = None
    end: int | None = None
    source: str = "text"  # "text" | "answer" | "model"


@dataclass(frozen=True)
class Value:
    """A measured value (normalised unit) and where it came from."""

    value: float
    evidence: Evidence


@dataclass
class Facts:
    """What is known about the patient and the complaint."""

    age_years: float
    sex: Sex
    present: dict[str, list[Evidence]] = field(default_factory=dict)
    absent: set[str] = field(default_factory=set)
    values: dict[str, Value] = field(default_factory=dict)
    duration_days: float | None = None
    answered: set[str] = field(default_factory=set)

    def add(self, concept: str, evidence: Evidence) -> None:
        """Record a finding (an answer or a mention overrides an earlier denial)."""
        self.present.setdefault(concept, []).append(evidence)
        self.absent.discard(concept)

    @property
    def pregnant(self) -> bool:
        """Pregnancy is mentioned (whatever the recorded sex)."""
        return "pregnant" in self.present


@dataclass(frozen=True)
class FiredFlag:
    """A flag that fired, with the evidence that made it fire."""

    id: str
    level: str
    complaint: str
    text: str
    source: str
    evidence: tuple[Evidence, ...]


@dataclass(frozen=True)
class Assessment:
    """The outcome of one assessment."""

    urgency: Urgency
    flags: tuple[FiredFlag, ...]
    findings: tuple[Coding, ...]
    complaints: tuple[str, ...]
    recommended_pool: str
    advice: str
    questions: tuple[Question, ...]
    rule_set_version: str
    understood: bool = True

    @property
    def matched_rules(self) -> tuple[str, ...]:
        """Complaint and flag ids that decided the outcome (kept for the audit trail)."""
        return (*self.complaints, *(f.id for f in self.flags))


def _holds(pred: Predicate, facts: Facts) -> Evidence | None:
    value = facts.values.get(pred.variable)
    return value.evidence if value is not None and pred.holds(value.value) else None


def evaluate(cond: Condition, facts: Facts) -> list[Evidence] | None:
    """The evidence for `cond` when it holds, else None: the patient must fit it (age, sex),
    then every clause must hold; the evidence is each clause's, in the clauses' order."""
    if not _fits_patient(cond, facts):
        return None
    evidence: list[Evidence] = []
    for clause in _CLAUSES:
        found = clause(cond, facts)
        if found is None:
            return None
        evidence += found
    return evidence


def _fits_patient(cond: Condition, facts: Facts) -> bool:
    if cond.age_min is not None and facts.age_years < cond.age_min:
        return False
    if cond.age_under is not None and facts.age_years >= cond.age_under:
        return False
    # A sex the patient did not give (unknown, or other) never rules a condition out.
    unstated = facts.sex not in (Sex.MALE, Sex.FEMALE)
    return cond.sex is None or facts.sex.value == cond.sex or unstated


# Each clause of a condition: None when it fails, else its evidence (empty when the clause
# is not used, or holds without evidence, as an absence does).
def _pregnancy(cond: Condition, facts: Facts) -> list[Evidence] | None:
    if not cond.pregnant:
        return []
    return facts.present["pregnant"][:1] if facts.pregnant else None


def _all_of(cond: Condition, facts: Facts) -> list[Evidence] | None:
    if not all(c in facts.present for c in cond.all):
        return None
    return [facts.present[c][0] for c in cond.all]


def _any_of(cond: Condition, facts: Facts) -> list[Evidence] | None:
    if not cond.any:
        return []
    found = [facts.present[c][0] for c in cond.any if c in facts.present]
    return found or None


def _none_of(cond: Condition, facts: Facts) -> list[Evidence] | None:
    return None if any(c in facts.present for c in cond.none) else []


def _all_vitals(cond: Condition, facts: Facts) -> list[Evidence] | None:
    hits = [_holds(pred, facts) for pred in cond.vitals]
    if any(h is None for h in hits):
        return None
    return [h for h in hits if h is not None]


def _any_vital(cond: Condition, facts: Facts) -> list[Evidence] | None:
    if not cond.vitals_any:
        return []
    hits = [h for h in (_holds(p, facts) for p in cond.vitals_any) if h is not None]
    return hits or None


def _duration(cond: Condition, facts: Facts) -> list[Evidence] | None:
    if cond.days_min is None:
        return []
    long_enough = facts.duration_days is not None and facts.duration_days >= cond.days_min
    return [] if long_enough else None


def _score(cond: Condition, facts: Facts) -> list[Evidence] | None:
    if not cond.score_min:
        return []
    hits: list[Evidence] = []
    for item in cond.score_of:
        if isinstance(item, str):
            if item in facts.present:
                hits.append(facts.present[item][0])
        elif (hit := _holds(item, facts)) is not None:
            hits.append(hit)
    return hits if len(hits) >= cond.score_min else None


_CLAUSES: tuple[Callable[[Condition, Facts], list[Evidence] | None], ...] = (
    _pregnancy,
    _all_of,
    _any_of,
    _none_of,
    _all_vitals,
    _any_vital,
    _duration,
    _score,
)


def _present(complaint: Complaint, facts: Facts) -> bool:
    if complaint.always:
        return True
    if not any(c in facts.present for c in complaint.concepts):
        return False
    return complaint.requires is None or evaluate(complaint.requires, facts) is not None


def _flag_urgency(flag: Flag) -> Urgency:
    return LEVEL_URGENCY[flag.level]


def _could_raise(
    rules: RuleSet, question: Question, complaint: Complaint, current: Urgency
) -> bool:
    """Whether some flag of the complaint (or of the always-checked vital signs), above the
    current urgency, depends on the answer."""
    settles = question.settles()
    always = [f for c in rules.complaints if c.always for f in c.flags]
    for flag in (*complaint.flags, *always):
        if RANK[_flag_urgency(flag)] <= RANK[current]:
            continue
        needs = flag.when.concepts() | {f"vital:{v}" for v in flag.when.variables()}
        if settles & needs:
            return True
    return False


def _known(question: Question, facts: Facts) -> bool:
    if question.id in facts.answered:
        return True
    return any(
        s in facts.present or s in facts.absent or s.removeprefix("vital:") in facts.values
        for s in question.settles()
    )


def _questions(
    rules: RuleSet, complaints: Iterable[Complaint], facts: Facts, current: Urgency
) -> tuple[Question, ...]:
    if current == Urgency.EMERGENCY:
        return ()  # act now; questions would only delay the call
    out: list[Question] = []
    for complaint in complaints:
        for q in complaint.questions:
            if q.sex and facts.sex.value not in (q.sex, Sex.OTHER.value, Sex.UNKNOWN.value):
                continue
            if _known(q, facts) or not _could_raise(rules, q, complaint, current):
                continue
            out.append(q)
    return tuple(out[:MAX_QUESTIONS])


def _findings(rules: RuleSet, facts: Facts) -> tuple[Coding, ...]:
    codes: dict[str, Coding] = {}
    for concept_id in facts.present:
        concept = rules.concepts.get(concept_id)
        if concept is not None and concept.snomed:
            codes.setdefault(
                concept.snomed, Coding(system=SNOMED, code=concept.snomed, display=concept.display)
            )
    return tuple(codes.values())


def decide(rules: RuleSet, facts: Facts) -> Assessment:
    """Apply the rule set to the facts."""
    present = [c for c in rules.complaints if _present(c, facts)]
    fired: list[FiredFlag] = []
    # (urgency, order, complaint) of everything that contributes; ties go to rule order.
    contributions: list[tuple[Urgency, int, Complaint]] = []
    for order, complaint in enumerate(present):
        if not complaint.always:
            contributions.append((Urgency(complaint.default), order, complaint))
        for flag in complaint.flags:
            evidence = evaluate(flag.when, facts)
            if evidence is None:
                continue
            # The complaint's own mention is part of every flag's evidence.
            evidence = [facts.present[c][0] for c in complaint.concepts if c in facts.present] + [
                e
                for e in evidence
                if e not in (facts.present.get(c, [None])[0] for c in complaint.concepts)
            ]
            fired.append(
                FiredFlag(
                    flag.id, flag.level, complaint.id, flag.text, flag.source, tuple(evidence)
                )
            )
            contributions.append((_flag_urgency(flag), order, complaint))
    recognised = [c for c in present if not c.always]
    if not contributions:
        advice = rules.advice[NOT_UNDERSTOOD]
        return Assessment(
            urgency=Urgency.URGENT,
            flags=(),
            findings=_findings(rules, facts),
            complaints=(),
            recommended_pool="urgent-nurses",
            advice=advice,
            questions=(),
            rule_set_version=rules.version,
            understood=False,
        )
    top_urgency, _, top = max(contributions, key=lambda c: (RANK[c[0]], -c[1]))
    understood = bool(recognised)
    if not understood and RANK[top_urgency] < RANK[Urgency.URGENT]:
        top_urgency = Urgency.URGENT  # only numbers were understood: a nurse looks today
    advice = _advice(rules, top, top_urgency, present)
    pool = (
        "emergency"
        if top_urgency == Urgency.EMERGENCY and top.pool != "mental-health"
        else top.pool
    )
    if top_urgency == Urgency.URGENT and pool == "care-team":
        pool = "urgent-nurses"
    return Assessment(
        urgency=top_urgency,
        flags=tuple(fired),
        findings=_findings(rules, facts),
        complaints=tuple(c.id for c in recognised),
        recommended_pool=pool,
        advice=advice,
        questions=_questions(rules, recognised, facts, top_urgency),
        rule_set_version=rules.version,
        understood=understood,
    )


def _advice(rules: RuleSet, top: Complaint, urgency: Urgency, present: list[Complaint]) -> str:
    crisis = [c for c in present if c.advice_key]
    if top.advice_key:
        return rules.advice[top.advice_key]
    base = rules.advice[urgency.value]
    if (
        top.advice
        and urgency in (Urgency.SELF_CARE, Urgency.ROUTINE)
        and urgency.value == top.default
    ):
        base = top.advice
    if crisis:
        key = crisis[0].advice_key or ""
        base = f"{base} {rules.advice[key]}"
    return base


def apply_answer(rules: RuleSet, facts: Facts, question: Question, value: object) -> None:
    """Fold a structured answer into the facts (validated by the caller against the kind)."""
    evidence = Evidence(text=f"{question.id}={value}", source="answer")
    facts.answered.add(question.id)
    if question.kind == "yesno" and question.concept:
        if value is True:
            facts.add(question.concept, evidence)
        else:
            facts.absent.add(question.concept)
    elif question.kind == "number" and question.vital and isinstance(value, int | float):
        normalised = normalise_value(question.vital, float(value))
        if normalised is not None:
            facts.values[question.vital] = Value(normalised, evidence)
    elif question.kind == "choice":
        for choice in question.choices:
            if choice.concept is None:
                continue
            if choice.value == value:
                facts.add(choice.concept, evidence)
            elif choice.concept not in facts.present:
                facts.absent.add(choice.concept)


def more_urgent(a: Urgency, b: Urgency) -> Urgency:
    """The more urgent of two urgencies."""
    return a if RANK[a] >= RANK[b] else b


def summary(assessment: Assessment, age: float, sex: Sex) -> str:
    """A short summary for the care team (flags and findings, not the patient's words)."""
    flags = ", ".join(f.text for f in assessment.flags if f.level in ("red", "amber"))
    found = ", ".join(f.display or f.code for f in assessment.findings) or "no coded findings"
    head = f"{assessment.urgency.value}: {flags or found}"
    age_text = f"{age:g}y" if age >= 1 else f"{round(age * 12)}mo"
    line = f"{head}; findings: {found}; {age_text} {sex.value}; rules {assessment.rule_set_version}"
    return line[:2000]


def raise_urgency(
    rules: RuleSet, assessment: Assessment, urgency: Urgency, reason: str
) -> Assessment:
    """The assessment with its urgency raised to `urgency` by a reviewer (never lowered)."""
    if RANK[urgency] <= RANK[assessment.urgency]:
        return assessment
    level = (
        "red"
        if urgency == Urgency.EMERGENCY
        else "amber"
        if urgency == Urgency.URGENT
        else "routine"
    )
    flag = FiredFlag(
        id="model-review",
        level=level,
        complaint="model-review",
        text=f"Raised by the language-model review: {reason}"[:500],
        source="model",
        evidence=(Evidence(text="model review", source="model"),),
    )
    pool = "emergency" if urgency == Urgency.EMERGENCY else "urgent-nurses"
    if urgency == Urgency.ROUTINE:
        pool = assessment.recommended_pool
    return replace(
        assessment,
        urgency=urgency,
        flags=(*assessment.flags, flag),
        recommended_pool=pool,
        advice=rules.advice[urgency.value],
        questions=() if urgency == Urgency.EMERGENCY else assessment.questions,
    )
