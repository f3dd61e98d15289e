"""results with history and documents

Results get a table of their own (`lab_results`, the same rows for live and back-filled
results), grouped by report (`lab_report_results`), with the versions an amendment
replaced (`lab_result_versions`); reports get a non-null sort time and category codes for
paging and filters; documents keep their attachments. Live reports already stored are
carried over with their results; reports back-filled before (text values only) are shown
again, in full, after the patient's next back-fill.

Revision ID: 5c1e0a7d2b94
Revises: e9216765b9cf
Create Date: 2026-12-03 10:20:00.000000
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "5c1e0a7d2b94"
down_revision: str | Sequence[str] | None = "e9216765b9cf"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _aware(value: Any) -> datetime | None:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value if isinstance(value, datetime) else None


def upgrade() -> None:
    op.create_table(
        "lab_report_results",
        sa.Column("report_fhir_id", sa.String(length=64), nullable=False),
        sa.Column("observation_fhir_id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "report_fhir_id", "observation_fhir_id", name=op.f("pk_lab_report_results")
        ),
    )
    with op.batch_alter_table("lab_report_results", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_lab_report_results_observation_fhir_id"),
            ["observation_fhir_id"],
            unique=False,
        )
    op.create_table(
        "lab_results",
        sa.Column("observation_fhir_id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("sort_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version_id", sa.String(length=64), nullable=True),
        sa.Column("source_updated", sa.DateTime(timezone=True), nullable=True),
        sa.Column("category_codes", sa.String(length=500), nullable=False, server_default="|"),
        sa.PrimaryKeyConstraint("observation_fhir_id", name=op.f("pk_lab_results")),
    )
    with op.batch_alter_table("lab_results", schema=None) as batch_op:
        batch_op.create_index(
            "ix_lab_results_patient_kind_code_sort",
            ["patient_id", "kind", "code", "sort_at"],
            unique=False,
        )
    op.create_table(
        "lab_result_versions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("observation_fhir_id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("replaced_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["observation_fhir_id"],
            ["lab_results.observation_fhir_id"],
            name=op.f("fk_lab_result_versions_observation_fhir_id_lab_results"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lab_result_versions")),
    )
    with op.batch_alter_table("lab_result_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_lab_result_versions_observation_fhir_id"),
            ["observation_fhir_id"],
            unique=False,
        )
    op.create_table(
        "document_contents",
        sa.Column("document_fhir_id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("content_type", sa.String(length=200), nullable=True),
        sa.Column("title", sa.String(length=500), nullable=True),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("document_fhir_id", "position", name=op.f("pk_document_contents")),
    )
    with op.batch_alter_table("chart_entries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("attachments", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
    with op.batch_alter_table("lab_reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sort_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("category_codes", sa.String(length=500), nullable=False, server_default="|")
        )
    _carry_over()
    with op.batch_alter_table("lab_reports", schema=None) as batch_op:
        batch_op.alter_column("sort_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.create_index("ix_lab_reports_patient_sort", ["patient_id", "sort_at"])


def _carry_over() -> None:
    """Live reports stored before: their results move to `lab_results`."""
    bind = op.get_bind()
    reports = sa.table(
        "lab_reports",
        sa.column("report_fhir_id"),
        sa.column("patient_id"),
        sa.column("effective"),
        sa.column("issued"),
        sa.column("source_updated"),
        sa.column("category"),
        sa.column("observations"),
        sa.column("sort_at"),
        sa.column("category_codes"),
    )
    results = sa.table(
        "lab_results",
        *(sa.column(c) for c in ("observation_fhir_id", "patient_id", "kind", "code", "status")),
        sa.column("data", sa.JSON()),
        *(sa.column(c) for c in ("sort_at", "version_id", "source_updated", "category_codes")),
    )
    links = sa.table(
        "lab_report_results",
        sa.column("report_fhir_id"),
        sa.column("observation_fhir_id"),
        sa.column("position"),
    )
    taken: set[str] = set()
    for row in bind.execute(sa.select(reports)).mappings().all():
        sort_at = _aware(row["effective"]) or _aware(row["issued"]) or _aware(row["source_updated"])
        codes = [c.get("code") for c in _json(row["category"]) or [] if isinstance(c, dict)]
        bind.execute(
            reports.update()
            .where(reports.c.report_fhir_id == row["report_fhir_id"])
            .values(sort_at=sort_at, category_codes="|" + "".join(f"{c}|" for c in codes if c))
        )
        for position, obs in enumerate(_json(row["observations"]) or []):
            oid = obs.get("observation_fhir_id")
            if not oid or oid in taken:
                continue
            taken.add(oid)
            effective = _aware(obs.get("effective"))
            bind.execute(
                results.insert().values(
                    observation_fhir_id=oid,
                    patient_id=row["patient_id"],
                    kind="lab-result",
                    code=str((obs.get("code") or {}).get("code", ""))[:64],
                    status=str(obs.get("status", "unknown"))[:32],
                    data=obs,
                    sort_at=effective or sort_at,
                    version_id=None,
                    source_updated=None,
                    category_codes="|",
                )
            )
            bind.execute(
                links.insert().values(
                    report_fhir_id=row["report_fhir_id"], observation_fhir_id=oid, position=position
                )
            )


def downgrade() -> None:
    with op.batch_alter_table("lab_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_lab_reports_patient_sort")
        batch_op.drop_column("category_codes")
        batch_op.drop_column("sort_at")
    with op.batch_alter_table("chart_entries", schema=None) as batch_op:
        batch_op.drop_column("attachments")
    op.drop_table("document_contents")
    with op.batch_alter_table("lab_result_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lab_result_versions_observation_fhir_id"))
    op.drop_table("lab_result_versions")
    with op.batch_alter_table("lab_results", schema=None) as batch_op:
        batch_op.drop_index("ix_lab_results_patient_kind_code_sort")
    op.drop_table("lab_results")
    with op.batch_alter_table("lab_report_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lab_report_results_observation_fhir_id"))
    op.drop_table("lab_report_results")
