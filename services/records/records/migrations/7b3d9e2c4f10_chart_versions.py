"""chart versions: a number per patient's chart, new in every transaction writing it

Revision ID: 7b3d9e2c4f10
Revises: 5c1e0a7d2b94
Create Date: 2026-12-07 21:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7b3d9e2c4f10"
down_revision: str | Sequence[str] | None = "5c1e0a7d2b94"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(sa.schema.CreateSequence(sa.Sequence("chart_version_seq")))
    op.create_table(
        "chart_versions",
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_chart_versions")),
    )


def downgrade() -> None:
    op.drop_table("chart_versions")
    op.execute(sa.schema.DropSequence(sa.Sequence("chart_version_seq")))
