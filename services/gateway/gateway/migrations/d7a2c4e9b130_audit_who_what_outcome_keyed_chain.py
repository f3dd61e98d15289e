"""audit: who, on whose behalf, which record, outcome, client, trace; keyed chain; anchors

Revision ID: d7a2c4e9b130
Revises: c3f1e07a5d21
Create Date: 2026-12-03 13:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d7a2c4e9b130"
down_revision: str | Sequence[str] | None = "c3f1e07a5d21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows written before this revision keep their unkeyed hashes (chain 1); new rows are
    # keyed (HMAC, chain 2) and carry who saw what (HIPAA 164.312(b)).
    with op.batch_alter_table("access_log", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("chain", sa.SmallInteger(), nullable=False, server_default="1")
        )
        batch_op.add_column(sa.Column("actor_id", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("on_behalf_of", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("resource_id", sa.String(length=200), nullable=True))
        batch_op.add_column(
            sa.Column("outcome", sa.String(length=16), nullable=False, server_default="allowed")
        )
        batch_op.add_column(sa.Column("client_id", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("trace_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("access_log", schema=None) as batch_op:
        for column in (
            "trace_id",
            "client_id",
            "outcome",
            "resource_id",
            "on_behalf_of",
            "actor_id",
            "chain",
        ):
            batch_op.drop_column(column)
