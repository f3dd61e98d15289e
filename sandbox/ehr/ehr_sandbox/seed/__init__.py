"""The demo clinic loaded on first start: staff, schedules, demo patients and their history.

Ids are stable (listed in the package README) so tools and tests can rely on them. The
first start loads everything once (marked in `sandbox_meta`); every start tops up the free
slots so the next `SLOT_HORIZON_DAYS` days always have some. Official FHIR R4 examples
(from `SANDBOX_EXAMPLES_DIR`, by default `shared/fhir-examples` beside the repository;
skipped with a warning when absent) are loaded verbatim where their references resolve:
Patient/pat1 with its MedicationRequests (prescribed by Practitioner/f007), Patient/pat2
with its Observations, and Organization/1. Every seed resource is validated like a client
write; the seed writes no change events.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

from ehr_sandbox.fhir.validation import validate_resource
from ehr_sandbox.search import format_instant
from ehr_sandbox.seed.clinic import (
    CARE_TEAM,
    CLINIC_ORG,
    DEFAULT_TIMEZONE,
    INTAKE_QUESTIONNAIRE,
    INTAKE_URL,
    LAB_ORG,
    MAIN_LOCATION,
    PRIMARY_PRACTITIONER,
    SLOT_HORIZON_DAYS,
    SLOT_MINUTES,
    STAFF,
    clinic_places_and_staff,
    clinic_zone,
    slot_id,
    slots_for_horizon,
    workdays,
)
from ehr_sandbox.seed.patients import (
    DEFAULT_PATIENT,
    DEMO_PATIENTS,
    OFFICIAL_EXAMPLES,
    DemoPatient,
    examples_dir,
    patient_resources,
)
from ehr_sandbox.store import Store
from servicekit.logging import get_logger

__all__ = [
    "CARE_TEAM",
    "CLINIC_ORG",
    "DEFAULT_PATIENT",
    "DEMO_PATIENTS",
    "INTAKE_QUESTIONNAIRE",
    "INTAKE_URL",
    "LAB_ORG",
    "MAIN_LOCATION",
    "OFFICIAL_EXAMPLES",
    "PRIMARY_PRACTITIONER",
    "SLOT_HORIZON_DAYS",
    "SLOT_MINUTES",
    "STAFF",
    "DemoPatient",
    "clinic_resources",
    "examples_dir",
    "seed_clinic",
]

log = get_logger(__name__)

SEEDED_KEY = "seeded_at"


def _next_workday_slot(now: datetime, zone: Any) -> datetime:
    day = workdays(now.astimezone(zone).date() + timedelta(days=3), 7)[0]
    return datetime.combine(day, time(10, 0), tzinfo=zone)


def clinic_resources(
    now: datetime, zone: Any, examples: Path | None = None
) -> list[dict[str, Any]]:
    """Every resource of the first-start seed (slots included)."""
    busy = _next_workday_slot(now, zone)
    resources = clinic_places_and_staff(now)
    resources += patient_resources(now, zone, busy, examples)
    resources += slots_for_horizon(now, zone, frozenset({slot_id(PRIMARY_PRACTITIONER, busy)}))
    return resources


def _validated(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for resource in resources:
        validate_resource(
            resource, expected_type=resource["resourceType"], expected_id=resource["id"]
        )
    return resources


async def seed_clinic(
    store: Store,
    *,
    now: datetime | None = None,
    timezone: str = DEFAULT_TIMEZONE,
    examples: Path | None = None,
) -> int:
    """Load the demo clinic on first start; on every later start, top up free slots and
    add what a newer seed has that this store never had (a stack made before the demo
    caregivers were seeded gets them). Nothing that exists, or was deleted, is touched.

    Returns how many resources were written.
    """
    now = now or datetime.now(UTC)
    zone = clinic_zone(timezone)
    if await store.get_meta(SEEDED_KEY) is None:
        written = await store.load(_validated(clinic_resources(now, zone, examples)))
        await store.set_meta(SEEDED_KEY, format_instant(now))
        log.info("seed_loaded", resources=written)
        return written
    written = await store.load(_validated(slots_for_horizon(now, zone)))
    if written:
        log.info("seed_slots_topped_up", slots=written)
    added = await store.load(_validated(clinic_resources(now, zone, examples)))
    if added:
        log.info("seed_topped_up", resources=added)
    return written + added
