"""The records service's tables and all its SQL."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    ColumnElement,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Select,
    Sequence,
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import BindParameter

from records.domain import EPOCH, Cursor
from servicekit.bulk import insert_rows
from servicekit.db import hold_keys, new_metadata


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
    """Legacy: the results as the first live events carried them (now in `lab_results`)."""
    source_version: Mapped[str] = mapped_column(String(64))
    source_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sort_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    """When the report sorts (effective, else issued, else last update): never null, so
    paging by (sort_at, id) is a total order."""
    category_codes: Mapped[str] = mapped_column(String(500), default="|", server_default="|")
    """The category codes as `|LAB|laboratory|`, for the `category` filter."""

    __table_args__ = (Index("ix_lab_reports_patient_sort", "patient_id", "sort_at"),)


class LabReportResult(Base):
    """Which results a report groups, in the report's order."""

    __tablename__ = "lab_report_results"

    report_fhir_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    observation_fhir_id: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer)


class LabResult(Base):
    """One result (a lab Observation or a vital sign), its current version.

    `data` is the result as `contracts.lab.LabObservation` JSON: the same shape whether it
    came from a live `lab.resulted` or from a back-fill.
    """

    __tablename__ = "lab_results"

    observation_fhir_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    code: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    sort_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    version_id: Mapped[str | None] = mapped_column(String(64))
    source_updated: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    category_codes: Mapped[str] = mapped_column(String(500), default="|", server_default="|")
    """The result's own category codes as `|laboratory|`: a laboratory result that no report
    groups is listed on its own."""

    __table_args__ = (
        Index("ix_lab_results_patient_kind_code_sort", "patient_id", "kind", "code", "sort_at"),
    )


class LabResultVersion(Base):
    """An earlier version of a result that an amendment or correction replaced."""

    __tablename__ = "lab_result_versions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    observation_fhir_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("lab_results.observation_fhir_id", ondelete="CASCADE"), index=True
    )
    version_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    replaced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DocumentContent(Base):
    """The content of a document's attachment, when the EHR sent it inline."""

    __tablename__ = "document_contents"

    document_fhir_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str | None] = mapped_column(String(200))
    title: Mapped[str | None] = mapped_column(String(500))
    content: Mapped[bytes] = mapped_column(LargeBinary)


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


# Never repeats, so a chart's version differs after any write, even one that recreates
# what was there before.
CHART_VERSION_SEQ = Sequence("chart_version_seq", metadata=metadata)


class ChartVersion(Base):
    """The version of a patient's chart: a new number from `chart_version_seq` in every
    transaction that writes it (`hold_charts`), so a read answered at one version is still
    the answer while the version is the same (`records.read_cache`)."""

    __tablename__ = "chart_versions"

    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


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
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(
        JSON, default=list, server_default=text("'[]'")
    )
    """A document's attachments (content type, title, size; the content is stored apart)."""

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


# The portal's hot reads, built once with their values bound at each call: building a
# statement per request, and the cache key SQLAlchemy derives from a new one at each
# execution, were a good part of each read's CPU (py-spy, benchmark 4); a statement object
# built once keeps its cache key.
_MEDICATIONS_OF = (
    select(Medication)
    .where(Medication.patient_id == bindparam("patient_id"))
    .order_by(Medication.authored_on.desc().nulls_last(), Medication.fhir_id)
)
_CHART_ENTRIES_OF = (
    select(ChartEntry)
    .where(ChartEntry.patient_id == bindparam("patient_id"), ChartEntry.kind == bindparam("kind"))
    .order_by(ChartEntry.effective.desc().nulls_last(), ChartEntry.fhir_id)
)
_IMPORTED_MEDICATIONS_OF = (
    select(ChartEntry)
    .where(
        ChartEntry.patient_id == bindparam("patient_id"),
        ChartEntry.resource_type == "MedicationRequest",
        ChartEntry.fhir_id.not_in(
            select(Medication.fhir_id).where(Medication.patient_id == bindparam("patient_id"))
        ),
    )
    .order_by(ChartEntry.effective.desc().nulls_last(), ChartEntry.fhir_id)
)
_REPORTS_BY_ID = select(LabReport).where(
    LabReport.report_fhir_id.in_(bindparam("ids", expanding=True))
)
_RESULTS_BY_ID = select(LabResult).where(
    LabResult.observation_fhir_id.in_(bindparam("ids", expanding=True))
)
_RESULTS_OF_REPORTS = (
    select(LabReportResult.report_fhir_id, LabResult)
    .join(LabResult, LabResult.observation_fhir_id == LabReportResult.observation_fhir_id)
    .where(LabReportResult.report_fhir_id.in_(bindparam("ids", expanding=True)))
    .order_by(LabReportResult.report_fhir_id, LabReportResult.position)
)
_VERSIONS_OF = (
    select(LabResultVersion)
    .where(LabResultVersion.observation_fhir_id.in_(bindparam("ids", expanding=True)))
    .order_by(LabResultVersion.replaced_at.desc(), LabResultVersion.id.desc())
)


async def medications_of(session: AsyncSession, patient_id: str) -> list[Medication]:
    """A patient's medication orders, newest first."""
    return list((await session.execute(_MEDICATIONS_OF, {"patient_id": patient_id})).scalars())


async def get_chart_entry(
    session: AsyncSession, resource_type: str, fhir_id: str
) -> ChartEntry | None:
    """One chart entry by its EHR type and id."""
    return await session.get(ChartEntry, (resource_type, fhir_id))


async def chart_entries_of(session: AsyncSession, patient_id: str, kind: str) -> list[ChartEntry]:
    """A patient's chart entries of one kind, newest first."""
    params = {"patient_id": patient_id, "kind": kind}
    return list((await session.execute(_CHART_ENTRIES_OF, params)).scalars())


async def imported_medications_of(session: AsyncSession, patient_id: str) -> list[ChartEntry]:
    """Back-filled medication orders that no live `medication.changed` has detailed."""
    params = {"patient_id": patient_id}
    return list((await session.execute(_IMPORTED_MEDICATIONS_OF, params)).scalars())


@dataclass(frozen=True)
class LabFilter:
    """What a patient asked to see of their results."""

    code: str | None = None
    category: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _after(sort_col: Any, id_col: Any, cursor: Cursor | None) -> ColumnElement[bool]:
    """Rows after the cursor in (sort_at desc, id desc) order."""
    if cursor is None:
        return true()
    return or_(sort_col < cursor.at, and_(sort_col == cursor.at, id_col < cursor.id))


def _category_like(category: str) -> str:
    escaped = category.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%|{escaped}|%"


@dataclass(frozen=True)
class Listed:
    """One entry of the lab results list: a report, or a laboratory result no report groups."""

    sort_at: datetime
    id: str
    grouping: str


async def lab_list_page(
    session: AsyncSession, patient_id: str, wanted: LabFilter, cursor: Cursor | None, limit: int
) -> list[Listed]:
    """One page of a patient's lab results list, newest first (`limit` + 1 entries, to tell
    if another page follows): reports, and laboratory results that no report groups."""
    stmt = _lab_list_statement(
        wanted.code is not None,
        wanted.category is not None,
        wanted.status is not None,
        wanted.since is not None,
        wanted.until is not None,
        cursor is not None,
    )
    params: dict[str, Any] = {
        "patient_id": patient_id,
        "code": wanted.code,
        "category": _category_like(wanted.category) if wanted.category is not None else None,
        "status": wanted.status,
        "since": wanted.since,
        "until": wanted.until,
        "cursor_at": cursor.at if cursor is not None else None,
        "cursor_id": cursor.id if cursor is not None else None,
        "limit": limit + 1,
    }
    return [Listed(*row) for row in (await session.execute(stmt, params)).tuples()]


# The list's statement for each shape of filter (which filters are set, whether a cursor
# is): built once, its values bound at each call. Building it per request (a union of two
# selects with their subqueries), and the cache key SQLAlchemy derives from it at each
# execution, were a seventh of records' CPU serving the portal (py-spy, benchmark 4); a
# statement object built once keeps its cache key.
_LIST_SHAPES = 64


@functools.lru_cache(maxsize=_LIST_SHAPES)
def _lab_list_statement(
    code: bool, category: bool, status: bool, since: bool, until: bool, after: bool
) -> Select[tuple[datetime, str, str]]:
    reports = select(
        LabReport.sort_at.label("sort_at"),
        LabReport.report_fhir_id.label("id"),
        literal("report").label("grouping"),
    ).where(LabReport.patient_id == bindparam("patient_id"))
    if code:
        has_result = exists().where(
            LabReportResult.report_fhir_id == LabReport.report_fhir_id,
            LabResult.observation_fhir_id == LabReportResult.observation_fhir_id,
            LabResult.code == bindparam("code"),
        )
        reports = reports.where(
            or_(LabReport.code["code"].as_string() == bindparam("code"), has_result)
        )
    grouped = exists().where(LabReportResult.observation_fhir_id == LabResult.observation_fhir_id)
    alone = select(
        LabResult.sort_at.label("sort_at"),
        LabResult.observation_fhir_id.label("id"),
        literal("result").label("grouping"),
    ).where(
        LabResult.patient_id == bindparam("patient_id"),
        LabResult.kind == "lab-result",
        LabResult.category_codes.like("%|laboratory|%"),
        ~grouped,
    )
    if code:
        alone = alone.where(LabResult.code == bindparam("code"))
    if category:
        reports = reports.where(LabReport.category_codes.like(bindparam("category"), escape="\\"))
        alone = alone.where(LabResult.category_codes.like(bindparam("category"), escape="\\"))
    if status:
        reports = reports.where(LabReport.status == bindparam("status"))
        alone = alone.where(LabResult.status == bindparam("status"))
    if since:
        reports = reports.where(LabReport.sort_at >= bindparam("since"))
        alone = alone.where(LabResult.sort_at >= bindparam("since"))
    if until:
        reports = reports.where(LabReport.sort_at < bindparam("until"))
        alone = alone.where(LabResult.sort_at < bindparam("until"))
    both = union_all(reports, alone).subquery()
    stmt = select(both.c.sort_at, both.c.id, both.c.grouping)
    if after:
        at: BindParameter[datetime] = bindparam("cursor_at")
        fhir_id: BindParameter[str] = bindparam("cursor_id")
        stmt = stmt.where(or_(both.c.sort_at < at, and_(both.c.sort_at == at, both.c.id < fhir_id)))
    return stmt.order_by(both.c.sort_at.desc(), both.c.id.desc()).limit(
        bindparam("limit", type_=Integer)
    )


async def lab_reports_by_id(session: AsyncSession, report_ids: list[str]) -> list[LabReport]:
    """Reports by id (any order)."""
    if not report_ids:
        return []
    return list((await session.execute(_REPORTS_BY_ID, {"ids": report_ids})).scalars())


async def results_by_id(session: AsyncSession, observation_ids: list[str]) -> list[LabResult]:
    """Results by id (any order)."""
    if not observation_ids:
        return []
    return list((await session.execute(_RESULTS_BY_ID, {"ids": observation_ids})).scalars())


async def results_of_reports(
    session: AsyncSession, report_ids: list[str]
) -> dict[str, list[LabResult]]:
    """The results of each report, in the report's order."""
    if not report_ids:
        return {}
    grouped: dict[str, list[LabResult]] = {rid: [] for rid in report_ids}
    rows = await session.execute(_RESULTS_OF_REPORTS, {"ids": report_ids})
    for report_id, result in rows.tuples():
        grouped[report_id].append(result)
    return grouped


async def versions_of(
    session: AsyncSession, observation_ids: list[str]
) -> dict[str, list[LabResultVersion]]:
    """Earlier versions of results, newest first."""
    if not observation_ids:
        return {}
    found: dict[str, list[LabResultVersion]] = {}
    for row in (await session.execute(_VERSIONS_OF, {"ids": observation_ids})).scalars():
        found.setdefault(row.observation_fhir_id, []).append(row)
    return found


async def results_page(
    session: AsyncSession,
    patient_id: str,
    kind: str,
    wanted: LabFilter,
    cursor: Cursor | None,
    limit: int,
) -> list[LabResult]:
    """One page of a patient's results of one kind, newest first (`limit` + 1 rows)."""
    stmt = select(LabResult).where(
        LabResult.patient_id == patient_id,
        LabResult.kind == kind,
        _after(LabResult.sort_at, LabResult.observation_fhir_id, cursor),
    )
    if wanted.code is not None:
        stmt = stmt.where(LabResult.code == wanted.code)
    if wanted.status is not None:
        stmt = stmt.where(LabResult.status == wanted.status)
    if wanted.since is not None:
        stmt = stmt.where(LabResult.sort_at >= wanted.since)
    if wanted.until is not None:
        stmt = stmt.where(LabResult.sort_at < wanted.until)
    stmt = stmt.order_by(LabResult.sort_at.desc(), LabResult.observation_fhir_id.desc()).limit(
        limit + 1
    )
    return list((await session.execute(stmt)).scalars())


async def series_of(
    session: AsyncSession, patient_id: str, code: str, wanted: LabFilter
) -> list[LabResult]:
    """Every result of one code for a patient, oldest first (for a trend)."""
    stmt = select(LabResult).where(LabResult.patient_id == patient_id, LabResult.code == code)
    if wanted.since is not None:
        stmt = stmt.where(LabResult.sort_at >= wanted.since)
    if wanted.until is not None:
        stmt = stmt.where(LabResult.sort_at < wanted.until)
    stmt = stmt.order_by(LabResult.sort_at, LabResult.observation_fhir_id)
    return list((await session.execute(stmt)).scalars())


async def get_result(session: AsyncSession, observation_fhir_id: str) -> LabResult | None:
    """One result by its EHR id."""
    return await session.get(LabResult, observation_fhir_id)


async def report_of_result(session: AsyncSession, observation_fhir_id: str) -> str | None:
    """The report that groups a result, if one does."""
    stmt = select(LabReportResult.report_fhir_id).where(
        LabReportResult.observation_fhir_id == observation_fhir_id
    )
    return (await session.execute(stmt.limit(1))).scalar_one_or_none()


def _any(values: list[str]) -> Any:
    """`= ANY(<one array parameter>)`: the same statement text for any number of values
    (prepared once), where `IN` renders a parameter per value."""
    return any_(bindparam(None, values, type_=ARRAY(String())))


async def lab_report_states(
    session: AsyncSession, report_ids: list[str]
) -> dict[str, dict[str, Any]]:
    """Stored reports by id as plain column values (for writes computed in memory)."""
    if not report_ids:
        return {}
    table = LabReport.__table__
    rows = await session.execute(select(table).where(table.c.report_fhir_id == _any(report_ids)))
    return {row["report_fhir_id"]: dict(row) for row in rows.mappings()}


async def lab_result_states(
    session: AsyncSession, observation_ids: list[str]
) -> dict[str, dict[str, Any]]:
    """Stored results by id as plain column values (for writes computed in memory)."""
    if not observation_ids:
        return {}
    table = LabResult.__table__
    rows = await session.execute(
        select(table).where(table.c.observation_fhir_id == _any(observation_ids))
    )
    return {row["observation_fhir_id"]: dict(row) for row in rows.mappings()}


async def chart_entry_states(
    session: AsyncSession, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Stored chart entries by (type, id) as plain column values."""
    if not keys:
        return {}
    table = ChartEntry.__table__
    wanted = set(keys)
    ids = sorted({fhir_id for _, fhir_id in keys})
    rows = await session.execute(select(table).where(table.c.fhir_id == _any(ids)))
    states = {(row["resource_type"], row["fhir_id"]): dict(row) for row in rows.mappings()}
    return {key: state for key, state in states.items() if key in wanted}


async def hold_charts(session: AsyncSession, patient_ids: Iterable[str]) -> None:
    """Hold these patients' charts for writing until the transaction ends: the writers of
    a chart (the live `lab.resulted` and `medication.changed` consumers, the back-fill's
    `record.imported`) read what they would replace, so they take turns; and each chart
    gets a new version, so reads answered before this transaction commits are answered
    again after it (`records.read_cache`). Every writer of a chart calls this first."""
    ids = sorted(set(patient_ids))
    if not ids:
        return
    await hold_keys(session, "records.chart", ids)
    await session.execute(_NEW_CHART_VERSIONS, {"ids": ids})


_NEW_CHART_VERSIONS = text(
    "INSERT INTO chart_versions (patient_id, version)"
    " SELECT p, nextval('chart_version_seq') FROM unnest(CAST(:ids AS VARCHAR[])) AS p"
    " ON CONFLICT (patient_id) DO UPDATE SET version = EXCLUDED.version"
)
_CHART_VERSION = select(ChartVersion.version).where(
    ChartVersion.patient_id == bindparam("patient_id")
)


async def chart_version(session: AsyncSession, patient_id: str) -> int:
    """The version of the patient's chart (0: never written)."""
    found = await session.scalar(_CHART_VERSION, {"patient_id": patient_id})
    return found or 0


async def _upsert(
    session: AsyncSession, table: Any, key: tuple[str, ...], rows: list[dict[str, Any]]
) -> None:
    """Insert `rows` (each with every column), replacing the stored row of the same key."""
    await insert_rows(session, table, rows, key=key)


async def upsert_lab_reports(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Write reports computed in memory (every column), one statement."""
    await _upsert(session, LabReport.__table__, ("report_fhir_id",), rows)


async def upsert_lab_results(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Write results computed in memory (every column), one statement."""
    await _upsert(session, LabResult.__table__, ("observation_fhir_id",), rows)


async def upsert_chart_entries(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Write chart entries computed in memory (every column), one statement."""
    await _upsert(session, ChartEntry.__table__, ("resource_type", "fhir_id"), rows)


async def add_result_versions(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Keep replaced versions of results as history."""
    await insert_rows(session, cast(Table, LabResultVersion.__table__), rows)


async def set_results_of_reports(session: AsyncSession, groupings: dict[str, list[str]]) -> None:
    """Make each report's listed results its results, in this order (one delete, one
    insert; a repeated id is kept at its first place)."""
    if not groupings:
        return
    await session.execute(
        delete(LabReportResult).where(LabReportResult.report_fhir_id == _any(sorted(groupings)))
    )
    rows = [
        {"report_fhir_id": report, "observation_fhir_id": observation, "position": position}
        for report, observations in groupings.items()
        for position, observation in _first_positions(observations)
    ]
    await insert_rows(session, cast(Table, LabReportResult.__table__), rows)


def _first_positions(observation_ids: list[str]) -> list[tuple[int, str]]:
    """Each id with the position of its first occurrence (a repeated id is listed once)."""
    seen: set[str] = set()
    out: list[tuple[int, str]] = []
    for position, observation_id in enumerate(observation_ids):
        if observation_id not in seen:
            seen.add(observation_id)
            out.append((position, observation_id))
    return out


def _document_sort() -> ColumnElement[datetime]:
    return func.coalesce(ChartEntry.effective, literal(EPOCH, DateTime(timezone=True)))


async def documents_page(
    session: AsyncSession, patient_id: str, cursor: Cursor | None, limit: int
) -> list[ChartEntry]:
    """One page of a patient's documents, newest first (undated last; `limit` + 1 rows)."""
    sort_at = _document_sort()
    stmt = (
        select(ChartEntry)
        .where(
            ChartEntry.patient_id == patient_id,
            ChartEntry.kind == "document",
            _after(sort_at, ChartEntry.fhir_id, cursor),
        )
        .order_by(sort_at.desc(), ChartEntry.fhir_id.desc())
        .limit(limit + 1)
    )
    return list((await session.execute(stmt)).scalars())


async def get_document_content(
    session: AsyncSession, document_fhir_id: str, position: int
) -> DocumentContent | None:
    """The stored content of one attachment."""
    return await session.get(DocumentContent, (document_fhir_id, position))


async def replace_document_contents(
    session: AsyncSession, document_fhir_id: str, contents: list[DocumentContent]
) -> None:
    """Store a document's attachment contents, replacing an earlier version's."""
    await session.execute(
        delete(DocumentContent).where(DocumentContent.document_fhir_id == document_fhir_id)
    )
    for content in contents:
        session.add(content)
