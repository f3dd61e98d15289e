"""Gateway rules free of I/O: notification wording and the access-log chain check.

Notifications carry ids and a kind, never clinical content: the portal fetches the
details through the API with the patient's own token, so a notification leaked to the
wrong screen reveals nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

GENESIS = "0" * 64


class NotificationKind(StrEnum):
    """What changed for the patient."""

    LAB_RESULT = "lab-result"
    MEDICATION = "medication"
    MESSAGE = "message"
    APPOINTMENT = "appointment"
    TRIAGE = "triage"
    INTAKE_REMINDER = "intake-reminder"


@dataclass(frozen=True)
class Notification:
    """One change to push to the patient's open sessions."""

    kind: NotificationKind
    ref: str
    status: str | None = None

    def text(self) -> str:
        """A plain-language line for the portal (no clinical detail)."""
        return _TEXT[self.kind].format(status=self.status or "updated")


def appointment_news(end: datetime | None, now: datetime) -> bool:
    """Whether a change of an appointment is news for the patient: not for a visit that is
    already over (an imported history, or the clinic closing last week's visit)."""
    return end is None or end > now


_TEXT = {
    NotificationKind.LAB_RESULT: "A new lab result is available.",
    NotificationKind.MEDICATION: "Your medication list changed.",
    NotificationKind.MESSAGE: "You have a new message from your care team.",
    NotificationKind.APPOINTMENT: "An appointment was {status}.",
    NotificationKind.TRIAGE: "Your symptom check was sent to your care team.",
    NotificationKind.INTAKE_REMINDER: (
        "Your visit is coming up: please fill in the questions before you come."
    ),
}


@dataclass(frozen=True)
class AccessRecord:
    """The hashed fields of one access-log row."""

    patient_id: str
    actor: str
    action: str
    resource: str
    at: datetime
    prev_hash: str
    hash: str


def access_hash(
    prev_hash: str, patient_id: str, actor: str, action: str, resource: str, at: datetime
) -> str:
    """The chained hash of one access-log row: any edit, insertion or deletion breaks it."""
    body = json.dumps([prev_hash, patient_id, actor, action, resource, at.isoformat()])
    return hashlib.sha256(body.encode()).hexdigest()


def first_broken_link(records: Iterable[AccessRecord]) -> int | None:
    """Index of the first row whose hash or link does not match (None: chain intact)."""
    expected_prev = GENESIS
    for i, r in enumerate(records):
        if r.prev_hash != expected_prev:
            return i
        if access_hash(r.prev_hash, r.patient_id, r.actor, r.action, r.resource, r.at) != r.hash:
            return i
        expected_prev = r.hash
    return None


@dataclass(frozen=True)
class Profile:
    """What the portal shows of the patient: how to greet them, and what the symptom
    check pre-fills (age and sex from the record)."""

    name: str
    given_name: str
    birth_date: date | None
    age: int | None
    sex: str


_SEXES = {"female", "male", "other", "unknown"}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def profile_of(patient: dict[str, Any], today: date) -> Profile:
    """The profile of a FHIR Patient (official name first; age in whole years on `today`)."""
    names = [n for n in patient.get("name") or [] if isinstance(n, dict)]
    chosen = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    given = [g for g in chosen.get("given") or [] if isinstance(g, str)]
    family = _text(chosen.get("family"))
    text = _text(chosen.get("text"))
    full = text.strip() or " ".join([*given, family]).strip()
    birth: date | None = None
    raw_birth = patient.get("birthDate")
    if isinstance(raw_birth, str) and len(raw_birth) == 10:
        try:
            birth = date.fromisoformat(raw_birth)
        except ValueError:
            birth = None
    age = None
    if birth is not None:
        age = today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))
    gender = patient.get("gender")
    return Profile(
        name=full,
        given_name=given[0] if given else full,
        birth_date=birth,
        age=age,
        sex=gender if gender in _SEXES else "unknown",
    )
