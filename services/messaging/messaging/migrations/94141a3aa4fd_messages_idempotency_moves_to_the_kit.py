"""messages: the client's idempotency key moves to the kit's table

The kit's `servicekit.idempotency` keeps (scope, key, request hash, answer) for every
service's commands; a message no longer carries the key itself. Keys are kept for
minutes, not for ever, so the ones stored on old messages are dropped rather than moved.

Revision ID: 94141a3aa4fd
Revises: fb6e3368dbd1
Create Date: 2026-12-03 17:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "94141a3aa4fd"
down_revision: str | Sequence[str] | None = "fb6e3368dbd1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_constraint("uq_messages_idempotency_key", type_="unique")
        batch_op.drop_column("idempotency_key")


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=128), nullable=True))
        batch_op.create_unique_constraint(
            "uq_messages_idempotency_key", ["patient_id", "idempotency_key"]
        )
