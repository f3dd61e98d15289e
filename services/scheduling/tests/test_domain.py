"""Scheduling's pure rules: appointment states, clinic rules, intake validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.appointment import AppointmentStatus as S
from contracts.base import Coding
from contracts.intake import IntakeAnswer
from scheduling.domain import (
    ClinicRules,
    can_transition,
    check_booking,
    check_change,
    validate_answers,
    with_offered_codings,
)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.PENDING, S.BOOKED),
        (S.PENDING, S.REJECTED),
        (S.BOOKED, S.CANCELLED),
        (S.BOOKED, S.FULFILLED),
        (S.ARRIVED, S.FULFILLED),
    ],
)
def test_allowed_transitions(current: S, new: S) -> None:
    assert can_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.CANCELLED, S.BOOKED),
        (S.FULFILLED, S.CANCELLED),
        (S.REJECTED, S.BOOKED),
        (S.BOOKED, S.PENDING),
        (S.BOOKED, S.BOOKED),
    ],
)
def test_terminal_states_and_going_back_are_refused(current: S, new: S) -> None:
    assert not can_transition(current, new)


# -- clinic rules ---------------------------------------------------------------------------

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
RULES = ClinicRules(change_cutoff_hours=24, booking_horizon_days=30, max_open_bookings=2)


def test_no_cancel_or_move_within_the_cutoff_and_the_answer_says_what_to_do() -> None:
    broken = check_change(RULES, NOW + timedelta(hours=23), NOW, "cancelled")
    assert broken is not None and broken.rule == "change-cutoff" and broken.status == 409
    assert "less than 24 hours" in broken.detail and "call" in broken.detail
    assert check_change(RULES, NOW + timedelta(hours=25), NOW, "moved") is None


@pytest.mark.parametrize(
    ("start", "open_bookings", "rule"),
    [
        (NOW - timedelta(minutes=1), 0, "past"),
        (NOW + timedelta(days=31), 0, "horizon"),
        (NOW + timedelta(days=2), 2, "max-open-bookings"),
        (NOW + timedelta(days=2), 1, None),
    ],
)
def test_booking_rules(start: datetime, open_bookings: int, rule: str | None) -> None:
    broken = check_booking(RULES, start, NOW, open_bookings)
    assert (broken.rule if broken else None) == rule


# -- intake validation ----------------------------------------------------------------------

FORM: dict[str, Any] = {
    "resourceType": "Questionnaire",
    "item": [
        {"linkId": "reason", "type": "text", "required": True},
        {"linkId": "pain", "type": "integer"},
        {"linkId": "smoker", "type": "boolean", "required": True},
        {
            "linkId": "packs",
            "type": "integer",
            "required": True,
            "enableWhen": [{"question": "smoker", "operator": "=", "answerBoolean": True}],
        },
        {
            "linkId": "details",
            "type": "group",
            "item": [
                {
                    "linkId": "duration",
                    "type": "choice",
                    "answerOption": [
                        {"valueCoding": {"system": "urn:d", "code": "days", "display": "Days"}},
                        {"valueCoding": {"code": "weeks"}},
                    ],
                },
                {"linkId": "symptom", "type": "string", "repeats": True, "maxLength": 20},
                {"linkId": "note", "type": "display"},
            ],
        },
    ],
}


def _a(link_id: str, **value: Any) -> IntakeAnswer:
    return IntakeAnswer(link_id=link_id, **value)


BASE = [_a("reason", value_string="Cough"), _a("smoker", value_boolean=False)]


def _problems(answers: list[IntakeAnswer], complete: bool = True) -> list[tuple[str, str]]:
    return [(p.link_id, p.problem) for p in validate_answers(FORM, answers, complete=complete)]


def test_complete_valid_answers_pass_and_a_disabled_required_item_is_not_demanded() -> None:
    assert _problems(BASE) == []
    assert (
        _problems([*BASE, _a("symptom", value_string="a"), _a("symptom", value_string="b")]) == []
    )


def test_required_items_are_demanded_when_enabled_and_drafts_may_leave_them_out() -> None:
    smoker = [_a("reason", value_string="Cough"), _a("smoker", value_boolean=True)]
    assert _problems(smoker) == [("packs", "is required")]
    assert _problems([_a("pain", value_integer=2)], complete=False) == []
    assert [p[0] for p in _problems([_a("pain", value_integer=2)])] == ["reason", "smoker"]


@pytest.mark.parametrize(
    ("answer", "link_id", "fragment"),
    [
        (_a("pain", value_string="a lot"), "pain", "integer"),
        (_a("nope", value_boolean=True), "nope", "not a question"),
        (_a("packs", value_integer=1), "packs", "not asked"),
        (_a("duration", value_coding=Coding(system="urn:d", code="years")), "duration", "offered"),
        (_a("duration", value_coding=Coding(system="urn:x", code="days")), "duration", "offered"),
        (_a("symptom", value_string="x" * 21), "symptom", "longer than 20"),
        (_a("reason", value_string="  "), "reason", "empty"),
        (_a("note", value_string="hi"), "note", "takes an answer"),
        (_a("smoker", value_boolean=True, value_string="yes"), "smoker", "expects one"),
    ],
)
def test_wrong_answers_are_named_by_their_item(
    answer: IntakeAnswer, link_id: str, fragment: str
) -> None:
    answers = [a for a in BASE if a.link_id != answer.link_id] + [answer]
    problems = _problems(answers, complete=False)
    assert problems and problems[0][0] == link_id and fragment in problems[0][1], problems


def test_an_option_without_a_system_matches_by_code_and_answers_carry_the_offered_coding() -> None:
    answers = [*BASE, _a("duration", value_coding=Coding(system="", code="weeks"))]
    assert _problems(answers) == []
    days = with_offered_codings(
        FORM, [_a("duration", value_coding=Coding(system="urn:d", code="days"))]
    )
    assert days[0].value_coding is not None and days[0].value_coding.display == "Days"


def test_a_question_answered_twice_is_refused_unless_it_repeats() -> None:
    twice = [*BASE, _a("pain", value_integer=1), _a("pain", value_integer=2)]
    assert _problems(twice) == [("pain", "is answered twice")]


def test_enable_when_any_and_exists_operators() -> None:
    form = {
        "item": [
            {"linkId": "a", "type": "integer"},
            {"linkId": "b", "type": "boolean"},
            {
                "linkId": "c",
                "type": "string",
                "required": True,
                "enableBehavior": "any",
                "enableWhen": [
                    {"question": "a", "operator": ">", "answerInteger": 5},
                    {"question": "b", "operator": "exists", "answerBoolean": True},
                ],
            },
        ]
    }
    assert validate_answers(form, [_a("a", value_integer=3)], complete=True) == []
    high = validate_answers(form, [_a("a", value_integer=7)], complete=True)
    assert [(p.link_id, p.problem) for p in high] == [("c", "is required")]
    given_b = validate_answers(form, [_a("b", value_boolean=False)], complete=True)
    assert [p.link_id for p in given_b] == ["c"]
