"""The records service's tables and all its SQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Select, String, Text, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from servicekit.db import new_metadata


class Base(DeclarativeBase):
    """Declarative base of the records tables."""

    metadata = new_metadata()


metadata = Base.metadata


class LabReport(Base):
    """A lab report (DiagnosticReport) with its result lines, as the patient sees it."""

    __tablename__ = "lab_reports"

    report_fhir_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(32))
    code: Mapped[dict[str, Any]] = mapped_column(JSON)
    category: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    effective: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    issued: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    performer: Mapped[list[str]] = mapped_column(JSON)
    observations: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    source_version: Mapped[str] = mapped_column(String(64))
    source_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Medication(Base):
    """A medication order from the EHR (MedicationRequest)."""

    __tablename__ = "medications"

    fhir_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(32))
    medication: Mapped[dict[str, Any]] = mapped_column(JSON)
    dosage_text: Mapped[str | None] = mapped_column(Text)
    authored_on: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    prescriber: Mapped[str | None] = mapped_column(String(200))
    source_version: Mapped[str] = mapped_column(String(64))
    source_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ChartEntry(Base):
    """Any other chart entry (allergy, condition, immunization, document, vital sign)."""

    __tablename__ = "chart_entries"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    fhir_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    version_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(32))
    code: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    display: Mapped[str | None] = mapped_column(String(500))
    value: Mapped[str | None] = mapped_column(String(500))
    effective: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    related_fhir_ids: Mapped[list[str]] = mapped_column(
        JSON, default=list, server_default=text("'[]'")
    )

    __table_args__ = (Index("ix_chart_entries_patient_kind", "patient_id", "kind"),)


async def get_lab_report(session: AsyncSession, report_fhir_id: str) -> LabReport | None:
    """One lab report by its EHR id."""
    return await session.get(LabReport, report_fhir_id)


async def lab_reports_of(session: AsyncSession, patient_id: str) -> list[LabReport]:
    """A patient's lab reports, newest first."""
    stmt = (
        select(LabReport)
        .where(LabReport.patient_id == patient_id)
        .order_by(LabReport.effective.desc().nulls_last(), LabReport.report_fhir_id)
    )
    return list((await session.execute(stmt)).scalars())


async def get_medication(session: AsyncSession, fhir_id: str) -> Medication | None:
    """One medication order by its EHR id."""
    return await session.get(Medication, fhir_id)


async def medications_of(session: AsyncSession, patient_id: str) -> list[Medication]:
    """A patient's medication orders, newest first."""
    stmt = (
        select(Medication)
        .where(Medication.patient_id == patient_id)
        .order_by(Medication.authored_on.desc().nulls_last(), Medication.fhir_id)
    )
    return list((await session.execute(stmt)).scalars())


async def get_chart_entry(
    session: AsyncSession, resource_type: str, fhir_id: str
) -> ChartEntry | None:
    """One chart entry by its EHR type and id."""
    return await session.get(ChartEntry, (resource_type, fhir_id))


async def chart_entries_of(session: AsyncSession, patient_id: str, kind: str) -> list[ChartEntry]:
    """A patient's chart entries of one kind, newest first."""
    stmt = (
        select(ChartEntry)
        .where(ChartEntry.patient_id == patient_id, ChartEntry.kind == kind)
        .order_by(ChartEntry.effective.desc().nulls_last(), ChartEntry.fhir_id)
    )
    return list((await session.execute(stmt)).scalars())


async def _imported_not_detailed(
    session: AsyncSession, patient_id: str, resource_type: str, detailed: Select[tuple[str]]
) -> list[ChartEntry]:
    stmt = (
        select(ChartEntry)
        .where(
            ChartEntry.patient_id == patient_id,
            ChartEntry.resource_type == resource_type,
            ChartEntry.fhir_id.not_in(detailed),
        )
        .order_by(ChartEntry.effective.desc().nulls_last(), ChartEntry.fhir_id)
    )
    return list((await session.execute(stmt)).scalars())


async def imported_reports_of(session: AsyncSession, patient_id: str) -> list[ChartEntry]:
    """Back-filled lab reports that no live `lab.resulted` has detailed, newest first."""
    detailed = select(LabReport.report_fhir_id).where(LabReport.patient_id == patient_id)
    return await _imported_not_detailed(session, patient_id, "DiagnosticReport", detailed)


async def imported_observations(
    session: AsyncSession, patient_id: str, fhir_ids: list[str]
) -> list[ChartEntry]:
    """Back-filled Observations of a patient by id."""
    if not fhir_ids:
        return []
    stmt = select(ChartEntry).where(
        ChartEntry.patient_id == patient_id,
        ChartEntry.resource_type == "Observation",
        ChartEntry.fhir_id.in_(fhir_ids),
    )
    return list((await session.execute(stmt)).scalars())


async def imported_medications_of(session: AsyncSession, patient_id: str) -> list[ChartEntry]:
    """Back-filled medication orders that no live `medication.changed` has detailed."""
    detailed = select(Medication.fhir_id).where(Medication.patient_id == patient_id)
    return await _imported_not_detailed(session, patient_id, "MedicationRequest", detailed)
