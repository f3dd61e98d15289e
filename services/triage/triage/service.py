"""Use cases of the triage service: assess, run an interactive session, check a message.

Each use case decides first (rules, then the optional model review, outside any
transaction), then stores the session and, when it completes, the `triage.completed` event
in one short transaction (outbox). A session is completed once: at start when the answer is
already an emergency or nothing is worth asking, otherwise when the last question worth
asking is answered or the patient finishes.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.base import Coding
from contracts.triage import TriageAnswer, TriageCompletedV1, TriageFlag, Urgency
from servicekit import sealing
from servicekit.crypto import Cipher
from servicekit.db import Database
from servicekit.metrics import inc_after_commit
from servicekit.outbox import Outbox
from triage import store
from triage.domain import RANK, Assessment, Evidence, FiredFlag, Sex, raise_urgency, summary
from triage.engine import Answer, Engine, Patient, UnknownQuestion
from triage.llm import ModelReviewer
from triage.metrics import ASSESSMENTS
from triage.ruleset import Question

__all__ = ["InvalidAnswer", "SessionClosed", "SessionNotFound", "TriageService"]

InvalidAnswer = UnknownQuestion

# A message is checked as if from an adult of unknown age: age-dependent red flags (chest
# pain at 40 or over) then err towards telling the patient to call for help.
MESSAGE_AGE = 40


class SessionNotFound(LookupError):
    """No such session for this patient."""


class SessionClosed(RuntimeError):
    """The session is already completed (or changed concurrently)."""


@dataclass(frozen=True)
class Complaint:
    """What the patient reports, as the API receives it."""

    age: int
    sex: Sex
    text: str
    age_months: int | None = None
    answers: Mapping[str, Answer] = field(default_factory=dict)

    @property
    def patient(self) -> Patient:
        """The patient the rules are applied to."""
        return Patient(self.age, self.sex, self.age_months)


@dataclass(frozen=True)
class SessionView:
    """A session as the API shows it."""

    id: str
    status: str
    urgency: Urgency
    advice: str
    flags: list[dict[str, Any]]
    findings: list[Coding]
    recommended_pool: str
    rule_set_version: str
    questions: list[Question]
    answers: dict[str, Any]
    started_at: datetime | None
    completed_at: datetime | None


@dataclass(frozen=True)
class EmergencyCheck:
    """Whether a free text contains emergency language, and what to tell the writer."""

    emergency: bool
    urgency: Urgency
    flags: list[dict[str, Any]]
    advice: str | None
    rule_set_version: str


def _evidence(e: Evidence) -> dict[str, Any]:
    return {"text": e.text, "start": e.start, "end": e.end, "source": e.source}


def flag_json(flag: FiredFlag) -> dict[str, Any]:
    """A fired flag as stored and returned."""
    return {
        "id": flag.id,
        "level": flag.level,
        "complaint": flag.complaint,
        "text": flag.text,
        "source": flag.source,
        "evidence": [_evidence(e) for e in flag.evidence],
    }


@dataclass(frozen=True)
class Private:
    """What a session holds of the patient's own words: kept encrypted at rest."""

    text: str
    flags: list[dict[str, Any]]
    answers: dict[str, Any]


def _aad(session_id: str) -> str:
    # Binds the envelope to its row: copied into another row, it does not decrypt.
    return f"triage.triage_sessions.private:{session_id}"


class TriageService:
    """The use cases, wired by the composition root."""

    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        engine: Engine,
        reviewer: ModelReviewer | None,
        cipher: Cipher,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.cipher = cipher
        self.engine = engine
        self.reviewer = reviewer

    async def _decide(self, complaint: Complaint) -> Assessment:
        result = self.engine.assess(complaint.patient, complaint.text, complaint.answers)
        if self.reviewer is None or result.urgency == Urgency.EMERGENCY:
            return result
        opinion = await self.reviewer.review(
            complaint.text, complaint.patient.age_years, complaint.sex.value, result.urgency
        )
        if opinion is None:
            return result
        if opinion.concepts:
            # Findings the model adds go through the same rules; the result only counts
            # if it is at least as urgent (a finding could satisfy a "not" condition).
            extra = [(c, Evidence(text="model review", source="model")) for c in opinion.concepts]
            widened = self.engine.assess(
                complaint.patient, complaint.text, complaint.answers, extra
            )
            if widened.urgency != result.urgency or len(widened.flags) > len(result.flags):
                result = widened if _rank(widened) >= _rank(result) else result
        return raise_urgency(self.engine.rules, result, opinion.urgency, opinion.reason)

    # -- use cases ------------------------------------------------------------------------

    async def assess(
        self, patient_id: str, complaint: Complaint, session: AsyncSession | None = None
    ) -> SessionView:
        """One-shot assessment: decide, store it completed and publish it (in `session`'s
        transaction when given, e.g. with the request's idempotency row)."""
        result = await self._decide(complaint)
        now = datetime.now(UTC)
        row = self._new_row(patient_id, complaint, result, now)
        async with self._transaction(session) as tx:
            self._complete(tx, row, complaint, result, now)
            tx.add(row)
        return self._view(row, result.questions)

    async def start_session(
        self, patient_id: str, complaint: Complaint, session: AsyncSession | None = None
    ) -> SessionView:
        """Start an interactive session; it completes at once if nothing is worth asking."""
        result = await self._decide(complaint)
        now = datetime.now(UTC)
        row = self._new_row(patient_id, complaint, result, now)
        async with self._transaction(session) as tx:
            if not result.questions:
                self._complete(tx, row, complaint, result, now)
            tx.add(row)
        return self._view(row, result.questions)

    async def answer(
        self,
        patient_id: str,
        session_id: str,
        answers: Mapping[str, Answer],
        *,
        finish: bool = False,
        session: AsyncSession | None = None,
    ) -> SessionView:
        """Add answers to an open session; complete it when nothing is left worth asking."""
        async with self.db.sessions() as reading:
            row = await store.session_of(reading, patient_id, session_id)
        if row is None:
            raise SessionNotFound(session_id)
        if row.status != store.OPEN:
            raise SessionClosed(session_id)
        private = self._open(row)
        before = dict(private.answers)
        merged = {**before, **answers}
        complaint = Complaint(row.age, Sex(row.sex), private.text, row.age_months, merged)
        result = await self._decide(complaint)
        now = datetime.now(UTC)
        async with self._transaction(session) as tx:
            locked = await store.session_of(tx, patient_id, session_id, for_update=True)
            if (
                locked is None
                or locked.status != store.OPEN
                or dict(self._open(locked).answers) != before
            ):
                raise SessionClosed(session_id)
            self._record(locked, result, merged, complaint.text)
            if finish or not result.questions:
                self._complete(tx, locked, complaint, result, now)
            row = locked
        return self._view(row, result.questions)

    @contextlib.asynccontextmanager
    async def _transaction(self, session: AsyncSession | None) -> AsyncIterator[AsyncSession]:
        """The caller's transaction when it has one, else a new one."""
        if session is not None:
            yield session
            return
        async with self.db.transaction() as tx:
            yield tx

    async def get(self, patient_id: str, session_id: str) -> SessionView:
        """One of the patient's sessions."""
        async with self.db.sessions() as session:
            row = await store.session_of(session, patient_id, session_id)
        if row is None:
            raise SessionNotFound(session_id)
        pending = [q for q in (self.engine.rules.question(i) for i in row.questions or []) if q]
        return self._view(row, tuple(pending))

    async def history(self, patient_id: str) -> list[store.TriageSession]:
        """The patient's completed sessions, newest first."""
        async with self.db.sessions() as session:
            return await store.sessions_of(session, patient_id)

    def emergency_check(self, text: str, age: int | None, sex: Sex) -> EmergencyCheck:
        """Whether `text` (e.g. a patient's message) describes an emergency. Stores nothing."""
        result = self.engine.assess(Patient(MESSAGE_AGE if age is None else age, sex), text)
        emergency = result.urgency == Urgency.EMERGENCY
        red = [flag_json(f) for f in result.flags if f.level == "red"]
        return EmergencyCheck(
            emergency=emergency,
            urgency=result.urgency,
            flags=red,
            advice=result.advice if emergency else None,
            rule_set_version=result.rule_set_version,
        )

    # -- helpers --------------------------------------------------------------------------

    def _new_row(
        self, patient_id: str, complaint: Complaint, result: Assessment, now: datetime
    ) -> store.TriageSession:
        row = store.TriageSession(
            id=f"tri-{uuid.uuid4().hex[:16]}",
            patient_id=patient_id,
            age=complaint.age,
            age_months=complaint.age_months,
            sex=complaint.sex.value,
            status=store.OPEN,
            started_at=now,
            completed_at=None,
        )
        self._record(row, result, dict(complaint.answers), complaint.text)
        return row

    def _record(
        self, row: store.TriageSession, result: Assessment, answers: dict[str, Any], text: str
    ) -> None:
        row.urgency = result.urgency.value
        row.findings = [f.model_dump(mode="json") for f in result.findings]
        row.matched_rules = list(result.matched_rules)
        row.recommended_pool = result.recommended_pool
        row.rule_set_version = result.rule_set_version
        row.questions = [q.id for q in result.questions]
        row.advice = result.advice
        self._seal(row, Private(text, [flag_json(f) for f in result.flags], answers))

    # -- encryption at rest ---------------------------------------------------------------

    def _seal(self, row: store.TriageSession, private: Private) -> None:
        """Encrypt the patient's words, the flags (their evidence quotes the words) and the
        answers into the row; the plain columns are emptied."""
        plain = json.dumps(
            {"text": private.text, "flags": private.flags, "answers": private.answers}
        )
        row.private_enc = self.cipher.encrypt_text(plain, _aad(row.id))
        row.key_id = self.cipher.active_key_id
        row.text, row.flags, row.answers = None, None, None

    def _open(self, row: store.TriageSession) -> Private:
        """The row's private parts (rows from before encryption: the plain columns)."""
        if row.private_enc is None:
            return Private(row.text or "", list(row.flags or []), dict(row.answers or {}))
        values = json.loads(self.cipher.decrypt_text(row.private_enc, _aad(row.id)))
        return Private(values["text"], values["flags"], values["answers"])

    async def reencrypt(self, batch_size: int = 200) -> dict[str, int]:
        """Bring every session to the active key (and encrypt rows written before
        encryption), in short batches; returns the rows changed per table."""
        changed = 0
        while True:
            async with self.db.transaction() as session:
                rows = await store.rows_to_reencrypt(session, self.cipher.active_key_id, batch_size)
                for row in rows:
                    if row.private_enc is not None:
                        row.private_enc = self.cipher.rewrap(row.private_enc)
                        row.key_id = self.cipher.active_key_id
                    else:
                        self._seal(row, self._open(row))
            changed += len(rows)
            if len(rows) < batch_size:
                break
        # The kit's outbox payloads and stored answers carry the patient's words too.
        return {"triage_sessions": changed} | await sealing.rewrap(self.db, self.cipher, batch_size)

    async def encryption_status(self) -> dict[str, int]:
        """Rows per table not yet under the active key."""
        async with self.db.sessions() as session:
            count = await store.count_not_on_key(session, self.cipher.active_key_id)
        kit = await sealing.count_not_on_key(self.db, self.cipher.active_key_id)
        return {"triage_sessions": count} | kit

    def _complete(
        self,
        session: Any,
        row: store.TriageSession,
        complaint: Complaint,
        result: Assessment,
        now: datetime,
    ) -> None:
        row.status = store.COMPLETED
        row.completed_at = now
        rules = self.engine.rules
        answers = []
        for qid, value in complaint.answers.items():
            question = rules.question(qid)
            if question is not None:
                answers.append(
                    TriageAnswer(
                        question_id=qid, question=question.text, answer=_answer_text(value)
                    )
                )
        self.outbox.add(
            session,
            TriageCompletedV1(
                session_id=row.id,
                patient_id=row.patient_id,
                urgency=result.urgency,
                summary=summary(result, complaint.patient.age_years, complaint.sex),
                findings=list(result.findings),
                rule_set_version=result.rule_set_version,
                recommended_pool=result.recommended_pool,
                completed_at=now,
                flags=[
                    TriageFlag(
                        id=f.id,
                        level=f.level,  # type: ignore[arg-type]
                        text=f.text[:500],
                        evidence=[e.text[:200] for e in f.evidence],
                    )
                    for f in result.flags
                ],
                answers=answers,
                patient_text=complaint.text[:2000],
                advice=result.advice[:1000],
            ),
            subject=row.patient_id,
        )
        inc_after_commit(
            session, ASSESSMENTS.labels(result.urgency.value, result.recommended_pool or "default")
        )

    def _view(self, row: store.TriageSession, questions: tuple[Question, ...]) -> SessionView:
        private = self._open(row)
        return SessionView(
            id=row.id,
            status=row.status,
            urgency=Urgency(row.urgency),
            advice=row.advice or "",
            flags=private.flags,
            findings=[Coding.model_validate(f) for f in row.findings],
            recommended_pool=row.recommended_pool,
            rule_set_version=row.rule_set_version,
            questions=list(questions),
            answers=private.answers,
            started_at=row.started_at,
            completed_at=row.completed_at,
        )


def _rank(assessment: Assessment) -> int:
    return RANK[assessment.urgency]


def _answer_text(value: Answer) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)[:100]
