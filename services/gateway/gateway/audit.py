"""The tamper-evident log of who saw or changed what of a patient's health data.

Each row says who acted (`actor_id`, the token's subject, and `actor`: the patient themself
or someone for them), on whose behalf (`on_behalf_of`, the patient's FHIR id), on which
record (`resource` type and `resource_id`), how (`action`), with what `outcome` (`allowed`
or `denied`: refused attempts are recorded too), through which app (`client_id`), in which
trace (`trace_id`) and when (HIPAA 164.312(b)).

Rows form a hash chain keyed with HMAC-SHA-256 (`AUDIT_KEY`): deleting a patient's rows
and re-hashing the rest needs the key. Periodically the gateway appends a signed checkpoint
(row count, last row id and its hash) to a file apart from the database
(`AUDIT_CHECKPOINT_DIR`), then verifies the whole chain against the key and every
checkpoint: cutting the tail or rewriting the chain before an anchor is detected. The
outcome is on `/ops/audit/verify`, `portalctl audit verify` and the metrics
`audit_chain_intact` / `audit_verifications_total`.

Appends are group-committed (`AuditWriter`): a request's record joins a bounded queue and
the request waits until the transaction holding its record has committed, so nothing is
answered before it is recorded. One writer task takes everything waiting, appends it to the
chain in one commit (under a transaction-scoped PostgreSQL advisory lock; a unique index on
`prev_hash` lets a row have one successor only, so replicas never fork the chain) and
settles every waiting request at once: one round of the chain and one commit serve many
concurrent reads, instead of a lock held across each read's own transaction. A writer that
knows the head (it appended last) appends in one statement (`store.append_after_head`);
otherwise, or when another gateway appended meanwhile, it reads the head under the lock.
A full queue, a record not committed within `AUDIT_COMMIT_TIMEOUT_S` or a failed commit is
`AuditUnavailable`: the request answers 503 with Retry-After, never the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import store
from gateway.domain import AccessRecord, AuditVerdict, Checkpoint, keyed_access_hash, verify_log
from servicekit.app import Service
from servicekit.db import Database
from servicekit.limits import SECURITY_EVENTS
from servicekit.logging import get_logger
from servicekit.telemetry import trace_id_hex

log = get_logger(__name__)
# The advisory lock that serialises appends to the chain across gateways ("PALO": patient
# access log).
CHAIN_LOCK_KEY = 0x5041_4C4F
# The isolation the writer's connection returns to after an append in autocommit.
_DEFAULT_ISOLATION = "READ COMMITTED"

CHAIN_INTACT = Gauge(
    "audit_chain_intact", "1 when the last verification of the access log held, else 0"
)
VERIFIED_AT = Gauge(
    "audit_last_verification_timestamp_seconds", "When the access log was last verified"
)
VERIFICATIONS = Counter(
    "audit_verifications_total", "Verifications of the access log by result", ["result"]
)

APPEND_BATCH = Histogram(
    "audit_append_batch_size",
    "Access-log records appended per commit (group commit)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
APPEND_FAILURES = Counter(
    "audit_append_failures_total",
    "Reads answered 503 because their access-log record was not committed, by reason",
    ["reason"],
)


def key_of(service: Service) -> bytes:
    """The audit key of the running gateway."""
    return str(getattr(service.settings, "audit_key", "")).encode()


class AuditUnavailable(Exception):
    """The access log could not take a record in time: the read must not be answered."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Pending:
    """A record waiting for the commit that holds it."""

    fields: dict[str, Any]
    done: asyncio.Future[None]
    abandoned: bool = False


def access(
    patient_id: str,
    actor: str,
    action: str,
    resource: str,
    *,
    actor_id: str | None = None,
    on_behalf_of: str | None = None,
    resource_id: str | None = None,
    outcome: str = "allowed",
    client_id: str | None = None,
    trace_id: str | None = None,
) -> dict[str, Any]:
    """The fields of one access, stamped now (the chain fields are set when appended)."""
    return {
        "patient_id": patient_id,
        "actor": actor,
        "action": action,
        "resource": resource,
        "at": datetime.now(UTC).replace(microsecond=0),
        "actor_id": _short(actor_id),
        "on_behalf_of": _short(on_behalf_of),
        "resource_id": _short(resource_id),
        "outcome": outcome,
        "client_id": _short(client_id),
        "trace_id": trace_id,
    }


def _chained(key: bytes, prev: str, accesses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The accesses as rows of the keyed chain after `prev`, in order."""
    rows: list[dict[str, Any]] = []
    for fields in accesses:
        record = AccessRecord(**fields, prev_hash=prev, hash="", chain=2)
        prev = keyed_access_hash(key, record)
        rows.append({**fields, "prev_hash": record.prev_hash, "hash": prev, "chain": 2})
    return rows


async def _append_rows(conn: AsyncConnection, key: bytes, accesses: list[dict[str, Any]]) -> str:
    """Append accesses to the keyed chain, in order, in one transaction; returns the new
    head."""
    async with conn.begin():
        # Held until commit: another gateway's writer waits, so the chain never forks.
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHAIN_LOCK_KEY})
        rows = _chained(key, await store.last_access_hash(conn), accesses)
        await store.append_access_rows(conn, rows)
    return str(rows[-1]["hash"])


async def _append_after(
    conn: AsyncConnection, key: bytes, head: str | None, accesses: list[dict[str, Any]]
) -> str:
    """Append accesses after `head` (the head this writer last appended) in one statement,
    one round trip (a transaction with the lock, the head's read and the commit were five:
    each a wait on the way to every answer and every pushed notification). When the head
    moved (another gateway appended, or `head` is unknown), under the lock as before.
    Returns the new head."""
    if head is not None:
        rows = _chained(key, head, accesses)
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            appended = await store.append_after_head(conn, head, rows, CHAIN_LOCK_KEY)
        except IntegrityError:
            appended = False  # another writer appended after `head` first
        finally:
            # Ends SQLAlchemy's own bookkeeping of the statement (nothing is sent in
            # autocommit), so the connection's isolation can be set back.
            await conn.rollback()
            await conn.execution_options(isolation_level=_DEFAULT_ISOLATION)
        if appended:
            return str(rows[-1]["hash"])
    return await _append_rows(conn, key, accesses)


async def record_access(
    db: Database,
    key: bytes,
    patient_id: str,
    actor: str,
    action: str,
    resource: str,
    *,
    actor_id: str | None = None,
    on_behalf_of: str | None = None,
    resource_id: str | None = None,
    outcome: str = "allowed",
    client_id: str | None = None,
    trace_id: str | None = None,
) -> None:
    """Append one access (or refused attempt) to the keyed chain in its own transaction
    (tools and tests; the running gateway appends through its `AuditWriter`)."""
    fields = access(
        patient_id,
        actor,
        action,
        resource,
        actor_id=actor_id,
        on_behalf_of=on_behalf_of,
        resource_id=resource_id,
        outcome=outcome,
        client_id=client_id,
        trace_id=trace_id,
    )
    async with db.engine.connect() as conn:
        await _append_rows(conn, key, [fields])


@dataclass
class AuditWriter:
    """Group commit of the access log: `append` returns once the record is committed."""

    db: Database
    key: bytes
    max_queue: int = 1000
    max_batch: int = 200
    timeout_s: float = 5.0
    _queue: deque[_Pending] = field(default_factory=deque)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _closing: bool = False
    # The writer's own connection, kept between commits: a pooled checkout would ping the
    # server first (three more round trips per commit).
    _conn: AsyncConnection | None = None
    # The chain's head as this writer left it (None: read it under the lock next time).
    _head: str | None = None

    def start(self) -> None:
        """Start the writer task."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def stop(self) -> None:
        """Append what is queued, then stop; bounded by the commit timeout (a database that
        hangs must not hang the shutdown): what is left then is refused, not answered."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), self.timeout_s)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        while self._queue:
            pending = self._queue.popleft()
            if not pending.done.done():
                pending.done.set_exception(AuditUnavailable("writer_stopped"))
                pending.done.exception()
        await self._disconnect()

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing left to close
                await conn.close()

    async def append(self, fields: dict[str, Any]) -> None:
        """Queue one access and wait for the commit that holds it."""
        if self._closing or self._task is None or self._task.done():
            raise AuditUnavailable("writer_stopped")
        if len(self._queue) >= self.max_queue:
            raise AuditUnavailable("queue_full")
        pending = _Pending(fields, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._wake.set()
        try:
            # shield: a caller that gives up must not cancel a commit other callers share.
            await asyncio.wait_for(asyncio.shield(pending.done), self.timeout_s)
        except TimeoutError as exc:
            # Not yet taken into a batch: leave it out (its read is not answered either).
            pending.abandoned = True
            raise AuditUnavailable("timeout") from exc
        except asyncio.CancelledError:
            pending.abandoned = True
            raise

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch: list[_Pending] = []
                while self._queue and len(batch) < self.max_batch:
                    pending = self._queue.popleft()
                    if not pending.abandoned:
                        batch.append(pending)
                if batch:
                    await self._commit(batch)
            if self._closing and not self._queue:
                return

    async def _commit(self, batch: list[_Pending]) -> None:
        accesses = [p.fields for p in batch]
        try:
            try:
                if self._conn is None:
                    self._conn = await self.db.engine.connect()
                self._head = await _append_after(self._conn, self.key, self._head, accesses)
            except Exception:
                # The kept connection may have died while idle (a database restart): once
                # more on a fresh one. Were the first commit applied after all, its rows
                # are there twice, and the chain is still whole (read again under the lock).
                self._head = None
                await self._disconnect()
                self._conn = await self.db.engine.connect()
                self._head = await _append_rows(self._conn, self.key, accesses)
        except Exception as exc:  # the database is away: these reads are not answered
            self._head = None
            log.warning("gateway.audit_append_failed", error=type(exc).__name__, n=len(batch))
            await self._disconnect()
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_exception(AuditUnavailable("commit_failed"))
                    # Retrieved here so a caller that gave up leaves no unretrieved error.
                    pending.done.exception()
            return
        APPEND_BATCH.observe(len(batch))
        for pending in batch:
            if not pending.done.done():
                pending.done.set_result(None)


def writer_of(service: Service) -> AuditWriter | None:
    """The running gateway's access-log writer (None before start-up)."""
    writer: AuditWriter | None = service.state.get("audit_writer")
    return writer


def _short(value: str | None) -> str | None:
    return value[:200] if value else value


async def record(
    request: Request,
    action: str,
    resource: str,
    *,
    resource_id: str | None = None,
    outcome: str = "allowed",
) -> None:
    """Record what the request's authenticated caller did (or was refused)."""
    caller = request.state.caller
    service = request.app.state.service
    if resource_id is None and request.path_params:
        # The record the route names (`/me/appointments/{appointment_id}` ...).
        resource_id = str(next(iter(request.path_params.values())))
    trace = trace_id_hex()
    fields = access(
        caller.patient_id,
        caller.actor,
        action,
        resource,
        actor_id=caller.actor_id,  # `RelatedPerson/<id>` when a caregiver acts
        on_behalf_of=caller.token.patient_fhir_id,
        resource_id=resource_id,
        outcome=outcome,
        client_id=caller.token.client_id,
        trace_id=trace if trace and set(trace) != {"0"} else None,
    )
    writer = writer_of(service)
    try:
        if writer is None:
            raise AuditUnavailable("writer_stopped")
        await writer.append(fields)
    except AuditUnavailable as exc:
        APPEND_FAILURES.labels(exc.reason).inc()
        raise HTTPException(
            503,
            "The access log could not record this request; try again shortly.",
            {"Retry-After": "1"},
        ) from exc


def read_checkpoints(directory: str) -> list[Checkpoint]:
    """The checkpoints of every gateway in the anchor directory, oldest row first."""
    if not directory or not os.path.isdir(directory):
        return []
    out: list[Checkpoint] = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                data: dict[str, Any] = json.loads(line)
                out.append(Checkpoint(**data))
    return sorted(out, key=lambda c: c.last_id)


async def checkpoint(key: bytes, directory: str, verified: list[AccessRecord]) -> Checkpoint | None:
    """Append a signed checkpoint of the end of `verified` (the log as it was verified) to
    this gateway's file in `directory` (when rows were added since the newest checkpoint of
    any gateway). Rows appended since the verification are anchored by the next round."""
    if not directory or not verified:
        return None
    last = verified[-1]
    anchors = await asyncio.to_thread(read_checkpoints, directory)
    if anchors and anchors[-1].last_id >= last.id:
        return None
    signed = Checkpoint(
        last_id=last.id,
        count=len(verified),
        head_hash=last.hash,
        at=datetime.now(UTC).isoformat(timespec="seconds"),
    ).signed(key)
    await asyncio.to_thread(_append, directory, json.dumps(asdict(signed)) + "\n")
    return signed


def _append(directory: str, line: str) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    # One file per gateway: replicas never append to the same file.
    path = Path(directory) / f"{socket.gethostname()}.jsonl"
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "a") as out:
        out.write(line)


async def _verified(
    db: Database, key: bytes, checkpoint_dir: str
) -> tuple[AuditVerdict, list[AccessRecord]]:
    """The verdict on the whole chain and the rows it was reached on."""
    async with db.sessions() as session:
        rows = await store.whole_access_log(session)
    try:
        anchors = await asyncio.to_thread(read_checkpoints, checkpoint_dir)
    except (ValueError, TypeError) as exc:
        return AuditVerdict(False, len(rows), 0, None, f"checkpoint file unreadable: {exc}"), []
    # Hashing every row is seconds of CPU on a long log: in a thread, so the event loop
    # (patients' requests, the audit writer, notifications) keeps its turns meanwhile.
    verdict = await asyncio.to_thread(verify_log, rows, anchors, key)
    return verdict, rows


async def verify_all(db: Database, key: bytes, checkpoint_dir: str = "") -> AuditVerdict:
    """Verify the whole chain against the key and every checkpoint (reads every row)."""
    return (await _verified(db, key, checkpoint_dir))[0]


async def verify(service: Service) -> AuditVerdict:
    """Verify the running gateway's log against its key and its checkpoint file."""
    return await verify_all(service.db, key_of(service), _checkpoint_dir(service))


def _checkpoint_dir(service: Service) -> str:
    return str(getattr(service.settings, "audit_checkpoint_dir", ""))


def report(service_name: str, verdict: AuditVerdict) -> None:
    """Publish a verification's outcome as metrics (and a security event when it failed)."""
    CHAIN_INTACT.set(1 if verdict.intact else 0)
    VERIFIED_AT.set(datetime.now(UTC).timestamp())
    VERIFICATIONS.labels("intact" if verdict.intact else "broken").inc()
    if not verdict.intact:
        SECURITY_EVENTS.labels(service_name, "audit_verification_failed").inc()
        log.error("gateway.audit_broken", first_broken_id=verdict.first_broken_id)


async def anchor_and_verify(service: Service) -> AuditVerdict:
    """One scheduled round: verify what is there, then anchor what was verified."""
    directory = _checkpoint_dir(service)
    verdict, rows = await _verified(service.db, key_of(service), directory)
    if verdict.intact:
        # Only an intact log is anchored (the very rows verified, not rows appended since):
        # a checkpoint must never bless a tampered one.
        await checkpoint(key_of(service), directory, rows)
    report(service.settings.service_name, verdict)
    return verdict


async def scheduled_verification(service: Service) -> None:
    """Anchor and verify every AUDIT_VERIFY_INTERVAL_S (the first round at start-up)."""
    interval = float(getattr(service.settings, "audit_verify_interval_s", 0.0))
    while interval > 0:
        try:
            await anchor_and_verify(service)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database is away: the next round tries again
            log.warning("gateway.audit_verification_failed", error=type(exc).__name__)
        await asyncio.sleep(interval)
