"""triage text, flag evidence and answers encrypted at rest

Revision ID: 8c41d2e7f0a3
Revises: 5d0c1e7a9b21
Create Date: 2026-12-03 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8c41d2e7f0a3"
down_revision: str | Sequence[str] | None = "5d0c1e7a9b21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows written before stay readable in the plain columns until re-encrypted
    # (`POST /ops/encryption/reencrypt`).
    with op.batch_alter_table("triage_sessions") as batch:
        batch.alter_column("text", existing_type=sa.Text(), nullable=True)
        batch.add_column(sa.Column("private_enc", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("key_id", sa.String(length=64), nullable=True))
        batch.create_index("ix_triage_sessions_key_id", ["key_id"])


def downgrade() -> None:
    with op.batch_alter_table("triage_sessions") as batch:
        batch.drop_index("ix_triage_sessions_key_id")
        batch.drop_column("key_id")
        batch.drop_column("private_enc")
