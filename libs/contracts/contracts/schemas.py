"""Export the JSON Schema of every published event version, and check them against code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts.compat import breaking_changes
from contracts.registry import REGISTRY, EventType

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


def schema_file(entry: EventType, directory: Path = SCHEMA_DIR) -> Path:
    """Where the schema of one event version is committed."""
    return directory / f"{entry.topic}.v{entry.version}.json"


def schema_of(entry: EventType) -> dict[str, Any]:
    """The JSON Schema of one event version, as consumers validate it (mode=validation)."""
    schema = entry.model.model_json_schema(mode="validation")
    schema["$id"] = f"urn:portal:events:{entry.dataschema}"
    schema["title"] = f"{entry.topic} v{entry.version}"
    return schema


def render(schema: dict[str, Any]) -> str:
    """Stable text for a committed schema file."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in REGISTRY:
        path = schema_file(entry, directory)
        path.write_text(render(schema_of(entry)), encoding="utf-8")
        written.append(path)
    return written


def check(directory: Path = SCHEMA_DIR) -> list[str]:
    """Problems between the committed schemas and the models: breaking changes first."""
    problems: list[str] = []
    for entry in REGISTRY:
        path = schema_file(entry, directory)
        current = schema_of(entry)
        if not path.exists():
            problems.append(f"{path.name}: not exported (run `python -m contracts export`)")
            continue
        published = json.loads(path.read_text(encoding="utf-8"))
        for change in breaking_changes(published, current):
            problems.append(f"{entry.dataschema}: breaking change: {change}")
        if render(published) != render(current):
            problems.append(f"{path.name}: out of date (run `python -m contracts export`)")
    return problems
