"""caregiver grants: a patient's consent to a caregiver's (proxy) access

Revision ID: e5b8d2f4a617
Revises: d7a2c4e9b130
Create Date: 2026-12-03 20:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e5b8d2f4a617"
down_revision: str | Sequence[str] | None = "d7a2c4e9b130"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "caregiver_grants",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_fhir_id", sa.String(length=64), nullable=False),
        sa.Column("related_person_fhir_id", sa.String(length=64), nullable=False),
        sa.Column("parts", sa.ARRAY(sa.String(length=32)), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_caregiver_grants")),
    )
    op.create_index(
        "ix_caregiver_grants_patient",
        "caregiver_grants",
        ["patient_id", "related_person_fhir_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_caregiver_grants_patient", table_name="caregiver_grants")
    op.drop_table("caregiver_grants")
