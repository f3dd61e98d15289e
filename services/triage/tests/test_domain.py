"""The rule engine without I/O: red flags, negation and context, numbers and thresholds,
safety rules, follow-up questions, the rule file's validation and the model-review merge."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from contracts.triage import Urgency
from triage import ruleset
from triage.app import engine_for
from triage.domain import Sex, raise_urgency, summary
from triage.engine import Engine, Patient, UnknownQuestion
from triage.numbers import read_numbers

E, U, R, S = Urgency.EMERGENCY, Urgency.URGENT, Urgency.ROUTINE, Urgency.SELF_CARE


@pytest.fixture(scope="module")
def engine() -> Engine:
    return engine_for("")


def _assess(engine: Engine, age: int, sex: str, text: str, **kw: Any) -> Any:
    return engine.assess(Patient(age, Sex(sex)), text, kw or None)


@pytest.mark.parametrize(
    ("age", "sex", "text", "urgency", "flag"),
    [
        (60, "male", "Crushing chest pain since an hour, sweating", E, "chest-pain-acs-features"),
        (22, "male", "some chest tightness after the gym", U, None),
        (70, "male", "My wife says my face is drooping and my speech is slurred", E, "stroke-fast"),
        (35, "female", "I am 10 weeks pregnant and started bleeding", U, "pregnancy-bleeding-any"),
        (35, "female", "pregnant and bleeding heavily with cramps", E, "pregnancy-bleeding-heavy"),
        (40, "male", "Fever of 39.5 C for five days", U, "fever-long"),
        (40, "male", "had a mild fever yesterday", S, None),
        (30, "female", "runny nose and sneezing", S, None),
        (45, "female", "swollen lips and tongue after eating peanuts", E, "anaphylaxis"),
        (28, "male", "my left testicle suddenly became very painful", E, "torsion"),
        (50, "male", "I have a fever and I'm on chemotherapy", E, "fever-neutropenic"),
        (30, "female", "burn on my hand from the oven, it has blistered", U, "burn-blisters"),
        (8, "male", "dog bite on his hand, it broke the skin", U, "bite-high-risk"),
        (25, "female", "my blood sugar is 2.5 and I am shaky", E, "hypoglycaemia-level-2"),
        (25, "female", "type 1 diabetic, sugar is high and I keep vomiting", E, "dka"),
        (67, "male", "headache, BP 200/125", U, "hypertensive-urgency"),
        (67, "male", "severe headache and confused, BP 200/125", E, "hypertensive-emergency"),
        (35, "male", "cough, temp 38.5, HR 110, RR 24", U, "sirs"),
        (70, "female", "burning when I pee, confused, RR 24, BP 95/60", E, "qsofa"),
        (30, "male", "Sats 89% and coughing", E, "hypoxia"),
    ],
)
def test_complaints_get_the_expected_urgency(
    engine: Engine, age: int, sex: str, text: str, urgency: Urgency, flag: str | None
) -> None:
    result = _assess(engine, age, sex, text)
    assert result.urgency == urgency, (result.flags, result.complaints)
    if flag:
        assert flag in {f.id for f in result.flags}


@pytest.mark.parametrize(
    ("text", "urgency"),
    [
        ("No fever but I cannot breathe", E),  # negation ends at "but"
        ("I have never had chest pain like this before", E),  # not a negation
        ("No chest pain, just a cough", S),
        ("denies chest pain, shortness of breath or fever; mild sore throat", S),
        ("If I get chest pain, should I go to the emergency room?", U),  # hypothetical only
        ("My father died of a stroke; I have a runny nose", S),  # family history
        ("My son has a fever and a rash that does not fade under a glass", E),  # parent writes
        ("I had chest pain years ago; today I need a repeat prescription", R),  # history
        ("I no longer have a fever, just a runny nose", S),
        ("Chest pain this morning that went away after 20 minutes", E),  # settled: still seen
        # A comma ends a patient's negation unless the list says "or": "no X, <emergency>"
        # must not deny the emergency.
        ("no fever, crushing chest pain spreading to my left arm", E),
        ("I don't have a headache, my face is drooping and my speech is slurred", E),
        ("I have no appetite, vomiting blood since this morning", E),
        ("denies fever, severe headache worst of my life", E),
        ("no chest pain, no shortness of breath, mild cough", S),
        ("fever, no rash, stiff neck", E),
    ],
)
def test_negation_and_context(engine: Engine, text: str, urgency: Urgency) -> None:
    assert _assess(engine, 45, "male", text).urgency == urgency


@pytest.mark.parametrize(
    "text",
    [
        "I cant breathe",
        "I can't breath",
        "i cant breth",
        "chest pian and sweating",
        "I want to kil myself",
    ],
)
def test_typos_are_tolerated(engine: Engine, text: str) -> None:
    assert _assess(engine, 55, "female", text).urgency == E


def test_third_person_clinical_vignettes(engine: Engine) -> None:
    text = (
        "A 62-year-old man presents with central chest pressure radiating to the jaw, diaphoretic."
    )
    assert _assess(engine, 62, "male", text).urgency == E
    infant = "A 6-week-old girl with a temperature of 38.3 C, feeding less."
    result = _assess(engine, 30, "female", infant)  # the parent's account: the text's age wins
    assert result.urgency == E
    assert "infant-fever-under-3m" in {f.id for f in result.flags}


def test_unknown_text_is_urgent_and_not_understood(engine: Engine) -> None:
    result = _assess(engine, 40, "unknown", "something is not quite right, hard to say")
    assert result.urgency == U
    assert not result.understood


def test_sex_other_or_unknown_never_disables_a_rule(engine: Engine) -> None:
    text = "I am pregnant and have severe stomach pain"
    for sex in ("female", "other", "unknown"):
        assert _assess(engine, 30, sex, text).urgency == E, sex


def test_age_raises_urgency(engine: Engine) -> None:
    assert _assess(engine, 30, "female", "I had a fall and hit my head").urgency == R
    assert _assess(engine, 82, "female", "I had a fall and hit my head").urgency == E


def test_questions_are_only_those_that_could_raise_the_urgency(engine: Engine) -> None:
    result = _assess(engine, 40, "female", "I have a headache")
    asked = [q.id for q in result.questions]
    assert "ha-sudden" in asked
    answered = engine.assess(Patient(40, Sex.FEMALE), "I have a headache", {"ha-sudden": False})
    assert "ha-sudden" not in [q.id for q in answered.questions]
    assert _assess(engine, 40, "female", "I can't breathe").questions == ()


def test_answers_are_validated_against_the_question_kind(engine: Engine) -> None:
    with pytest.raises(UnknownQuestion):
        engine.assess(Patient(40, Sex.MALE), "headache", {"nope": True})
    with pytest.raises(UnknownQuestion):
        engine.assess(Patient(40, Sex.MALE), "fever", {"fev-temp": "hot"})
    result = engine.assess(
        Patient(0, Sex.MALE, age_months=1), "baby has a fever", {"fev-temp": 100.9}
    )
    assert result.urgency == E  # 100.9 F = 38.3 C under 3 months


@pytest.mark.parametrize(
    ("text", "variable", "value"),
    [
        ("temp 39.5C", "temp_c", 39.5),
        ("fever of 102F", "temp_c", 38.9),
        ("temperature 101.3", "temp_c", 38.5),
        ("HR 120", "hr", 120),
        ("pulse 48 bpm", "hr", 48),
        ("BP 85/50", "sbp", 85),
        ("blood pressure 180/120", "dbp", 120),
        ("RR 28", "rr", 28),
        ("sats 91%", "spo2", 91),
        ("blood sugar 2.8", "glucose", 2.8),
        ("glucose 450 mg/dL", "glucose", 25.0),
        ("took 30 paracetamol tablets", "tablets", 30),
        ("32 weeks pregnant", "gestation_weeks", 32),
    ],
)
def test_numbers_are_parsed_and_normalised(text: str, variable: str, value: float) -> None:
    assert read_numbers(text).measures[variable].value == pytest.approx(value)


def test_age_and_duration_are_parsed() -> None:
    assert read_numbers("my 3-month-old son").age_years == pytest.approx(0.25)
    assert read_numbers("a 60-year-old woman").age_years == 60
    assert read_numbers("cough for two weeks").duration_days == 14
    assert read_numbers("temperature 60").measures == {}  # implausible: dropped


def test_evidence_spans_point_into_the_text(engine: Engine) -> None:
    text = "Since this morning I have crushing chest pain going down my left arm"
    result = _assess(engine, 58, "male", text)
    red = next(f for f in result.flags if f.id == "chest-pain-acs-features")
    assert {text[e.start : e.end] for e in red.evidence if e.start is not None} >= {
        "crushing",
        "chest pain",
        "down my left arm",
    }


def test_model_review_only_raises(engine: Engine) -> None:
    rules = engine.rules
    base = _assess(engine, 30, "female", "runny nose")
    assert raise_urgency(rules, base, S, "fine").urgency == S
    raised = raise_urgency(rules, base, U, "worried")
    assert raised.urgency == U
    assert raised.flags[-1].id == "model-review"
    emergency = _assess(engine, 30, "female", "I can't breathe")
    assert raise_urgency(rules, emergency, S, "it's nothing").urgency == E


def test_summary_carries_flags_not_the_patients_words(engine: Engine) -> None:
    text = "my neighbour Mrs Smith says my chest pain is nothing"
    result = _assess(engine, 50, "female", text)
    line = summary(result, 50, Sex.FEMALE)
    assert "Smith" not in line
    assert "Chest pain" in line
    assert result.rule_set_version in line


def test_rule_file_has_the_required_breadth_and_citations() -> None:
    rules = ruleset.default_rules()
    assert len([c for c in rules.complaints if not c.always]) >= 60
    assert all(c.sources for c in rules.complaints)
    assert all(f.source in rules.sources for c in rules.complaints for f in c.flags)


def _document() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ruleset.KNOWLEDGE / "rules.yaml").read_text())
    doc["concepts"] = yaml.safe_load((ruleset.KNOWLEDGE / "concepts.yaml").read_text())
    return doc


def test_invalid_rule_files_are_refused() -> None:
    doc = _document()
    bad_level = copy.deepcopy(doc)
    bad_level["complaints"][1]["flags"][0]["level"] = "purple"
    with pytest.raises(ruleset.RuleSetError, match="flags"):
        ruleset.parse(bad_level)
    dangling = copy.deepcopy(doc)
    dangling["complaints"][1]["flags"][0]["when"] = {"any": ["no-such-concept"]}
    with pytest.raises(ruleset.RuleSetError, match="no-such-concept"):
        ruleset.parse(dangling)
    bad_vital = copy.deepcopy(doc)
    bad_vital["complaints"][0]["flags"][0]["when"] = {"vitals": ["spo2 << 92"]}
    with pytest.raises(ruleset.RuleSetError):
        ruleset.parse(bad_vital)
