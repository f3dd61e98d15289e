"""one patient-link table: `inbound_patient_links` folds into `patient_links`

The outbound side kept our patient → EHR Patient (from bookings and links), the inbound side
EHR Patient → our patient (from links only), and the two could disagree: a patient known
from a booking alone had no inbound link, and a relink changed one table's row and not the
other's. The merge keeps, per portal patient and then per EHR Patient, the most recent
pair of either table (the latest link wins, as both sides did), and makes the EHR id unique.

Revision ID: 4f2a9c1d7e30
Revises: 9bd4e7a5579c
Create Date: 2026-12-04 14:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "4f2a9c1d7e30"
down_revision: str | Sequence[str] | None = "9bd4e7a5579c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TEMPORARY TABLE merged_patient_links AS
        WITH every_pair AS (
            SELECT patient_id, patient_fhir_id, updated_at AS at FROM patient_links
            UNION ALL
            SELECT patient_id, patient_fhir_id, linked_at FROM inbound_patient_links
        ), latest_per_patient AS (
            SELECT DISTINCT ON (patient_id) patient_id, patient_fhir_id, at
            FROM every_pair ORDER BY patient_id, at DESC
        )
        SELECT DISTINCT ON (patient_fhir_id) patient_id, patient_fhir_id, at
        FROM latest_per_patient ORDER BY patient_fhir_id, at DESC
        """
    )
    op.execute("DELETE FROM patient_links")
    op.execute(
        "INSERT INTO patient_links (patient_id, patient_fhir_id, updated_at)"
        " SELECT patient_id, patient_fhir_id, at FROM merged_patient_links"
    )
    op.execute("DROP TABLE merged_patient_links")
    op.create_index(
        "ux_patient_links_patient_fhir_id", "patient_links", ["patient_fhir_id"], unique=True
    )
    op.drop_index("ix_inbound_patient_links_patient_id", table_name="inbound_patient_links")
    op.drop_table("inbound_patient_links")


def downgrade() -> None:
    op.create_table(
        "inbound_patient_links",
        sa.Column("patient_fhir_id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("patient_fhir_id", name=op.f("pk_inbound_patient_links")),
    )
    op.create_index("ix_inbound_patient_links_patient_id", "inbound_patient_links", ["patient_id"])
    op.execute(
        "INSERT INTO inbound_patient_links (patient_fhir_id, patient_id, linked_at)"
        " SELECT patient_fhir_id, patient_id, updated_at FROM patient_links"
    )
    op.drop_index("ux_patient_links_patient_fhir_id", table_name="patient_links")
