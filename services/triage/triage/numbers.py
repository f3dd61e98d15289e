"""Numbers in a patient's or clinician's text: vital signs, values, age, duration.

Measured values are what the rule thresholds (NEWS2, qSOFA, SIRS, infant fever, glucose,
blood pressure) are applied to; each keeps its span in the text as evidence. Units are
normalised: temperature to degrees Celsius (a value above 45 is taken as Fahrenheit),
blood glucose to mmol/L (mg/dL divided by 18). Implausible values are dropped rather than
guessed. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
    "fifteen": 15, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "hundred": 100, "couple": 2, "few": 3, "several": 4,
}  # fmt: skip
_NUM = r"(\d+(?:\.\d+)?|" + "|".join(sorted(_WORD_NUMBERS, key=len, reverse=True)) + r")"
_SEP = (
    r"\s*(?:of|is|was|at|=|:|reads|reading|around|about|over|only|just|now)?"
    r"\s*(?:of|is|was|at|about)?\s*"
)

_PLAUSIBLE = {
    "temp_c": (25.0, 45.0),
    "hr": (20.0, 260.0),
    "sbp": (40.0, 300.0),
    "dbp": (20.0, 200.0),
    "rr": (4.0, 80.0),
    "spo2": (50.0, 100.0),
    "glucose": (0.5, 60.0),
    "tablets": (1.0, 500.0),
    "gestation_weeks": (1.0, 43.0),
}


@dataclass(frozen=True)
class Measure:
    """A value read from the text, with where it was found."""

    variable: str
    value: float
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Numbers:
    """Everything numeric understood in a text."""

    measures: dict[str, Measure]
    age_years: float | None = None
    age_span: tuple[int, int] | None = None
    duration_days: float | None = None


def _number(token: str) -> float:
    token = token.lower()
    return float(_WORD_NUMBERS[token]) if token in _WORD_NUMBERS else float(token)


def fahrenheit_to_celsius(value: float) -> float:
    """Degrees Fahrenheit to Celsius."""
    return round((value - 32.0) * 5.0 / 9.0, 1)


def normalise_value(variable: str, value: float, unit: str | None = None) -> float | None:
    """A value in the unit the rules use, or None when implausible."""
    unit = (unit or "").lower()
    if variable == "temp_c" and (unit.startswith("f") or value > 45):
        value = fahrenheit_to_celsius(value)
    if variable == "glucose" and (unit.startswith("mg") or value > 35):
        value = round(value / 18.0, 1)
    low, high = _PLAUSIBLE[variable]
    return value if low <= value <= high else None


_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (variable, re.compile(pattern, re.IGNORECASE))
    for variable, pattern in (
        (
            "temp_c",
            r"\b(?:temp(?:erature)?|fever|pyrexi[ac]|febrile|t)"
            + _SEP
            + r"(\d{2,3}(?:\.\d+)?)\s*(?:°|º|deg(?:rees?)?)?\s*(c|f|celsius|fahrenheit)?\b",
        ),
        ("temp_c", r"\b(\d{2,3}(?:\.\d+)?)\s*(?:°|º|deg(?:rees?)?)\s*(c|f|celsius|fahrenheit)?\b"),
        ("temp_c", r"\b(\d{2}\.\d)\s*(c)\b"),
        (
            "hr",
            r"\b(?:heart ?rate|pulse(?: rate)?|hr|heart is beating at|heartbeat)"
            + _SEP
            + r"(\d{2,3})(?!\s*/)",
        ),
        ("hr", r"\b(\d{2,3})\s*(?:bpm|beats (?:per|a|/) ?min(?:ute)?)"),
        ("bp", r"\b(?:blood pressure|bp)" + _SEP + r"(\d{2,3})\s*(?:/|over)\s*(\d{2,3})"),
        ("bp", r"\b(\d{2,3})\s*/\s*(\d{2,3})\s*(?:mm ?hg)"),
        ("sbp", r"\bsystolic(?: bp| blood pressure)?" + _SEP + r"(\d{2,3})"),
        (
            "rr",
            r"\b(?:resp(?:iratory)? rate|breathing rate|rr|resps?|respirations?)"
            + _SEP
            + r"(\d{1,2})\b",
        ),
        ("rr", r"\b(\d{1,2})\s*breaths (?:per|a|/) ?min"),
        (
            "spo2",
            r"\b(?:spo2|sp02|sats?|saturations?|oxygen(?: sat(?:uration)?s?| levels?)?"
            r"|o2(?: sats?)?|pulse ?ox(?:imeter)?)" + _SEP + r"(\d{2,3})\s*%?",
        ),
        ("spo2", r"\b(\d{2,3})\s*%\s*(?:on (?:room )?air|o2|oxygen|sats?)"),
        (
            "glucose",
            r"\b(?:blood sugar|blood glucose|glucose|sugar|sugars|bm|cbg|bg)(?: level| reading)?"
            + _SEP
            + r"(\d{1,3}(?:\.\d+)?)\s*(mmol(?:/l)?|mg/?dl|mg)?",
        ),
        (
            "tablets",
            r"\b(?:took|taken|take|swallowed|ate|had|overdosed on|od'?d on)\s+"
            r"(?:about |around |over |like |maybe |roughly |at least )?"
            + _NUM
            + r"\s+(?:of (?:my |his |her |the )?)?(?:[a-z]+\s+){0,2}?"
            r"(?:tablets?|pills?|capsules?|tabs?|paracetamol|acetaminophen|tylenol|ibuprofen"
            r"|aspirin|codeine|co-codamol|sleeping pills|antidepressants?)\b",
        ),
        (
            "gestation_weeks",
            r"\b(\d{1,2})\s*(?:weeks?|wks?)\s*"
            r"(?:pregnant|gestation|along|into (?:my|the|her) pregnancy)",
        ),
        ("gestation_weeks", r"\b(?:pregnant|gestation)\s*(?:at|of|with)?\s*(\d{1,2})\s*weeks?"),
    )
)

_AGE = re.compile(
    r"\b(\d{1,3}|" + "|".join(k for k in _WORD_NUMBERS if len(k) > 2) + r")[- ]?"
    r"(year|yr|month|mo|week|wk|day)s?[- ]?old\b"
    r"|\baged? (\d{1,3})\b",
    re.IGNORECASE,
)
_AGE_UNITS = {"year": 1.0, "yr": 1.0, "month": 1 / 12, "mo": 1 / 12, "week": 7 / 365, "wk": 7 / 365,
              "day": 1 / 365}  # fmt: skip
_DURATION = re.compile(
    r"\b(?:for|since|over|past|last|from)\s+(?:the\s+)?(?:past\s+|last\s+)?(?:about\s+|almost\s+|over\s+)?"
    + _NUM
    + r"\s+(hour|day|night|week|month|year)s?\b"
    r"|\b" + _NUM + r"\s+(hour|day|night|week|month|year)s?\s+ago\b"
    r"|\b" + _NUM + r"[- ](hour|day|night|week|month|year)s?[- ]history\b",
    re.IGNORECASE,
)
_DURATION_DAYS = {
    "hour": 1 / 24,
    "day": 1.0,
    "night": 1.0,
    "week": 7.0,
    "month": 30.0,
    "year": 365.0,
}


def _measure(variable: str, match: re.Match[str], group: int, unit: str | None) -> Measure | None:
    value = normalise_value(variable, float(match.group(group)), unit)
    if value is None:
        return None
    start, end = match.span()
    return Measure(variable, value, start, end, match.group(0))


def read_numbers(text: str) -> Numbers:
    """The vital signs, values, stated age and duration found in `text`."""
    measures: dict[str, Measure] = {}
    for variable, pattern in _PATTERNS:
        for match in pattern.finditer(text):
            found: list[Measure | None]
            if variable == "bp":
                found = [_measure("sbp", match, 1, None), _measure("dbp", match, 2, None)]
            elif variable == "tablets":
                count = normalise_value("tablets", _number(match.group(1)))
                found = [
                    None
                    if count is None
                    else Measure("tablets", count, *match.span(), match.group(0))
                ]
            else:
                unit = match.group(2) if (match.lastindex or 0) >= 2 else None
                found = [_measure(variable, match, 1, unit)]
            for m in found:
                if m is not None and m.variable not in measures:
                    measures[m.variable] = m
    age: float | None = None
    age_span: tuple[int, int] | None = None
    age_match = _AGE.search(text)
    if age_match:
        if age_match.group(3):
            age = float(age_match.group(3))
        else:
            age = _number(age_match.group(1)) * _AGE_UNITS[age_match.group(2).lower()]
        age_span = age_match.span()
        if age > 125:
            age, age_span = None, None
    duration: float | None = None
    for match in _DURATION.finditer(text):
        groups = [g for g in match.groups() if g is not None]
        amount, unit = groups[0], groups[1]
        days = _number(amount) * _DURATION_DAYS[unit.lower()]
        duration = max(duration or 0.0, days)
    return Numbers(measures, age, age_span, duration)
