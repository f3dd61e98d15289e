"""Scheduling's rules, free of I/O: appointment states, the clinic's booking rules, and the
validation of intake answers against the EHR's Questionnaire."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from contracts.appointment import AppointmentStatus
from contracts.intake import IntakeAnswer

# What the EHR may move a portal appointment to, from each state. Terminal states never
# change again; a late `booked` confirmation must not resurrect a cancelled appointment.
_ALLOWED: dict[AppointmentStatus, frozenset[AppointmentStatus]] = {
    AppointmentStatus.PROPOSED: frozenset(AppointmentStatus) - {AppointmentStatus.PROPOSED},
    AppointmentStatus.PENDING: frozenset(AppointmentStatus)
    - {AppointmentStatus.PROPOSED, AppointmentStatus.PENDING},
    AppointmentStatus.BOOKED: frozenset(
        {
            AppointmentStatus.ARRIVED,
            AppointmentStatus.CHECKED_IN,
            AppointmentStatus.FULFILLED,
            AppointmentStatus.CANCELLED,
            AppointmentStatus.NOSHOW,
            AppointmentStatus.ENTERED_IN_ERROR,
        }
    ),
    AppointmentStatus.ARRIVED: frozenset(
        {
            AppointmentStatus.CHECKED_IN,
            AppointmentStatus.FULFILLED,
            AppointmentStatus.ENTERED_IN_ERROR,
        }
    ),
    AppointmentStatus.CHECKED_IN: frozenset(
        {AppointmentStatus.FULFILLED, AppointmentStatus.ENTERED_IN_ERROR}
    ),
    AppointmentStatus.WAITLIST: frozenset(AppointmentStatus) - {AppointmentStatus.WAITLIST},
}
TERMINAL = frozenset(
    {
        AppointmentStatus.FULFILLED,
        AppointmentStatus.CANCELLED,
        AppointmentStatus.NOSHOW,
        AppointmentStatus.ENTERED_IN_ERROR,
        AppointmentStatus.REJECTED,
    }
)


def can_transition(current: AppointmentStatus, new: AppointmentStatus) -> bool:
    """Whether an appointment in `current` may move to `new` (same state: no change)."""
    if current in TERMINAL:
        return False
    return new in _ALLOWED.get(current, frozenset())


def cancellable(current: AppointmentStatus) -> bool:
    """Whether the patient may still cancel an appointment in `current`."""
    return can_transition(current, AppointmentStatus.CANCELLED)


# Appointments that still take a place in the clinic's day (and count as open bookings).
OPEN_STATUSES = frozenset(
    {
        AppointmentStatus.PROPOSED.value,
        AppointmentStatus.PENDING.value,
        AppointmentStatus.BOOKED.value,
        AppointmentStatus.WAITLIST.value,
    }
)


def releases_slot(status: AppointmentStatus) -> bool:
    """Whether an appointment in `status` no longer needs its slot."""
    return status in TERMINAL


# -- clinic rules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClinicRules:
    """The clinic's rules for patients' own bookings (configuration, see settings)."""

    change_cutoff_hours: float = 24.0
    booking_horizon_days: int = 90
    max_open_bookings: int = 3
    clinic_phone: str = "the clinic"


@dataclass(frozen=True)
class RuleBroken:
    """A rule refuses the action: why, and what the patient can do instead."""

    status: int
    rule: str
    detail: str


def check_change(
    rules: ClinicRules, start: datetime | None, now: datetime, action: str
) -> RuleBroken | None:
    """Cancelling or moving online ends `change_cutoff_hours` before the start."""
    if start is None or start - now >= timedelta(hours=rules.change_cutoff_hours):
        return None
    hours = f"{rules.change_cutoff_hours:g}"
    return RuleBroken(
        409,
        "change-cutoff",
        f"This appointment starts in less than {hours} hours, so it cannot be {action} "
        f"online: the clinic has planned the visit. Please call {rules.clinic_phone} "
        f"to {'cancel' if action == 'cancelled' else 'change'} it.",
    )


def check_booking(
    rules: ClinicRules, slot_start: datetime, now: datetime, open_bookings: int
) -> RuleBroken | None:
    """A booking must start in the future, within the horizon, and not exceed the
    patient's number of open bookings."""
    if slot_start <= now:
        return RuleBroken(409, "past", "This time has already passed; please choose another.")
    if slot_start > now + timedelta(days=rules.booking_horizon_days):
        return RuleBroken(
            422,
            "horizon",
            f"Appointments can be booked online up to {rules.booking_horizon_days} days "
            f"ahead; please choose an earlier time or call {rules.clinic_phone}.",
        )
    if open_bookings >= rules.max_open_bookings:
        return RuleBroken(
            409,
            "max-open-bookings",
            f"You already have {open_bookings} upcoming appointments, the most that can be "
            "booked online; cancel one you no longer need, or call "
            f"{rules.clinic_phone}.",
        )
    return None


# -- intake validation ----------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerProblem:
    """What is wrong with the answers, naming the Questionnaire item."""

    link_id: str
    problem: str


_VALUE_FIELD = {
    "boolean": "value_boolean",
    "integer": "value_integer",
    "string": "value_string",
    "text": "value_string",
    "choice": "value_coding",
    "open-choice": "value_coding",
}
_NO_ANSWER_TYPES = frozenset({"group", "display"})


def flatten_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every item of a Questionnaire, nested groups included, in order."""
    out: list[dict[str, Any]] = []
    for item in items:
        out.append(item)
        out.extend(flatten_items(item.get("item", [])))
    return out


def _set_fields(answer: IntakeAnswer) -> list[str]:
    return [
        name
        for name in ("value_string", "value_boolean", "value_integer", "value_coding")
        if getattr(answer, name) is not None
    ]


def _answer_value(answer: IntakeAnswer) -> Any:
    if answer.value_coding is not None:
        return answer.value_coding.code
    for name in ("value_boolean", "value_integer", "value_string"):
        value = getattr(answer, name)
        if value is not None:
            return value
    return None


def _expected_value(condition: dict[str, Any]) -> tuple[bool, Any]:
    for key, value in condition.items():
        if key.startswith("answer"):
            if key == "answerCoding" and isinstance(value, dict):
                return True, value.get("code")
            return True, value
    return False, None


def _condition_holds(condition: dict[str, Any], given: dict[str, IntakeAnswer]) -> bool:
    answer = given.get(str(condition.get("question")))
    operator = condition.get("operator")
    if operator == "exists":
        _, wanted = _expected_value(condition)
        return (answer is not None) == bool(wanted)
    if answer is None:
        return False
    actual = _answer_value(answer)
    _, wanted = _expected_value(condition)
    try:
        if operator == "=":
            return bool(actual == wanted)
        if operator == "!=":
            return bool(actual != wanted)
        if operator == ">":
            return bool(actual > wanted)
        if operator == "<":
            return bool(actual < wanted)
        if operator == ">=":
            return bool(actual >= wanted)
        if operator == "<=":
            return bool(actual <= wanted)
    except TypeError:
        return False
    return False


def is_enabled(item: dict[str, Any], given: dict[str, IntakeAnswer]) -> bool:
    """Whether an item is asked, given the answers (`enableWhen`, `enableBehavior`)."""
    conditions = item.get("enableWhen") or []
    if not conditions:
        return True
    results = [_condition_holds(c, given) for c in conditions]
    return any(results) if item.get("enableBehavior") == "any" else all(results)


def _check_value(item: dict[str, Any], answer: IntakeAnswer) -> str | None:
    item_type = str(item.get("type"))
    field = _VALUE_FIELD.get(item_type)
    if field is None:
        return f"items of type {item_type} take no answer here"
    fields = _set_fields(answer)
    if fields != [field]:
        return f"expects one {item_type} answer ({field})"
    options = item.get("answerOption") or []
    if item_type == "choice" and options and answer.value_coding is not None:
        allowed = {
            (o["valueCoding"].get("system"), o["valueCoding"].get("code"))
            for o in options
            if isinstance(o.get("valueCoding"), dict)
        }
        codes = {code for _, code in allowed}
        coding = answer.value_coding
        if (coding.system, coding.code) not in allowed and not (
            coding.code in codes and not coding.system
        ):
            return f"'{coding.code}' is not one of the offered answers"
    max_length = item.get("maxLength")
    text = answer.value_string
    if isinstance(max_length, int) and text is not None and len(text) > max_length:
        return f"is longer than {max_length} characters"
    if text is not None and not text.strip():
        return "is empty"
    return None


def validate_answers(
    questionnaire: dict[str, Any], answers: list[IntakeAnswer], *, complete: bool
) -> list[AnswerProblem]:
    """Problems of `answers` against the Questionnaire; `complete` also demands every
    required item that is enabled (a draft may leave them out)."""
    items = flatten_items(questionnaire.get("item", []))
    by_id = {str(i.get("linkId")): i for i in items}
    problems: list[AnswerProblem] = []
    given: dict[str, IntakeAnswer] = {}
    for answer in answers:
        repeats = bool(by_id.get(answer.link_id, {}).get("repeats"))
        if answer.link_id in given and not repeats:
            problems.append(AnswerProblem(answer.link_id, "is answered twice"))
            continue
        given.setdefault(answer.link_id, answer)
    for answer in answers:
        link_id = answer.link_id
        item = by_id.get(link_id)
        if item is None:
            if not any(p.link_id == link_id for p in problems):
                problems.append(AnswerProblem(link_id, "is not a question of this questionnaire"))
            continue
        if item.get("type") in _NO_ANSWER_TYPES:
            problems.append(AnswerProblem(link_id, "is not a question that takes an answer"))
            continue
        wrong = _check_value(item, answer)
        if wrong is not None:
            problems.append(AnswerProblem(link_id, wrong))
        elif not is_enabled(item, given):
            problems.append(AnswerProblem(link_id, "is not asked given the other answers"))
    if complete:
        for item in items:
            link_id = str(item.get("linkId"))
            if (
                item.get("required")
                and item.get("type") not in _NO_ANSWER_TYPES
                and link_id not in given
                and is_enabled(item, given)
            ):
                problems.append(AnswerProblem(link_id, "is required"))
    return problems


def with_offered_codings(
    questionnaire: dict[str, Any], answers: list[IntakeAnswer]
) -> list[IntakeAnswer]:
    """Choice answers carry the offered option's coding (its system and display), whatever
    part of it the patient sent back (validated answers only)."""
    by_id = {str(i.get("linkId")): i for i in flatten_items(questionnaire.get("item", []))}
    out: list[IntakeAnswer] = []
    for answer in answers:
        coding = answer.value_coding
        item = by_id.get(answer.link_id, {})
        if coding is not None:
            for option in item.get("answerOption") or []:
                offered = option.get("valueCoding")
                if isinstance(offered, dict) and offered.get("code") == coding.code:
                    full = coding.model_copy(
                        update={
                            "system": offered.get("system") or coding.system,
                            "display": offered.get("display") or coding.display,
                        }
                    )
                    answer = answer.model_copy(update={"value_coding": full})
                    break
        out.append(answer)
    return out
