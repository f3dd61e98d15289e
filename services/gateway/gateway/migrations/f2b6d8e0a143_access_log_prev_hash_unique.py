"""access log: a row is the successor of one row at most (unique prev_hash)

The chain cannot fork: two appends from the same head cannot both commit, whether or not
the writer holds the chain's lock (the gateway's writer appends in one statement when it
knows the head, under the lock otherwise).

Revision ID: f2b6d8e0a143
Revises: e5b8d2f4a617
Create Date: 2026-12-06 07:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "f2b6d8e0a143"
down_revision: str | Sequence[str] | None = "e5b8d2f4a617"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("uq_access_log_prev_hash", "access_log", ["prev_hash"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_access_log_prev_hash", table_name="access_log")
