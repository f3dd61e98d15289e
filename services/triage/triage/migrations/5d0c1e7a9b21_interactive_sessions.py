"""interactive triage sessions: status, answers, flags, pending questions

Revision ID: 5d0c1e7a9b21
Revises: 167ba7e62426
Create Date: 2026-12-03 09:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5d0c1e7a9b21"
down_revision: str | Sequence[str] | None = "167ba7e62426"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("triage_sessions") as batch:
        batch.alter_column("completed_at", existing_type=sa.DateTime(timezone=True), nullable=True)
        batch.add_column(
            sa.Column("status", sa.String(length=16), server_default="completed", nullable=False)
        )
        batch.add_column(sa.Column("age_months", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("answers", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("flags", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("questions", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("advice", sa.Text(), nullable=True))
        batch.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("triage_sessions") as batch:
        for column in ("started_at", "advice", "questions", "flags", "answers", "age_months"):
            batch.drop_column(column)
        batch.drop_column("status")
        batch.alter_column("completed_at", existing_type=sa.DateTime(timezone=True), nullable=False)
