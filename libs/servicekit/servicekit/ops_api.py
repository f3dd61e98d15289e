"""Operations endpoints every service has: dead letters (list, re-drive, discard) and the
outbox (backlog, replay). Guarded by the ops bearer token from settings."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, BeforeValidator, Field
from sqlalchemy import func, select

from servicekit.consumer import ConsumerRuntime
from servicekit.crypto import Cipher
from servicekit.db import Database
from servicekit.outbox import replay
from servicekit.sealing import KitSealing
from servicekit.settings import ServiceSettings
from servicekit.tables import DeadLetterRow, OutboxRow, ParkedRow

router = APIRouter(prefix="/ops", tags=["ops"])


async def _require_ops(request: Request) -> None:
    settings: ServiceSettings = request.app.state.service.settings
    header = request.headers.get("authorization", "")
    token = header.removeprefix("Bearer ").strip()
    if not header.startswith("Bearer ") or not secrets.compare_digest(token, settings.ops_token):
        raise HTTPException(401, "An ops bearer token is required.", {"WWW-Authenticate": "Bearer"})


Ops = Annotated[None, Depends(_require_ops)]
# A bigint column: an id beyond it would fail in the database (a 500), so it is a 422 here.
DeadLetterId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _db(request: Request) -> Database:
    db: Database = request.app.state.service.db
    return db


def _runtime(request: Request) -> ConsumerRuntime:
    runtime: ConsumerRuntime = request.app.state.service.runtime
    return runtime


class DeadLetter(BaseModel):
    """A dead letter as operators see it (payloads are not shown: they may carry PHI)."""

    id: int
    consumer: str
    topic: str
    key: str
    partition: int
    offset: int
    event_id: str | None
    error: str
    error_kind: str
    attempts: int
    status: str
    created_at: datetime
    resolved_at: datetime | None
    parked_behind: int = Field(description="Messages of the same key held back by this one")


def _iso_text(value: object) -> object:
    # Lax pydantic reads a number as seconds since 1970; a replay window must be written out.
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 time with a time zone")
    return value


class ReplayRequest(BaseModel):
    """Re-publish sent outbox rows from `since` on (optionally one topic only)."""

    since: Annotated[AwareDatetime, BeforeValidator(_iso_text)]
    topic: str | None = Field(default=None, max_length=249)  # Kafka's longest topic name


@router.get("/dead-letters", response_model=list[DeadLetter])
async def list_dead_letters(
    _: Ops,
    request: Request,
    status: Annotated[str | None, Query(pattern="^(open|releasing|redriven|discarded)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeadLetter]:
    """Dead letters, newest first."""
    async with _db(request).sessions() as session:
        stmt = select(DeadLetterRow).order_by(DeadLetterRow.id.desc()).limit(limit)
        if status:
            stmt = stmt.where(DeadLetterRow.status == status)
        rows = (await session.execute(stmt)).scalars().all()
        out = []
        for row in rows:
            parked = await session.scalar(
                select(func.count())
                .select_from(ParkedRow)
                .where(ParkedRow.consumer == row.consumer, ParkedRow.key == row.key)
            )
            out.append(
                DeadLetter(
                    id=row.id,
                    consumer=row.consumer,
                    topic=row.topic,
                    key=row.key,
                    partition=row.partition,
                    offset=row.offset,
                    event_id=row.event_id,
                    error=row.error,
                    error_kind=row.error_kind,
                    attempts=row.attempts,
                    status=row.status,
                    created_at=row.created_at,
                    resolved_at=row.resolved_at,
                    parked_behind=int(parked or 0) if row.status in ("open", "releasing") else 0,
                )
            )
    return out


async def _resolve(request: Request, dead_letter_id: int, *, rerun: bool) -> dict[str, Any]:
    runtime = _runtime(request)
    try:
        if rerun:
            return await runtime.redrive(dead_letter_id)
        return await runtime.discard(dead_letter_id)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post("/dead-letters/{dead_letter_id}/redrive")
async def redrive_dead_letter(
    _: Ops, request: Request, dead_letter_id: DeadLetterId
) -> dict[str, Any]:
    """Handle the dead letter again; on success release its key's parked messages in order."""
    return await _resolve(request, dead_letter_id, rerun=True)


@router.post("/dead-letters/{dead_letter_id}/discard")
async def discard_dead_letter(
    _: Ops, request: Request, dead_letter_id: DeadLetterId
) -> dict[str, Any]:
    """Drop the dead letter and release its key's parked messages in order."""
    return await _resolve(request, dead_letter_id, rerun=False)


@router.get("/outbox")
async def outbox_status(_: Ops, request: Request) -> dict[str, int]:
    """Outbox rows by status."""
    async with _db(request).sessions() as session:
        rows = (
            await session.execute(select(OutboxRow.status, func.count()).group_by(OutboxRow.status))
        ).all()
    counts = {"pending": 0, "sent": 0}
    counts.update({status: int(n) for status, n in rows})
    return counts


@router.post("/outbox/replay")
async def replay_outbox(_: Ops, request: Request, body: ReplayRequest) -> dict[str, int]:
    """Mark sent events from `since` on for re-publishing (consumers' inboxes dedupe)."""
    count = await replay(_db(request), body.since, body.topic)
    request.app.state.service.outbox.wakeup.set()
    return {"replayed": count}


# -- encryption at rest: the same two routes for every service that encrypts ---------------


class EncryptionOut(BaseModel):
    """Rows per table not on the active key (and, after a run, how many were changed)."""

    active_key_id: str
    not_on_active_key: dict[str, int]
    reencrypted: dict[str, int] = Field(default_factory=dict)


class Reencryptable(Protocol):
    """Use cases that keep values encrypted (`servicekit.crypto`) and can re-wrap them."""

    cipher: Cipher

    async def reencrypt(self) -> dict[str, int]:
        """Bring every stored value to the active key; rows changed per table."""
        ...

    async def encryption_status(self) -> dict[str, int]:
        """Rows per table not yet on the active key."""
        ...


def encryption_routes(use_cases: Callable[[Request], Reencryptable]) -> APIRouter:
    """`GET /ops/encryption` and `POST /ops/encryption/reencrypt` for a service's use cases
    (docs/operations.md, "Encryption keys")."""
    routes = APIRouter(prefix="/ops/encryption", tags=["ops"])

    @routes.get("", response_model=EncryptionOut)
    async def encryption_status(_ops: Ops, request: Request) -> EncryptionOut:
        """How far the stored values are from the active encryption key."""
        target = use_cases(request)
        return EncryptionOut(
            active_key_id=target.cipher.active_key_id,
            not_on_active_key=await target.encryption_status(),
        )

    @routes.post("/reencrypt", response_model=EncryptionOut)
    async def reencrypt(_ops: Ops, request: Request) -> EncryptionOut:
        """Re-wrap every stored value with the active key (after a rotation); idempotent."""
        target = use_cases(request)
        changed = await target.reencrypt()
        return EncryptionOut(
            active_key_id=target.cipher.active_key_id,
            not_on_active_key=await target.encryption_status(),
            reencrypted=changed,
        )

    return routes


def kit_encryption_routes() -> APIRouter:
    """The same two routes for a service whose only sealed rows are the kit's (records,
    scheduling, the gateway, the ehr-connector): outbox, stored answers, dead letters and
    parked messages (`servicekit.sealing.KitSealing`)."""

    def use_cases(request: Request) -> Reencryptable:
        service = request.app.state.service
        cipher: Cipher | None = service.outbox.cipher
        if cipher is None:
            raise RuntimeError("kit_encryption_routes on a service without a cipher")
        return KitSealing(service.db, cipher)

    return encryption_routes(use_cases)
