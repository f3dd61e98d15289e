"""Authorisation of sandbox requests, and the sandbox's SMART / OIDC authorisation server.

Every FHIR route calls `authorize(request, resource_type, interaction)`; it returns the
caller's `Principal` or raises a FHIR error: 401 (with `WWW-Authenticate: Bearer`) when
the bearer token is missing, invalid or expired, 403 when its scopes do not allow the
interaction. Three kinds of caller:

- the admin bearer token (`SANDBOX_ADMIN_TOKEN`): full access;
- SMART Backend Services tokens (`system/...` scopes, v1 `.read`/`.write` or v2 `.cruds`);
- patient tokens from the dev issuer (`patient/*.rs`, a `patient` claim): reads within
  their own compartment only; a caregiver's (`fhirUser` a RelatedPerson) only what an
  active Consent of the patient permits them (`ehr_sandbox.auth.consent`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Literal

from fastapi import FastAPI, Request

from ehr_sandbox.auth.compartment import check_patient_access
from ehr_sandbox.auth.consent import check_caregiver_consent, related_person_of
from ehr_sandbox.auth.routes import router
from ehr_sandbox.auth.scopes import parse_scopes, permission_for, scopes_allow, split_scope_string
from ehr_sandbox.auth.service import InvalidToken
from ehr_sandbox.auth.state import active_service, get_auth_service
from ehr_sandbox.fhir.outcomes import FhirError

__all__ = [
    "ADMIN_SCOPES",
    "Interaction",
    "Principal",
    "authorize",
    "bearer_token",
    "mint_patient_id_token",
    "mint_patient_token",
    "router",
]

Interaction = Literal[
    "read", "vread", "search", "create", "update", "delete", "history", "operation"
]

ADMIN_SCOPES = frozenset({"system/*.*", "user/*.*"})
_READ_INTERACTIONS = frozenset({"read", "vread", "search", "history", "operation"})


@dataclass(frozen=True)
class Principal:
    """Who is calling and what they may do."""

    subject: str
    scopes: frozenset[str]
    patient: str | None
    is_admin: bool
    kind: Literal["admin", "backend", "patient"] = "admin"
    client_id: str | None = None
    token_id: str | None = field(default=None, repr=False)


def bearer_token(request: Request) -> str | None:
    """The bearer token of the request's Authorization header, if any."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unauthorized(diagnostics: str, error: str | None = None) -> FhirError:
    challenge = 'Bearer realm="ehr-sandbox"'
    if error is not None:
        challenge += f', error="{error}"'
    return FhirError(401, diagnostics, code="login", headers={"WWW-Authenticate": challenge})


def _forbidden(diagnostics: str) -> FhirError:
    return FhirError(
        403,
        diagnostics,
        code="forbidden",
        headers={"WWW-Authenticate": 'Bearer realm="ehr-sandbox", error="insufficient_scope"'},
    )


async def authorize(request: Request, resource_type: str, interaction: str) -> Principal:
    """Return the caller's principal for `interaction` on `resource_type`.

    Raises `FhirError` 401 for a missing, invalid or expired token and 403 when the token's
    scopes (or, for a patient, its compartment) do not allow the interaction.
    """
    token = bearer_token(request)
    if token is None:
        raise _unauthorized("Missing bearer token")
    admin_token: str = request.app.state.settings.admin_token
    if hmac.compare_digest(token.encode(), admin_token.encode()):
        principal = Principal(subject="admin", scopes=ADMIN_SCOPES, patient=None, is_admin=True)
        request.state.principal = principal
        return principal
    service = get_auth_service(request.app)
    try:
        claims = service.verify_access_token(token)
    except InvalidToken as exc:
        raise _unauthorized(f"Invalid bearer token: {exc}", "invalid_token") from exc
    scope_tokens = split_scope_string(str(claims["scope"]))
    patient = claims.get("patient")
    principal = Principal(
        subject=str(claims.get("sub", "")),
        scopes=frozenset(scope_tokens),
        patient=str(patient) if patient is not None else None,
        is_admin=False,
        kind="patient" if patient is not None else "backend",
        client_id=str(claims["client_id"]) if claims.get("client_id") is not None else None,
        token_id=str(claims["jti"]) if claims.get("jti") is not None else None,
    )
    context = "patient" if principal.patient is not None else "system"
    parsed = parse_scopes(scope_tokens)
    if not scopes_allow(parsed, context, resource_type, interaction):
        needed = f"{context}/{resource_type}.{permission_for(interaction)}"
        raise _forbidden(f"The token's scopes do not allow this ({needed} is needed)")
    if principal.patient is not None:
        if interaction not in _READ_INTERACTIONS:
            raise _forbidden("Patient tokens may only read")
        await check_patient_access(request, resource_type, interaction, principal.patient)
        caregiver = related_person_of(claims.get("fhirUser"))
        if caregiver is not None:
            # A caregiver reads only what the patient's active Consent lets them.
            await check_caregiver_consent(request, resource_type, principal.patient, caregiver)
    request.state.principal = principal
    return principal


def mint_patient_token(
    patient_id: str,
    *,
    app: FastAPI | None = None,
    scope: str | None = None,
    related_person: str | None = None,
) -> str:
    """A patient access token for `patient_id`, as the dev issuer's code flow issues
    (with `related_person`: that caregiver's token acting for the patient).

    Test and dev helper behind `POST /dev/patient-token`. Without `app` it uses the most
    recently started sandbox app in this process.
    """
    service = get_auth_service(app) if app is not None else active_service()
    if service is None:
        raise RuntimeError("No sandbox app is running to sign the token")
    if scope is None:
        return service.patient_access_token(patient_id, related_person=related_person)
    return service.patient_access_token(patient_id, scope=scope, related_person=related_person)


def mint_patient_id_token(patient_id: str, *, app: FastAPI) -> str:
    """The OIDC ID token the code flow would issue with the access token (dev helper)."""
    service = get_auth_service(app)
    if service is None:
        raise RuntimeError("No sandbox app is running to sign the token")
    return service.patient_id_token(patient_id)
