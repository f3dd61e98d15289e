"""Idempotent commands: a retried request with the same `Idempotency-Key` has its effect once
and gets the original answer back.

The kit keeps one row per (scope, key): a hash of the request and the response it got
(status and JSON body). The row is written in the same transaction as the command's effect
and its outbox events, so either both exist or neither does: a crash can never leave an
effect without its stored answer, or an answer without its effect. Concurrent requests with
one key are settled by the table's primary key: the second waits for the first transaction
and then replays its answer. Only successful answers are stored; a refused request
(4xx) rolls back with everything else, so a retry is judged again (the slot may be free now).

A replay answers the original status and body with the header `Idempotent-Replayed: true`;
the same key with a different request body is 422 (the client reused a key by mistake).

Usage in a service's `api.py` (the use case takes the session and returns the body)::

    @router.post("/patients/{patient_id}/things", status_code=201)
    async def create_thing(patient_id: PatientId, body: ThingIn, request: Request,
                           key: IdempotencyKey = None) -> JSONResponse:
        return await idempotent(request, f"{patient_id}:create-thing", key, body,
                                lambda session: service.create_thing(session, ...), status=201)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Header, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from servicekit import sealing
from servicekit.crypto import Cipher
from servicekit.db import Database
from servicekit.tables import IdempotencyRow

if TYPE_CHECKING:
    from servicekit.app import Service

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
IdempotencyKey = Annotated[
    str | None, Header(alias=KEY_HEADER, min_length=1, max_length=200, pattern=KEY_PATTERN)
]
Action = Callable[[AsyncSession], Awaitable[Any]]


class KeyReused(Exception):
    """The key was used before with a different request."""


def request_hash(request: Any) -> str:
    """A stable hash of a request body (pydantic model, or anything JSON-encodable)."""
    if isinstance(request, BaseModel):
        request = request.model_dump(mode="json")
    canonical = json.dumps(jsonable_encoder(request), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Stored:
    """An answer: status and JSON-ready body, and whether it is a replay."""

    __slots__ = ("body", "replayed", "status")

    def __init__(self, status: int, body: Any, *, replayed: bool) -> None:
        self.status = status
        self.body = body
        self.replayed = replayed

    def response(self) -> JSONResponse:
        """The answer as an HTTP response."""
        headers = {REPLAYED_HEADER: "true"} if self.replayed else None
        return JSONResponse(self.body, status_code=self.status, headers=headers)


async def _earlier(
    session: AsyncSession, scope: str, key: str, digest: str, cipher: Cipher | None
) -> Stored | None:
    row = await session.get(IdempotencyRow, (scope, key))
    if row is None:
        return None
    if row.request_hash != digest:
        raise KeyReused(key)
    body = sealing.unseal(cipher, row.response_body, sealing.answer_aad(scope, key))
    return Stored(row.status_code, json.loads(body), replayed=True)


async def execute(
    db: Database,
    *,
    scope: str,
    key: str | None,
    request: Any,
    action: Action,
    status: int = 200,
    cipher: Cipher | None = None,
) -> Stored:
    """Run `action(session)` in one transaction, at most once per (scope, key).

    `action` returns the JSON-ready body of a successful answer (or a pydantic model);
    anything it raises rolls the whole transaction back and stores nothing. With `cipher`
    the stored answer is sealed (servicekit.sealing)."""
    if key is None:
        async with db.transaction() as session:
            body = jsonable_encoder(await action(session))
        return Stored(status, body, replayed=False)
    digest = request_hash(request)
    async with db.sessions() as session:
        earlier = await _earlier(session, scope, key, digest, cipher)
    if earlier is not None:
        return earlier
    try:
        async with db.transaction() as session:
            # Claimed first: a concurrent request with this key waits here for our commit.
            session.add(
                IdempotencyRow(
                    scope=scope,
                    key=key,
                    request_hash=digest,
                    status_code=status,
                    response_body="null",
                    created_at=datetime.now(UTC),
                )
            )
            await session.flush()
            body = jsonable_encoder(await action(session))
            row = await session.get(IdempotencyRow, (scope, key))
            assert row is not None
            row.response_body, row.key_id = sealing.seal(
                cipher, json.dumps(body), sealing.answer_aad(scope, key)
            )
        return Stored(status, body, replayed=False)
    except IntegrityError:
        # The concurrent request with this key committed first: answer what it answered.
        async with db.sessions() as session:
            earlier = await _earlier(session, scope, key, digest, cipher)
        if earlier is None:
            raise
        return earlier


async def idempotent(
    request: Request,
    scope: str,
    key: str | None,
    body: Any,
    action: Action,
    *,
    status: int = 200,
) -> JSONResponse:
    """`execute` for a FastAPI route of a kit service: the response to return, 422 for a
    key reused with another body."""
    service: Service = request.app.state.service
    try:
        stored = await execute(
            service.db,
            scope=scope,
            key=key,
            request=body,
            action=action,
            status=status,
            cipher=service.outbox.cipher,
        )
    except KeyReused as exc:
        raise _reused() from exc
    return stored.response()


async def replay(request: Request, scope: str, key: str | None, body: Any) -> JSONResponse | None:
    """The stored answer to an earlier request with this key (None: there is none), for a
    route that must do work outside the transaction first (an HTTP call to another
    service) and should not do it again for a retry; 422 for a key reused with another
    body. `idempotent` checks again inside, so a request racing this one is still settled."""
    if key is None:
        return None
    service: Service = request.app.state.service
    try:
        async with service.db.sessions() as session:
            earlier = await _earlier(session, scope, key, request_hash(body), service.outbox.cipher)
    except KeyReused as exc:
        raise _reused() from exc
    return earlier.response() if earlier is not None else None


def _reused() -> HTTPException:
    return HTTPException(
        422,
        f"This {KEY_HEADER} was already used for a different request; "
        "send a new key for a new request.",
    )


async def purge(db: Database, older_than: timedelta, now: datetime | None = None) -> int:
    """Forget stored answers older than `older_than` (clients retry within minutes, not
    days); returns how many were removed."""
    cutoff = (now or datetime.now(UTC)) - older_than
    async with db.transaction() as session:
        result = await session.execute(
            delete(IdempotencyRow).where(IdempotencyRow.created_at < cutoff)
        )
    return int(getattr(result, "rowcount", 0) or 0)


async def stored_keys(session: AsyncSession, scope: str) -> list[str]:
    """The keys stored for a scope (for tests and operators)."""
    stmt = select(IdempotencyRow.key).where(IdempotencyRow.scope == scope)
    return list((await session.execute(stmt)).scalars())
