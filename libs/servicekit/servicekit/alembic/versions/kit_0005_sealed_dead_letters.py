"""sealed dead letters: the key id beside the dead-letter and parked-message payloads

Revision ID: kit_0005
Revises: kit_0004
Create Date: 2026-12-03 20:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "kit_0005"
down_revision: str | Sequence[str] | None = "kit_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("dead_letters", sa.Column("key_id", sa.String(length=64), nullable=True))
    op.add_column("parked_messages", sa.Column("key_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("parked_messages", "key_id")
    op.drop_column("dead_letters", "key_id")
