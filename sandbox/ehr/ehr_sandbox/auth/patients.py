"""The patients the dev sign-in page offers: the Patient resources in the sandbox."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ehr_sandbox.search import SearchRequest

# The sign-in page lists at most this many patients; the demo clinic has a handful.
MAX_LISTED = 50


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


def _hint(patient: dict[str, Any]) -> str:
    parts = []
    if isinstance(patient.get("birthDate"), str):
        parts.append(f"born {patient['birthDate']}")
    parts.append(f"id {patient.get('id', '')}")
    return ", ".join(parts)


async def demo_patients(app: FastAPI) -> list[tuple[str, str, str]]:
    """(id, display name, hint) of the sandbox's patients, sorted by name."""
    store = getattr(app.state, "store", None)
    if store is None:
        return []
    result = await store.search(SearchRequest("Patient", count=MAX_LISTED))
    patients = [
        (str(m.content.get("id")), display_name(m.content), _hint(m.content))
        for m in result.matches
        if m.content.get("active", True) is not False
    ]
    return sorted(patients, key=lambda p: p[1].lower())
