"""sealed payloads: the key id beside the outbox payload and the stored answer

Revision ID: kit_0004
Revises: kit_0003
Create Date: 2026-12-03 17:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "kit_0004"
down_revision: str | Sequence[str] | None = "kit_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("key_id", sa.String(length=64), nullable=True))
    op.add_column("idempotency_keys", sa.Column("key_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("idempotency_keys", "key_id")
    op.drop_column("outbox", "key_id")
