"""notification trace context and EHR write time

Revision ID: c3f1e07a5d21
Revises: b526d4914877
Create Date: 2026-12-03 09:55:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c3f1e07a5d21"
down_revision: str | Sequence[str] | None = "b526d4914877"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The SSE push continues the event's trace and measures EHR write -> push: both need
    # what the consumer knew when it stored the notification.
    with op.batch_alter_table("patient_notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("traceparent", sa.String(length=55), nullable=True))
        batch_op.add_column(sa.Column("source_time", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("patient_notifications", schema=None) as batch_op:
        batch_op.drop_column("source_time")
        batch_op.drop_column("traceparent")
