"""The exported JSON Schemas match the models and guard published versions."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import jsonschema
import pytest
from pydantic import Field

from contracts.base import Instant, Payload
from contracts.compat import breaking_changes
from contracts.registry import REGISTRY, EventType
from contracts.schemas import check, export, schema_file, schema_of

from .examples import EXAMPLES


def test_every_registered_event_has_an_example() -> None:
    assert {e.topic for e in REGISTRY} == set(EXAMPLES)


def test_committed_schemas_are_up_to_date() -> None:
    assert check() == []


@pytest.mark.parametrize("entry", REGISTRY, ids=lambda e: e.dataschema)
def test_payload_round_trips_through_its_exported_schema(entry: EventType) -> None:
    published = json.loads(schema_file(entry).read_text())
    example = EXAMPLES[entry.topic]
    wire = json.loads(example.model_dump_json())
    jsonschema.validate(wire, published)
    assert entry.model.model_validate_json(json.dumps(wire)) == example


def test_schema_rejects_a_time_without_zone() -> None:
    entry = next(e for e in REGISTRY if e.topic == "patient.linked")
    wire = json.loads(EXAMPLES["patient.linked"].model_dump_json())
    wire["linked_at"] = "2026-11-25T09:30:00"
    with pytest.raises(Exception, match=r"linked_at|timezone"):
        entry.model.model_validate_json(json.dumps(wire))


def test_numbers_are_not_accepted_as_times() -> None:
    entry = next(e for e in REGISTRY if e.topic == "patient.linked")
    with pytest.raises(Exception, match="linked_at"):
        entry.model.model_validate({"patient_id": "p1", "patient_fhir_id": "x", "linked_at": 0})


class Colour(StrEnum):
    RED = "red"
    GREEN = "green"


class Colour2(StrEnum):
    RED = "red"


class OriginalV1(Payload):
    item_id: str
    colour: Colour
    count: int
    note: str | None = None
    at: Instant


class AddsOptionalField(OriginalV1):
    extra: str | None = None


class RemovesField(Payload):
    item_id: str
    colour: Colour
    at: Instant
    note: str | None = None


class RetypesField(Payload):
    item_id: str
    colour: Colour
    count: str
    note: str | None = None
    at: Instant


class AddsRequiredField(OriginalV1):
    must: str = Field()


class NarrowsEnum(Payload):
    item_id: str
    colour: Colour2
    count: int
    note: str | None = None
    at: Instant


class MakesOptionalRequired(Payload):
    item_id: str
    colour: Colour
    count: int
    note: str
    at: Instant


def _schema(model: type[Payload]) -> dict[str, object]:
    return model.model_json_schema(mode="validation")


def test_adding_an_optional_field_is_compatible() -> None:
    assert breaking_changes(_schema(OriginalV1), _schema(AddsOptionalField)) == []


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (RemovesField, "count: field removed"),
        (RetypesField, "count: type integer was changed or removed"),
        (AddsRequiredField, "must: new required field"),
        (NarrowsEnum, "colour: enum narrowed, removed ['green']"),
        (MakesOptionalRequired, "note: optional field became required"),
    ],
)
def test_breaking_change_is_caught(model: type[Payload], expected: str) -> None:
    assert expected in breaking_changes(_schema(OriginalV1), _schema(model))


def test_check_reports_a_deliberately_broken_published_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export(tmp_path)
    entry = next(e for e in REGISTRY if e.topic == "appointment.booked")
    published = schema_of(entry)
    published["properties"]["legacy_code"] = {"type": "string"}
    published["required"] = [*published["required"], "legacy_code"]
    schema_file(entry, tmp_path).write_text(json.dumps(published))
    problems = check(tmp_path)
    assert any(
        "appointment.booked/v1: breaking change: legacy_code: field removed" in p for p in problems
    )
