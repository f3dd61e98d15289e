"""Plain-language explanations of lab tests, by LOINC code: versioned data, not code.

The catalogue (`explanations/lab-tests.yaml`, checked against
`explanations/lab-tests.schema.json`) says what a test measures and what a high or low
value usually means, at about a 6th-grade reading level, with the sources it was written
from. It never says what a result means for this patient: that is the care team's job,
and every explanation says so. A code the catalogue does not know gets a plain
"we have no explanation for this test" rather than a guess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

CATALOGUE_DIR = Path(__file__).resolve().parent / "explanations"
CATALOGUE_FILE = CATALOGUE_DIR / "lab-tests.yaml"
SCHEMA_FILE = CATALOGUE_DIR / "lab-tests.schema.json"
LOINC = "http://loinc.org"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """A reference the explanations were written from."""

    id: str = Field(pattern=r"^[a-z0-9-]+$")
    title: str
    publisher: str
    url: str = Field(pattern=r"^https://")


class Explanation(_Strict):
    """What one test measures, and what high and low values usually mean."""

    loinc: list[str] = Field(min_length=1, description="LOINC codes this text explains")
    name: str = Field(min_length=2, max_length=80)
    what: str = Field(min_length=20, max_length=400)
    high: str = Field(min_length=10, max_length=400)
    low: str = Field(min_length=10, max_length=400)
    sources: list[str] = Field(min_length=1)


class Catalogue(_Strict):
    """The whole catalogue, one version."""

    version: str = Field(pattern=r"^\d{4}\.\d{2}\.\d+$")
    language: str
    disclaimer: str
    unknown: str
    sources: list[Source] = Field(min_length=1)
    explanations: list[Explanation] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Catalogue:
        known = {s.id for s in self.sources}
        codes: set[str] = set()
        for item in self.explanations:
            missing = set(item.sources) - known
            if missing:
                raise ValueError(f"{item.name}: unknown sources {sorted(missing)}")
            twice = codes & set(item.loinc)
            if twice:
                raise ValueError(f"LOINC codes explained twice: {sorted(twice)}")
            codes |= set(item.loinc)
        return self

    def codes(self) -> set[str]:
        """Every LOINC code the catalogue explains."""
        return {code for item in self.explanations for code in item.loinc}

    def explain(self, coding: dict[str, Any] | None) -> dict[str, Any]:
        """The explanation served with a result of this code (`known: false` when none)."""
        code = coding.get("code") if isinstance(coding, dict) else None
        system = coding.get("system") if isinstance(coding, dict) else None
        if isinstance(code, str) and system in (LOINC, None):
            for item in self.explanations:
                if code in item.loinc:
                    by_id = {s.id: s for s in self.sources}
                    return {
                        "known": True,
                        "code": code,
                        "name": item.name,
                        "what_it_measures": item.what,
                        "if_high": item.high,
                        "if_low": item.low,
                        "not_a_diagnosis": self.disclaimer,
                        "sources": [by_id[s].model_dump(exclude={"id"}) for s in item.sources],
                        "catalogue_version": self.version,
                    }
        return {
            "known": False,
            "code": code if isinstance(code, str) else None,
            "text": self.unknown,
            "catalogue_version": self.version,
        }


def load(path: Path = CATALOGUE_FILE) -> Catalogue:
    """Read and check the catalogue (a broken catalogue stops the service at start-up)."""
    return Catalogue.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
