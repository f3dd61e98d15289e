"""The triage knowledge base as typed, validated data: concepts, complaints, flags, questions.

The rules live in `knowledge/rules.yaml` and `knowledge/concepts.yaml` (clinicians edit
those, not code); they are checked against `knowledge/schema.json` and for dangling
references when loaded, so a broken file stops the service at start-up rather than
silently mis-triaging a patient.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import yaml

KNOWLEDGE = Path(__file__).resolve().parent / "knowledge"

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class RuleSetError(ValueError):
    """The rule files are invalid (schema or references)."""


@dataclass(frozen=True)
class Predicate:
    """A threshold on a measured value, e.g. `spo2 < 92`."""

    variable: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Predicate:
        """Parse `"<variable> <op> <number>"` (the schema guarantees the shape)."""
        variable, op, value = text.split()
        return cls(variable, op, float(value))

    def holds(self, measured: float) -> bool:
        """Whether a measured value meets the threshold."""
        return _OPS[self.op](measured, self.value)

    def __str__(self) -> str:
        return f"{self.variable} {self.op} {self.value:g}"


@dataclass(frozen=True)
class Condition:
    """When a flag applies; every part that is set must hold (see rules.yaml)."""

    any: tuple[str, ...] = ()
    all: tuple[str, ...] = ()
    none: tuple[str, ...] = ()
    age_min: float | None = None
    age_under: float | None = None
    sex: str | None = None
    pregnant: bool = False
    vitals: tuple[Predicate, ...] = ()
    vitals_any: tuple[Predicate, ...] = ()
    days_min: float | None = None
    score_min: int = 0
    score_of: tuple[str | Predicate, ...] = ()

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Condition:
        """A condition from its YAML form."""
        score = raw.get("score") or {}
        items: list[str | Predicate] = []
        for item in score.get("of", []):
            items.append(item[8:] if item.startswith("concept:") else Predicate.parse(item))
        return cls(
            any=tuple(raw.get("any", ())),
            all=tuple(raw.get("all", ())),
            none=tuple(raw.get("not", ())),
            age_min=raw.get("age_min"),
            age_under=raw.get("age_under"),
            sex=raw.get("sex"),
            pregnant=bool(raw.get("pregnant", False)),
            vitals=tuple(Predicate.parse(v) for v in raw.get("vitals", ())),
            vitals_any=tuple(Predicate.parse(v) for v in raw.get("vitals_any", ())),
            days_min=raw.get("days_min"),
            score_min=int(score.get("min", 0)),
            score_of=tuple(items),
        )

    def concepts(self) -> set[str]:
        """Every concept this condition refers to."""
        named = {c for c in self.score_of if isinstance(c, str)}
        return set(self.any) | set(self.all) | set(self.none) | named

    def variables(self) -> set[str]:
        """Every measured value this condition refers to."""
        preds = [
            *self.vitals,
            *self.vitals_any,
            *(p for p in self.score_of if not isinstance(p, str)),
        ]
        return {p.variable for p in preds if isinstance(p, Predicate)}


@dataclass(frozen=True)
class Concept:
    """A finding and the phrases that express it."""

    id: str
    display: str
    terms: tuple[str, ...]
    snomed: str | None = None
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Flag:
    """A red (emergency), amber (urgent) or routine flag of a complaint."""

    id: str
    level: str
    text: str
    when: Condition
    source: str


@dataclass(frozen=True)
class Choice:
    """One option of a multiple-choice question."""

    value: str
    label: str
    concept: str | None = None


@dataclass(frozen=True)
class Question:
    """A follow-up question whose answer settles a concept or a measured value."""

    id: str
    text: str
    kind: str
    complaint: str
    concept: str | None = None
    vital: str | None = None
    sex: str | None = None
    choices: tuple[Choice, ...] = ()

    def settles(self) -> set[str]:
        """The concepts (or `vital:<name>`) an answer to this question decides."""
        out = {self.concept} if self.concept else set()
        out |= {c.concept for c in self.choices if c.concept}
        if self.vital:
            out.add(f"vital:{self.vital}")
        return out


@dataclass(frozen=True)
class Complaint:
    """A presenting complaint: how to recognise it, its flags, its disposition otherwise."""

    id: str
    name: str
    concepts: tuple[str, ...]
    default: str
    pool: str
    sources: tuple[str, ...]
    flags: tuple[Flag, ...]
    questions: tuple[Question, ...] = ()
    always: bool = False
    requires: Condition | None = None
    advice: str | None = None
    advice_key: str | None = None
    ignore_context: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class RuleSet:
    """The whole knowledge base, in the order the file gives it."""

    version: str
    concepts: Mapping[str, Concept]
    complaints: tuple[Complaint, ...]
    advice: Mapping[str, str]
    sources: Mapping[str, Mapping[str, str]]

    def question(self, question_id: str) -> Question | None:
        """The question with this id, if any complaint asks it."""
        for complaint in self.complaints:
            for q in complaint.questions:
                if q.id == question_id:
                    return q
        return None


def _parse_complaint(raw: Mapping[str, Any]) -> Complaint:
    cid = raw["id"]
    questions = tuple(
        Question(
            id=q["id"],
            text=q["text"],
            kind=q["kind"],
            complaint=cid,
            concept=q.get("concept"),
            vital=q.get("vital"),
            sex=q.get("sex"),
            choices=tuple(
                Choice(c["value"], c["label"], c.get("concept")) for c in q.get("choices", ())
            ),
        )
        for q in raw.get("questions", ())
    )
    return Complaint(
        id=cid,
        name=raw["name"],
        concepts=tuple(raw["concepts"]),
        default=raw["default"],
        pool=raw["pool"],
        sources=tuple(raw["sources"]),
        flags=tuple(
            Flag(f["id"], f["level"], f["text"], Condition.parse(f["when"]), f["source"])
            for f in raw["flags"]
        ),
        questions=questions,
        always=bool(raw.get("always", False)),
        requires=Condition.parse(raw["requires"]) if "requires" in raw else None,
        advice=raw.get("advice"),
        advice_key=raw.get("advice_key"),
        ignore_context=frozenset(raw.get("ignore_context", ())),
    )


def _check_references(rules: RuleSet) -> list[str]:
    problems: list[str] = []
    seen_flags: set[str] = set()
    seen_questions: set[str] = set()
    for c in rules.complaints:
        refs = set(c.concepts) | (c.requires.concepts() if c.requires else set())
        for f in c.flags:
            refs |= f.when.concepts()
            if f.source not in rules.sources:
                problems.append(f"{c.id}/{f.id}: unknown source {f.source}")
            if f.id in seen_flags:
                problems.append(f"{c.id}/{f.id}: duplicate flag id")
            seen_flags.add(f.id)
        for q in c.questions:
            refs |= {s for s in q.settles() if not s.startswith("vital:")}
            if q.id in seen_questions:
                problems.append(f"{c.id}/{q.id}: duplicate question id")
            seen_questions.add(q.id)
        problems += [f"{c.id}: unknown source {s}" for s in c.sources if s not in rules.sources]
        problems += [f"{c.id}: unknown concept {r}" for r in sorted(refs - set(rules.concepts))]
        if c.advice_key and c.advice_key not in rules.advice:
            problems.append(f"{c.id}: unknown advice {c.advice_key}")
    return problems


def parse(document: Mapping[str, Any]) -> RuleSet:
    """Validate a rule document (rules plus `concepts`) and build the rule set."""
    schema = json.loads((KNOWLEDGE / "schema.json").read_text(encoding="utf-8"))
    try:
        jsonschema.validate(document, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise RuleSetError(f"rules invalid at {where or '<root>'}: {exc.message}") from exc
    concepts = {
        cid: Concept(
            id=cid,
            display=c["display"],
            terms=tuple(c["terms"]),
            snomed=c.get("snomed"),
            exclude=tuple(c.get("exclude", ())),
        )
        for cid, c in document["concepts"].items()
    }
    rules = RuleSet(
        version=document["version"],
        concepts=concepts,
        complaints=tuple(_parse_complaint(c) for c in document["complaints"]),
        advice=dict(document["advice"]),
        sources=dict(document["sources"]),
    )
    problems = _check_references(rules)
    if problems:
        raise RuleSetError("; ".join(problems))
    return rules


def load(directory: Path = KNOWLEDGE) -> RuleSet:
    """Read and validate `rules.yaml` and `concepts.yaml` from `directory`."""
    # The C loader when PyYAML has it (a safe loader either way): start-up reads a few
    # thousand phrases.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    def read(name: str) -> Any:
        return yaml.load((directory / name).read_text(encoding="utf-8"), Loader=loader)  # noqa: S506

    document = read("rules.yaml")
    document["concepts"] = read("concepts.yaml")
    return parse(document)


@cache
def default_rules() -> RuleSet:
    """The packaged rule set, loaded once per process."""
    return load()
