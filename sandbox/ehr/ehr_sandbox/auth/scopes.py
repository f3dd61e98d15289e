"""SMART on FHIR scopes, v1 (`system/Observation.read`) and v2 (`system/*.rs`).

A scope grants permissions (`c`reate, `r`ead, `u`pdate, `d`elete, `s`earch) on one
resource type, or every type (`*`), in one context (`system`, `user`, `patient`). SMART v1's
`read` means `rs`, `write` means `cud` and `*` means `cruds`, as the SMART v2 specification
maps them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

PERMISSION_ORDER = "cruds"
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}

# interaction → the permission letter it needs. History of an instance reads that
# instance; operations the sandbox offers ($status, $events, $everything) only read.
INTERACTION_PERMISSION = {
    "read": "r",
    "vread": "r",
    "history": "r",
    "operation": "r",
    "search": "s",
    "create": "c",
    "update": "u",
    "patch": "u",
    "delete": "d",
}

_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<perms>[a-z*]+)$"
)
# Scopes that are not resource scopes but are legal in a request (OIDC, launch context).
NON_RESOURCE_SCOPES = frozenset(
    {"openid", "fhirUser", "profile", "launch/patient", "offline_access", "online_access"}
)


class ScopeError(ValueError):
    """A scope string that is not a well-formed SMART resource scope."""


@dataclass(frozen=True)
class Scope:
    """One parsed SMART resource scope."""

    context: str
    resource_type: str
    permissions: frozenset[str]

    def allows(self, context: str, resource_type: str, permission: str) -> bool:
        """Whether this scope grants `permission` on `resource_type` in `context`."""
        return (
            self.context == context
            and self.resource_type in ("*", resource_type)
            and permission in self.permissions
        )

    def covers(self, other: Scope) -> bool:
        """Whether everything `other` grants is also granted by this scope."""
        return (
            self.context == other.context
            and self.resource_type in ("*", other.resource_type)
            and other.permissions <= self.permissions
        )


def parse_permissions(text: str) -> frozenset[str]:
    """Turn `read`/`write`/`*` (v1) or a `cruds` subset in that order (v2) into letters."""
    if text in V1_PERMISSIONS:
        return frozenset(V1_PERMISSIONS[text])
    position = -1
    for letter in text:
        index = PERMISSION_ORDER.find(letter)
        # v2 requires the letters in `cruds` order, each at most once.
        if index <= position:
            raise ScopeError(f"Invalid permissions {text!r}")
        position = index
    if not text:
        raise ScopeError("Empty permissions")
    return frozenset(text)


def parse_scope(text: str) -> Scope:
    """Parse one SMART resource scope; a v2 `?param=value` restriction is not supported."""
    if "?" in text:
        raise ScopeError(f"Scope restrictions are not supported: {text!r}")
    match = _SCOPE.match(text)
    if match is None:
        raise ScopeError(f"Not a SMART resource scope: {text!r}")
    return Scope(
        context=match["context"],
        resource_type=match["type"],
        permissions=parse_permissions(match["perms"]),
    )


def parse_scopes(texts: Iterable[str]) -> list[Scope]:
    """Parse the resource scopes among `texts`, skipping OIDC/launch scopes and bad ones.

    Used on scopes the sandbox itself issued, so a malformed one is simply not a grant.
    """
    parsed: list[Scope] = []
    for text in texts:
        if text in NON_RESOURCE_SCOPES:
            continue
        try:
            parsed.append(parse_scope(text))
        except ScopeError:
            continue
    return parsed


def permission_for(interaction: str) -> str:
    """The permission letter an interaction needs (`u` for anything unknown that writes)."""
    return INTERACTION_PERMISSION.get(interaction, "u")


def scopes_allow(
    scopes: Iterable[Scope], context: str, resource_type: str, interaction: str
) -> bool:
    """Whether any of `scopes` grants `interaction` on `resource_type` in `context`."""
    permission = permission_for(interaction)
    return any(scope.allows(context, resource_type, permission) for scope in scopes)


def split_scope_string(value: str) -> list[str]:
    """Split an OAuth `scope` parameter (space-delimited) into its distinct tokens, in order."""
    seen: dict[str, None] = {}
    for token in value.split():
        seen.setdefault(token, None)
    return list(seen)
