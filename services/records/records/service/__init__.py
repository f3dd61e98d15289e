"""Use cases of the records service: what the event handlers and the HTTP routes do.

Handlers and routes only translate (a message or a request) into one of these calls; the
rules are in `records.domain`, the SQL in `records.store`. The caller owns the transaction
(the consumer's unit of work, or a read session).
"""

from __future__ import annotations

from records.domain import LAB, VITAL
from records.service.reads import (
    Page,
    chart_entries,
    document,
    document_content,
    documents,
    lab_report,
    lab_reports,
    medications,
    result_json,
    results,
    trend,
)
from records.service.writes import (
    record_imported,
    record_lab_result,
    record_lab_results,
    record_medication_change,
)

__all__ = [
    "LAB",
    "VITAL",
    "Page",
    "chart_entries",
    "document",
    "document_content",
    "documents",
    "lab_report",
    "lab_reports",
    "medications",
    "record_imported",
    "record_lab_result",
    "record_lab_results",
    "record_medication_change",
    "result_json",
    "results",
    "trend",
]
