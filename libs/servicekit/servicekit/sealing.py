"""Event payloads and stored answers encrypted at rest, in the kit's own tables.

A service that holds patients' data (every service with a `ServiceDefinition.cipher`)
would leak it through the kit's tables otherwise: the outbox keeps every event it
published for replay (a message body, a symptom description, a lab value), the
idempotency table keeps the answer to every command (which echoes the message), and the
dead-letter and parked-message tables keep whole payloads of events a consumer gave up on
or held back. With a cipher the kit seals those four columns with it: the relay opens a
payload just before publishing, a replay opens its stored answer, a re-drive or release
opens the event it handles again; without one they stay plain text.

A sealed value is `sealed:` + base64 of a `servicekit.crypto` envelope bound to its table,
column and row (associated data), so a value copied into another row fails to open. The
key id sits in a plain `key_id` column beside it, so a rotation finds what to re-wrap in
one query (`count_not_on_key`, `rewrap`). Rows written before sealing existed stay readable
and are sealed by the next rotation's re-wrap.
"""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import InstrumentedAttribute

from servicekit.crypto import Cipher
from servicekit.db import Database
from servicekit.tables import DeadLetterRow, IdempotencyRow, OutboxRow, ParkedRow

PREFIX = "sealed:"


def outbox_aad(event_id: str) -> str:
    """Associated data of an outbox payload."""
    return f"outbox:payload:{event_id}"


def answer_aad(scope: str, key: str) -> str:
    """Associated data of a stored idempotent answer."""
    return f"idempotency_keys:response_body:{scope}:{key}"


def dead_letter_aad(consumer: str, topic: str, partition: int, offset: int) -> str:
    """Associated data of a dead letter's payload: the message it was, where it came from."""
    return f"dead_letters:payload:{consumer}:{topic}:{partition}:{offset}"


def parked_aad(consumer: str, topic: str, partition: int, offset: int) -> str:
    """Associated data of a parked message's payload."""
    return f"parked_messages:payload:{consumer}:{topic}:{partition}:{offset}"


def seal(cipher: Cipher | None, text: str, aad: str) -> tuple[str, str | None]:
    """`text` as stored (sealed when there is a cipher) and the key id it is under."""
    if cipher is None:
        return text, None
    envelope = cipher.encrypt_text(text, aad)
    return PREFIX + base64.b64encode(envelope).decode("ascii"), cipher.active_key_id


def unseal(cipher: Cipher | None, stored: str, aad: str) -> str:
    """The text of a stored value; plain text (from before sealing) passes through.

    A sealed value without a cipher is a configuration error (the service lost its keys),
    raised as `servicekit.crypto.DecryptionError` by the cipher or here."""
    if not stored.startswith(PREFIX):
        return stored
    if cipher is None:
        from servicekit.crypto import DecryptionError

        raise DecryptionError("a sealed value, and this service has no encryption keys")
    return cipher.decrypt_text(base64.b64decode(stored[len(PREFIX) :]), aad)


def _rewrapped(cipher: Cipher, stored: str, aad: str) -> str:
    if stored.startswith(PREFIX):
        envelope = base64.b64decode(stored[len(PREFIX) :])
        return PREFIX + base64.b64encode(cipher.rewrap(envelope)).decode("ascii")
    return seal(cipher, stored, aad)[0]


_SEALED: tuple[tuple[type[Any], InstrumentedAttribute[Any]], ...] = (
    (OutboxRow, OutboxRow.payload),
    (IdempotencyRow, IdempotencyRow.response_body),
    (DeadLetterRow, DeadLetterRow.payload),
    (ParkedRow, ParkedRow.payload),
)


def _not_on(model: type[Any], active_key_id: str) -> Any:
    return or_(model.key_id.is_(None), model.key_id != active_key_id)


async def count_not_on_key(db: Database, active_key_id: str) -> dict[str, int]:
    """Rows per kit table not yet sealed under the active key."""
    counts: dict[str, int] = {}
    async with db.sessions() as session:
        for model, _column in _SEALED:
            stmt = select(func.count()).select_from(model).where(_not_on(model, active_key_id))
            counts[str(model.__tablename__)] = int((await session.execute(stmt)).scalar_one())
    return counts


def _aad_of(row: Any) -> str:
    if isinstance(row, OutboxRow):
        return outbox_aad(row.event_id)
    if isinstance(row, DeadLetterRow):
        return dead_letter_aad(row.consumer, row.topic, row.partition, row.offset)
    if isinstance(row, ParkedRow):
        return parked_aad(row.consumer, row.topic, row.partition, row.offset)
    return answer_aad(row.scope, row.key)


async def rewrap(db: Database, cipher: Cipher, batch: int) -> dict[str, int]:
    """Seal every kit row under the active key, in short transactions; rows changed per
    table. Rows already under it are left alone, so running it again changes nothing."""
    changed: dict[str, int] = {}
    active = cipher.active_key_id
    for model, column in _SEALED:
        name = str(model.__tablename__)
        changed[name] = 0
        while True:
            async with db.transaction() as session:
                stmt = (
                    select(model)
                    .where(_not_on(model, active))
                    .limit(batch)
                    .with_for_update(skip_locked=True)
                )
                rows = list((await session.execute(stmt)).scalars())
                for row in rows:
                    setattr(
                        row, column.key, _rewrapped(cipher, getattr(row, column.key), _aad_of(row))
                    )
                    row.key_id = active
            changed[name] += len(rows)
            if len(rows) < batch:
                break
    return changed


class KitSealing:
    """The rotation use cases of a service whose only sealed rows are the kit's (records,
    scheduling, the gateway, the ehr-connector): `servicekit.ops_api.encryption_routes`
    serves them."""

    def __init__(self, db: Database, cipher: Cipher, batch: int = 200) -> None:
        self.db = db
        self.cipher = cipher
        self.batch = batch

    async def reencrypt(self) -> dict[str, int]:
        """Seal every kit row under the active key; rows changed per table."""
        return await rewrap(self.db, self.cipher, self.batch)

    async def encryption_status(self) -> dict[str, int]:
        """Rows per kit table not yet under the active key."""
        return await count_not_on_key(self.db, self.cipher.active_key_id)
