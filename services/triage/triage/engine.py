"""The rule engine: reads a text (NLP and numbers), builds the facts, applies the rules.

One `Engine` per process: it holds the rule set and the NLP pipeline (about a second to
build), and is then pure and thread-safe to call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from triage.domain import Assessment, Evidence, Facts, Sex, Value, apply_answer, decide
from triage.numbers import read_numbers
from triage.reader import Mention, Reader
from triage.ruleset import RuleSet

Answer = bool | int | float | str


class UnknownQuestion(ValueError):
    """An answer names a question the rule set does not have, or has the wrong kind."""


@dataclass(frozen=True)
class Patient:
    """Who the complaint is about, as the caller states it."""

    age: int
    sex: Sex
    age_months: int | None = None

    @property
    def age_years(self) -> float:
        """Age in years, months counting for infants."""
        if self.age_months is not None and self.age <= 2:
            return self.age_months / 12.0
        return float(self.age)


class Engine:
    """Rule set + reader; `assess` is the whole triage of one text."""

    def __init__(self, rules: RuleSet, reader: Reader | None = None) -> None:
        self.rules = rules
        self.reader = reader or Reader(rules)
        # Concepts whose complaint counts a conditional or past mention too ("thinking of
        # ending it all" is a crisis whatever the grammar).
        self._tolerant: dict[str, frozenset[str]] = {}
        for complaint in rules.complaints:
            for concept in complaint.concepts:
                self._tolerant[concept] = self._tolerant.get(concept, frozenset()) | (
                    complaint.ignore_context
                )

    def _counts(self, mention: Mention) -> bool:
        if mention.asserted:
            return True
        if mention.negated or mention.family_history:
            return False
        tolerated = self._tolerant.get(mention.concept, frozenset())
        return (not mention.hypothetical or "hypothetical" in tolerated) and (
            not mention.historical or "historical" in tolerated
        )

    def facts(self, patient: Patient, text: str) -> Facts:
        """What the text says, with the patient's stated age and sex."""
        numbers = read_numbers(text)
        age = patient.age_years
        # A stated age in the text is about the person the complaint concerns (a parent
        # writing about a baby), so it wins over the account holder's age.
        if numbers.age_years is not None:
            age = numbers.age_years
        facts = Facts(age_years=age, sex=patient.sex, duration_days=numbers.duration_days)
        for mention in self.reader.read(text):
            evidence = Evidence(mention.text, mention.start, mention.end)
            if self._counts(mention):
                facts.add(mention.concept, evidence)
            elif mention.negated and mention.concept not in facts.present:
                facts.absent.add(mention.concept)
        for measure in numbers.measures.values():
            facts.values[measure.variable] = Value(
                measure.value, Evidence(measure.text, measure.start, measure.end)
            )
        return facts

    def answer(self, facts: Facts, answers: Mapping[str, Answer]) -> None:
        """Fold structured answers into the facts; unknown questions are refused."""
        for question_id, value in answers.items():
            question = self.rules.question(question_id)
            if question is None:
                raise UnknownQuestion(f"unknown question {question_id!r}")
            if question.kind == "yesno" and not isinstance(value, bool):
                raise UnknownQuestion(f"{question_id}: answer yes (true) or no (false)")
            if question.kind == "number" and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise UnknownQuestion(f"{question_id}: answer with a number")
            if question.kind == "choice" and value not in {c.value for c in question.choices}:
                raise UnknownQuestion(f"{question_id}: answer one of the offered choices")
            apply_answer(self.rules, facts, question, value)

    def assess(
        self,
        patient: Patient,
        text: str,
        answers: Mapping[str, Answer] | None = None,
        extra_concepts: Iterable[tuple[str, Evidence]] = (),
    ) -> Assessment:
        """The triage of `text` (and any answers) for `patient`."""
        facts = self.facts(patient, text)
        if answers:
            self.answer(facts, answers)
        for concept, evidence in extra_concepts:
            if concept in self.rules.concepts:
                facts.add(concept, evidence)
        return decide(self.rules, facts)
