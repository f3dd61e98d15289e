"""Authorisation of sandbox requests.

Every FHIR route calls `authorize(request, resource_type, interaction)`; it returns the
caller's `Principal` or raises a FHIR error (401 when unauthenticated). The admin bearer
token (`SANDBOX_ADMIN_TOKEN`) always has full access.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

from fastapi import Request

from ehr_sandbox.outcomes import FhirError

Interaction = Literal[
    "read", "vread", "search", "create", "update", "delete", "history", "operation"
]

ADMIN_SCOPES = frozenset({"system/*.*", "user/*.*"})


@dataclass(frozen=True)
class Principal:
    """Who is calling and what they may do."""

    subject: str
    scopes: frozenset[str]
    patient: str | None
    is_admin: bool


def bearer_token(request: Request) -> str | None:
    """The bearer token of the request's Authorization header, if any."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unauthorized(diagnostics: str) -> FhirError:
    return FhirError(
        401,
        diagnostics,
        code="login",
        headers={"WWW-Authenticate": 'Bearer realm="ehr-sandbox"'},
    )


async def authorize(request: Request, resource_type: str, interaction: str) -> Principal:
    """Return the caller's principal for `interaction` on `resource_type`, or raise 401."""
    token = bearer_token(request)
    if token is None:
        raise _unauthorized("Missing bearer token")
    admin_token: str = request.app.state.settings.admin_token
    if hmac.compare_digest(token.encode(), admin_token.encode()):
        principal = Principal(subject="admin", scopes=ADMIN_SCOPES, patient=None, is_admin=True)
        request.state.principal = principal
        return principal
    raise _unauthorized("Invalid bearer token")
