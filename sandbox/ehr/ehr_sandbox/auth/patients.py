"""The patients the dev sign-in page offers.

The demo patients of the seed (the same list as `GET /dev/patients`), in their order;
when the sandbox runs without the seed, the Patient resources it holds instead. Synthetic
patients (the monitoring canary, tagged `synthetic-monitoring`) are never offered: a person
signing in must not pick, or write as, the patient the probes watch.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ehr_sandbox.search import SearchRequest, parse_search
from ehr_sandbox.seed import DEMO_PATIENTS

# Without the seed the page lists at most this many patients.
MAX_LISTED = 50
SYNTHETIC_TAG = ("urn:ehr-sandbox:tags", "synthetic-monitoring")


def is_synthetic(patient: dict[str, Any]) -> bool:
    """Whether the Patient is a synthetic one (tagged for monitoring), not a person."""
    tags = (patient.get("meta") or {}).get("tag") or []
    return any(
        isinstance(t, dict) and (t.get("system"), t.get("code")) == SYNTHETIC_TAG for t in tags
    )


def display_name(patient: dict[str, Any]) -> str:
    """A human-readable name of a Patient resource (official name first)."""
    names = patient.get("name")
    if isinstance(names, list) and names:
        chosen = next(
            (n for n in names if isinstance(n, dict) and n.get("use") == "official"), names[0]
        )
        if isinstance(chosen, dict):
            if isinstance(chosen.get("text"), str) and chosen["text"].strip():
                return str(chosen["text"]).strip()
            given = [g for g in chosen.get("given", []) if isinstance(g, str)]
            family_value = chosen.get("family")
            family = family_value if isinstance(family_value, str) else ""
            text = " ".join([*given, family]).strip()
            if text:
                return text
    return f"Patient {patient.get('id', '')}"


def _hint(patient: dict[str, Any], has_history: bool | None) -> str:
    parts = []
    if isinstance(patient.get("birthDate"), str):
        parts.append(f"Born {patient['birthDate']}")
    if has_history is not None:
        parts.append("has a medical history" if has_history else "new patient")
    text = ", ".join(parts) if parts else f"patient id {patient.get('id', '')}"
    return text[:1].upper() + text[1:]


async def demo_patients(app: FastAPI) -> list[tuple[str, str, str]]:
    """(id, display name, hint) of the patients one may sign in as."""
    store = getattr(app.state, "store", None)
    if store is None:
        return []
    stored = await store.read_many([("Patient", p.id) for p in DEMO_PATIENTS])
    demo = [m for m in stored if not is_synthetic(m.content)]
    if demo:
        history = {p.id: p.has_history for p in DEMO_PATIENTS}
        return [(m.id, display_name(m.content), _hint(m.content, history.get(m.id))) for m in demo]
    result = await store.search(SearchRequest("Patient", count=MAX_LISTED))
    patients = [
        (m.id, display_name(m.content), _hint(m.content, None))
        for m in result.matches
        if m.content.get("active", True) is not False and not is_synthetic(m.content)
    ]
    return sorted(patients, key=lambda p: p[1].lower())


CAREGIVER_PREFIX = "RelatedPerson/"


async def demo_caregivers(
    app: FastAPI, patients: list[tuple[str, str, str]]
) -> list[tuple[str, str, str, str]]:
    """(RelatedPerson id, patient id, display name, hint) of the active caregivers the EHR
    records for the offered patients: they sign in as themselves, for that patient."""
    store = getattr(app.state, "store", None)
    if store is None or not patients:
        return []
    names = {pid: name for pid, name, _hint in patients}
    found: list[tuple[str, str, str, str]] = []
    for pid in names:
        request = parse_search(
            "RelatedPerson",
            [("patient", f"Patient/{pid}")],
            fhir_base=app.state.settings.fhir_base,
            default_count=20,
            max_count=20,
            strict=True,
        )
        result = await store.search(request)
        for match in result.matches:
            person = match.content
            if person.get("active", True) is False:
                continue
            found.append(
                (
                    match.id,
                    pid,
                    display_name(person).replace("Patient ", "Caregiver ", 1),
                    f"Caregiver of {names[pid]}",
                )
            )
    return found
