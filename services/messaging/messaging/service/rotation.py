"""Key rotation: bring every encrypted column to the active key."""

from __future__ import annotations

from messaging import store
from messaging.service.base import MessagingBase
from servicekit import sealing


class Rotation(MessagingBase):
    """Re-encryption after a key rotation."""

    # -- key rotation ---------------------------------------------------------------------

    def _reencrypt_row(
        self, row: store.Thread | store.Message | store.Attachment | store.PoolItem
    ) -> None:
        if isinstance(row, store.Thread):
            if row.subject_enc is not None:
                row.subject_enc = self.cipher.rewrap(row.subject_enc)
            elif row.subject is not None:
                self._seal_thread(row, row.subject)
        elif isinstance(row, store.Message):
            if row.body_enc is not None:
                row.body_enc = self.cipher.rewrap(row.body_enc)
            else:
                self._seal_message(row, row.body or "")
        elif isinstance(row, store.Attachment):
            row.title_enc = self.cipher.rewrap(row.title_enc)
            row.data_enc = self.cipher.rewrap(row.data_enc)
        elif row.summary_enc is not None:
            row.summary_enc = self.cipher.rewrap(row.summary_enc)
        else:
            self._seal_item(row, row.summary or "")
        row.key_id = self.cipher.active_key_id

    async def reencrypt(self) -> dict[str, int]:
        """Bring every encrypted column to the active key (and encrypt rows written before
        encryption existed), in short batches; returns the rows changed per table."""
        changed: dict[str, int] = {}
        active = self.cipher.active_key_id
        for table in store.ENCRYPTED_TABLES:
            name = str(table.__tablename__)
            changed[name] = 0
            while True:
                async with self.db.transaction() as session:
                    rows = await store.rows_to_reencrypt(
                        session, table, active, self.settings.rotation_batch_size
                    )
                    for row in rows:
                        self._reencrypt_row(row)
                changed[name] += len(rows)
                if len(rows) < self.settings.rotation_batch_size:
                    break
        # The kit's outbox payloads and stored answers carry message bodies too.
        return changed | await sealing.rewrap(
            self.db, self.cipher, self.settings.rotation_batch_size
        )

    async def encryption_status(self) -> dict[str, int]:
        """Rows per table not yet on the active key."""
        async with self.db.sessions() as session:
            own = await store.count_not_on_key(session, self.cipher.active_key_id)
        return own | await sealing.count_not_on_key(self.db, self.cipher.active_key_id)
