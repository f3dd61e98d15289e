"""Backward-compatibility check between two JSON Schemas of one published event version.

A published version is frozen in what it promises: consumers written against it must keep
parsing what producers send, and events already in topics and outboxes must keep parsing
with the new model. So a field may be added only as optional, an enum may only grow, and
nothing may be removed, retyped, or made required.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def _resolve(node: Schema, root: Schema) -> Schema:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        resolved: Schema = root.get("$defs", {})[ref.removeprefix("#/$defs/")]
        return resolved
    return node


def _alternatives(node: Schema, root: Schema) -> list[Schema]:
    node = _resolve(node, root)
    for key in ("anyOf", "oneOf"):
        if key in node:
            out: list[Schema] = []
            for alt in node[key]:
                out.extend(_alternatives(alt, root))
            return out
    return [node]


def _kind(node: Schema) -> str:
    if "enum" in node:
        return "enum"
    if "const" in node:
        return "enum"
    t = node.get("type")
    if isinstance(t, list):
        return "|".join(sorted(t))
    return str(t) if t is not None else "any"


def _enum_values(node: Schema) -> set[Any]:
    if "const" in node:
        return {node["const"]}
    return set(node.get("enum", []))


def _compare(old: Schema, new: Schema, old_root: Schema, new_root: Schema, path: str) -> list[str]:
    problems: list[str] = []
    old_alts = _alternatives(old, old_root)
    new_alts = _alternatives(new, new_root)
    new_by_kind: dict[str, Schema] = {}
    for alt in new_alts:
        new_by_kind.setdefault(_kind(alt), alt)
    if "any" in new_by_kind:
        return problems
    for alt in old_alts:
        kind = _kind(alt)
        if kind not in new_by_kind:
            if kind == "enum" and "string" in new_by_kind and "enum" not in new_by_kind:
                continue  # an enum widened to any string still accepts every old value
            problems.append(f"{path or '<root>'}: type {kind} was changed or removed")
            continue
        counterpart = new_by_kind[kind]
        if kind == "enum":
            lost = _enum_values(alt) - _enum_values(counterpart)
            if lost:
                problems.append(f"{path}: enum narrowed, removed {sorted(map(str, lost))}")
        elif kind == "object":
            problems.extend(_compare_object(alt, counterpart, old_root, new_root, path))
        elif kind == "array" and "items" in alt:
            problems.extend(
                _compare(
                    alt["items"], counterpart.get("items", {}), old_root, new_root, path + "[]"
                )
            )
    return problems


def _compare_object(
    old: Schema, new: Schema, old_root: Schema, new_root: Schema, path: str
) -> list[str]:
    problems: list[str] = []
    old_props: Schema = old.get("properties", {})
    new_props: Schema = new.get("properties", {})
    old_required = set(old.get("required", []))
    new_required = set(new.get("required", []))
    prefix = f"{path}." if path else ""
    for name, old_prop in old_props.items():
        if name not in new_props:
            problems.append(f"{prefix}{name}: field removed")
            continue
        problems.extend(_compare(old_prop, new_props[name], old_root, new_root, prefix + name))
    for name in sorted(new_required - old_required):
        if name in old_props:
            problems.append(f"{prefix}{name}: optional field became required")
        else:
            problems.append(f"{prefix}{name}: new required field")
    return problems


def breaking_changes(old: Schema, new: Schema) -> list[str]:
    """The ways `new` breaks consumers or stored events of `old`; empty when compatible."""
    return _compare(old, new, old, new, "")
