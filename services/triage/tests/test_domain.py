"""The triage rule set."""

from __future__ import annotations

import pytest

from contracts.triage import Urgency
from triage.domain import RULE_SET_VERSION, Sex, assess, summary


@pytest.mark.parametrize(
    ("age", "sex", "text", "urgency", "rule"),
    [
        (
            48,
            Sex.FEMALE,
            "Crushing chest pain since an hour, sweating",
            Urgency.EMERGENCY,
            "chest-pain",
        ),
        (22, Sex.MALE, "some chest tightness after the gym", Urgency.URGENT, "chest-pain-young"),
        (
            70,
            Sex.MALE,
            "My wife says my face is drooping and I have slurred speech",
            Urgency.EMERGENCY,
            "stroke-signs",
        ),
        (
            35,
            Sex.FEMALE,
            "I am pregnant and started bleeding",
            Urgency.URGENT,
            "pregnancy-bleeding",
        ),
        (35, Sex.MALE, "bleeding gums when brushing", Urgency.ROUTINE, None),
        (0, Sex.FEMALE, "baby has a temperature", Urgency.URGENT, "infant-fever"),
        (40, Sex.MALE, "Fever of 39.5 C for three days", Urgency.URGENT, "high-fever"),
        (40, Sex.MALE, "had a mild fever yesterday", Urgency.ROUTINE, None),
        (30, Sex.OTHER, "Headache and a cough", Urgency.ROUTINE, "headache"),
        (30, Sex.FEMALE, "runny nose and sneezing", Urgency.SELF_CARE, "cold"),
        (30, Sex.FEMALE, "I feel a bit off", Urgency.ROUTINE, None),
    ],
)
def test_complaints_get_the_expected_urgency(
    age: int, sex: Sex, text: str, urgency: Urgency, rule: str | None
) -> None:
    result = assess(age, sex, text)
    assert result.urgency == urgency
    if rule:
        assert rule in result.matched_rules
    else:
        assert result.matched_rules == ()


def test_negated_red_flag_does_not_match() -> None:
    result = assess(55, Sex.MALE, "No chest pain, just a cough")
    assert result.urgency == Urgency.ROUTINE
    assert "chest-pain" not in result.matched_rules


def test_the_most_urgent_rule_wins_and_all_findings_are_kept() -> None:
    result = assess(60, Sex.FEMALE, "cough, and now chest pressure")
    assert result.urgency == Urgency.EMERGENCY
    assert {f.code for f in result.findings} == {"29857009", "49727002"}
    assert result.recommended_pool == "emergency"


def test_summary_carries_findings_not_the_patients_words() -> None:
    text = "my neighbour Mrs Smith says my chest pain is nothing"
    result = assess(50, Sex.FEMALE, text)
    line = summary(result, 50, Sex.FEMALE)
    assert "Smith" not in line
    assert "Chest pain" in line
    assert RULE_SET_VERSION in line
