"""outbox rows remember where the broker stored them

Revision ID: kit_0002
Revises: kit_0001
Create Date: 2026-12-03 09:40:00

Where the broker stored each row (partition, offset: for operators) and which cluster
acknowledged it: a broker that comes back as a new cluster (a memory-only broker restarted)
has lost what the old one acknowledged, and the relay publishes those rows again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "kit_0002"
down_revision: str | Sequence[str] | None = "kit_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("kafka_partition", sa.Integer(), nullable=True))
    op.add_column("outbox", sa.Column("kafka_offset", sa.BigInteger(), nullable=True))
    op.add_column("outbox", sa.Column("broker_cluster", sa.String(length=64), nullable=True))
    op.create_index("ix_outbox_broker_cluster", "outbox", ["status", "broker_cluster"])
    # The inbox is purged by age (servicekit.outbox.OutboxRelay.purge_inbox).
    op.create_index("ix_inbox_handled_at", "inbox", ["handled_at"])


def downgrade() -> None:
    op.drop_index("ix_inbox_handled_at", table_name="inbox")
    op.drop_index("ix_outbox_broker_cluster", table_name="outbox")
    op.drop_column("outbox", "broker_cluster")
    op.drop_column("outbox", "kafka_offset")
    op.drop_column("outbox", "kafka_partition")
