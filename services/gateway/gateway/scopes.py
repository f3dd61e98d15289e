"""SMART on FHIR scopes, parsed exactly (v1 `patient/Observation.read`, v2
`patient/Observation.rs`), and the route-level dependency that enforces them.

Permissions are letters: `c`reate, `r`ead, `u`pdate, `d`elete, `s`earch. SMART v1's `read`
means `rs`, `write` means `cud` and `*` means `cruds` (the v2 specification's mapping), so
`patient/*.write` grants no read. v2 letters must appear in `cruds` order, each once; a
malformed scope grants nothing. A v2 scope narrowed by a query (`.rs?category=laboratory`)
grants nothing here either: the gateway cannot apply the narrowing to its own routes, and
refusing is the safe reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PERMISSION_ORDER = "cruds"
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]{0,63})\.(?P<perms>[a-z*]{1,5})$"
)


class ScopeError(ValueError):
    """Not a well-formed SMART resource scope."""


@dataclass(frozen=True)
class SmartScope:
    """One parsed SMART resource scope."""

    context: str
    resource_type: str
    permissions: frozenset[str]

    def grants(self, other: SmartScope) -> bool:
        """Whether everything `other` asks for is granted by this scope."""
        return (
            self.context == other.context
            and self.resource_type in ("*", other.resource_type)
            and other.permissions <= self.permissions
        )


def parse_permissions(text: str) -> frozenset[str]:
    """`read`/`write`/`*` (v1) or a subset of `cruds` in that order (v2) as letters."""
    if text in V1_PERMISSIONS:
        return frozenset(V1_PERMISSIONS[text])
    position = -1
    for letter in text:
        index = PERMISSION_ORDER.find(letter)
        if index <= position:  # unknown letter, repeated or out of order
            raise ScopeError(f"Invalid permissions {text!r}")
        position = index
    if not text:
        raise ScopeError("Empty permissions")
    return frozenset(text)


def parse_scope(text: str) -> SmartScope:
    """One scope string as a SmartScope, or ScopeError."""
    match = _SCOPE.match(text)
    if match is None:
        raise ScopeError(f"Not a SMART resource scope: {text[:80]!r}")
    return SmartScope(
        context=match["context"],
        resource_type=match["type"],
        permissions=parse_permissions(match["perms"]),
    )


def parse_granted(scopes: frozenset[str]) -> tuple[SmartScope, ...]:
    """The well-formed resource scopes of a token; OIDC, launch and malformed ones dropped."""
    out: list[SmartScope] = []
    for text in scopes:
        try:
            out.append(parse_scope(text))
        except ScopeError:
            continue
    return tuple(out)


def scopes_grant(granted: tuple[SmartScope, ...], required: SmartScope) -> bool:
    """Whether any granted scope covers the required one."""
    return any(g.grants(required) for g in granted)
