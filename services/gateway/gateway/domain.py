"""Gateway rules free of I/O: notification wording and the access-log chain check.

Notifications carry ids and a kind, never clinical content: the portal fetches the
details through the API with the patient's own token, so a notification leaked to the
wrong screen reveals nothing.
"""

from __future__ import annotations

import hashlib
import hmac
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
    """The hashed fields of one access-log row (chain 1 rows hash only the first five)."""

    patient_id: str
    actor: str
    action: str
    resource: str
    at: datetime
    prev_hash: str
    hash: str
    chain: int = 1
    actor_id: str | None = None
    on_behalf_of: str | None = None
    resource_id: str | None = None
    outcome: str = "allowed"
    client_id: str | None = None
    trace_id: str | None = None
    id: int = 0


def access_hash(
    prev_hash: str, patient_id: str, actor: str, action: str, resource: str, at: datetime
) -> str:
    """The unkeyed hash of a chain-1 row (written before the chain was keyed)."""
    body = json.dumps([prev_hash, patient_id, actor, action, resource, at.isoformat()])
    return hashlib.sha256(body.encode()).hexdigest()


def keyed_access_hash(key: bytes, r: AccessRecord) -> str:
    """The HMAC-SHA-256 of a chain-2 row over every field and its predecessor's hash:
    without the key nobody can re-hash the chain after deleting or editing rows."""
    body = json.dumps(
        [
            r.prev_hash,
            r.patient_id,
            r.actor,
            r.actor_id,
            r.on_behalf_of,
            r.action,
            r.resource,
            r.resource_id,
            r.outcome,
            r.client_id,
            r.trace_id,
            r.at.isoformat(),
        ]
    )
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def expected_hash(key: bytes, r: AccessRecord) -> str:
    """What the row's hash must be, by its chain version."""
    if r.chain == 1:
        return access_hash(r.prev_hash, r.patient_id, r.actor, r.action, r.resource, r.at)
    return keyed_access_hash(key, r)


def first_broken_link(records: Iterable[AccessRecord], key: bytes = b"") -> int | None:
    """Index of the first row whose hash or link does not match (None: chain intact).
    Unkeyed rows may only come before the first keyed one: an unkeyed row after it is
    someone re-hashing without the key."""
    expected_prev = GENESIS
    keyed_seen = False
    for i, r in enumerate(records):
        if r.prev_hash != expected_prev:
            return i
        if r.chain == 1 and keyed_seen:
            return i
        keyed_seen = keyed_seen or r.chain != 1
        if not hmac.compare_digest(expected_hash(key, r), r.hash):
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


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that the log had `count` rows ending with row `last_id` whose
    hash was `head_hash` at `at`; kept apart from the log (an anchor)."""

    last_id: int
    count: int
    head_hash: str
    at: str
    signature: str = ""

    def payload(self) -> bytes:
        """The signed bytes."""
        return json.dumps([self.last_id, self.count, self.head_hash, self.at]).encode()

    def signed(self, key: bytes) -> Checkpoint:
        """This checkpoint with its HMAC signature."""
        digest = hmac.new(key, b"checkpoint:" + self.payload(), hashlib.sha256).hexdigest()
        return Checkpoint(self.last_id, self.count, self.head_hash, self.at, digest)

    def valid(self, key: bytes) -> bool:
        """Whether the signature was made with `key` over these fields."""
        return hmac.compare_digest(self.signed(key).signature, self.signature)


@dataclass(frozen=True)
class AuditVerdict:
    """The outcome of verifying the access log against its key and its anchors."""

    intact: bool
    rows: int
    checkpoints: int
    first_broken_id: int | None = None
    problem: str | None = None


def verify_log(
    records: list[AccessRecord], checkpoints: list[Checkpoint], key: bytes
) -> AuditVerdict:
    """Verify the chain (links, keyed hashes) and every anchor: a checkpoint whose row is
    gone, whose hash changed or whose count no longer matches shows truncation or
    re-hashing even when the remaining chain is self-consistent."""
    broken = first_broken_link(records, key)
    if broken is not None:
        return AuditVerdict(
            False,
            len(records),
            len(checkpoints),
            records[broken].id,
            f"row {records[broken].id} does not match its hash or its predecessor",
        )
    position = {r.id: (i, r) for i, r in enumerate(records)}
    for checkpoint in checkpoints:
        if not checkpoint.valid(key):
            return AuditVerdict(
                False,
                len(records),
                len(checkpoints),
                None,
                f"checkpoint at row {checkpoint.last_id} is not signed with the audit key",
            )
        found = position.get(checkpoint.last_id)
        if found is None or found[1].hash != checkpoint.head_hash:
            return AuditVerdict(
                False,
                len(records),
                len(checkpoints),
                checkpoint.last_id,
                f"row {checkpoint.last_id} anchored at {checkpoint.at} is missing or changed",
            )
        if found[0] + 1 != checkpoint.count:
            return AuditVerdict(
                False,
                len(records),
                len(checkpoints),
                checkpoint.last_id,
                f"{checkpoint.count} rows were anchored up to row {checkpoint.last_id}, "
                f"{found[0] + 1} are left",
            )
    return AuditVerdict(True, len(records), len(checkpoints))
