"""SMART scope parsing and the interaction → permission mapping."""

from __future__ import annotations

import pytest

from ehr_sandbox.auth.scopes import ScopeError, parse_scope, parse_scopes, scopes_allow


@pytest.mark.parametrize(
    ("scope", "permissions"),
    [
        ("system/Observation.read", "rs"),
        ("system/*.write", "cud"),
        ("system/*.*", "cruds"),
        ("system/*.rs", "rs"),
        ("system/Appointment.cruds", "cruds"),
        ("patient/*.rs", "rs"),
        ("system/Observation.r", "r"),
        ("system/Observation.cu", "cu"),
    ],
)
def test_v1_and_v2_permissions(scope: str, permissions: str) -> None:
    assert parse_scope(scope).permissions == frozenset(permissions)


@pytest.mark.parametrize(
    "scope",
    [
        "system/Observation.sr",
        "system/Observation.rr",
        "system/Observation.",
        "Observation.read",
        "system/observation.read",
        "system/*.rs?category=laboratory",
        "group/*.rs",
        "system/*.x",
    ],
)
def test_malformed_scopes(scope: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(scope)


@pytest.mark.parametrize(
    ("interaction", "allowed"),
    [
        ("read", True),
        ("vread", True),
        ("history", True),
        ("search", True),
        ("operation", True),
        ("create", False),
        ("update", False),
        ("delete", False),
    ],
)
def test_interactions_map_to_permissions(interaction: str, allowed: bool) -> None:
    scopes = parse_scopes(["openid", "system/Observation.rs", "not a scope"])
    assert scopes_allow(scopes, "system", "Observation", interaction) is allowed
    assert not scopes_allow(scopes, "system", "Patient", interaction)
    assert not scopes_allow(scopes, "patient", "Observation", interaction)


def test_wildcard_type_and_write_letters() -> None:
    scopes = parse_scopes(["system/*.cud"])
    assert scopes_allow(scopes, "system", "Appointment", "create")
    assert scopes_allow(scopes, "system", "Task", "update")
    assert scopes_allow(scopes, "system", "Task", "delete")
    assert not scopes_allow(scopes, "system", "Task", "read")
