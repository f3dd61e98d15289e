"""HTTP endpoints of the sandbox's authorisation server.

Always on: SMART discovery (`/.well-known/smart-configuration`, also under `/fhir`), the
token endpoint (`POST /auth/token`), the JWKS (`/auth/jwks.json`), and the admin-only
`POST /auth/clients` and `POST /auth/keys/rotate`. Dev mode only (404 otherwise): the OIDC
discovery document, the patient sign-in page (`/auth/authorize`), the
`authorization_code` grant and `GET /dev/clients/{client_id}`.

Token endpoint errors follow RFC 6749 §5.2 (JSON `error`/`error_description`); the admin
endpoints answer errors as `application/problem+json`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ehr_sandbox.auth.clients import ClientRegistrationError, validate_registration
from ehr_sandbox.auth.pages import choose_patient_page, error_page
from ehr_sandbox.auth.patients import CAREGIVER_PREFIX, demo_caregivers, demo_patients
from ehr_sandbox.auth.scopes import NON_RESOURCE_SCOPES, ScopeError, parse_scope
from ehr_sandbox.auth.service import (
    PATIENT_SCOPES,
    PATIENT_WRITE_SCOPES,
    AuthService,
    OAuthError,
)
from ehr_sandbox.auth.state import activate, deactivate, get_auth_service
from servicekit.logging import get_logger

log = get_logger(__name__)

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_MAX_FORM_BYTES = 64 * 1024
_AUTHORIZE_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "nonce",
    "aud",
)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Keys and the dev client are made at start-up, so the dev client's key path is
    # printed when the sandbox starts rather than on the first token request.
    service = get_auth_service(app)
    activate(service)
    try:
        yield
    finally:
        deactivate(service)


router = APIRouter(lifespan=_lifespan)


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    """An RFC 9457 problem+json response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return Response(
        json.dumps(body),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def _oauth_error(exc: OAuthError) -> JSONResponse:
    headers = dict(_NO_STORE)
    if exc.status == 401:
        # RFC 6749 §5.2: a failed client authentication may carry an auth challenge.
        headers["WWW-Authenticate"] = 'Bearer realm="ehr-sandbox", error="invalid_client"'
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _read_form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "The body must be application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        raise OAuthError("invalid_request", "The request body is too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError("invalid_request", "The body is not a valid form") from exc
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            # RFC 6749 §3.1: request parameters MUST NOT be included more than once.
            raise OAuthError("invalid_request", f"Parameter {key} is repeated")
        form[key] = value
    return form


def _is_admin(request: Request) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    admin_token: str = request.app.state.settings.admin_token
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), admin_token.encode()
    )


def _admin_required() -> Response:
    return problem(
        401,
        "Unauthorized",
        "This endpoint needs the admin bearer token",
        {"WWW-Authenticate": 'Bearer realm="ehr-sandbox"'},
    )


def _dev_only(request: Request) -> Response | None:
    if not request.app.state.settings.dev_mode:
        return problem(404, "Not Found", "This endpoint exists only in dev mode")
    return None


# -- discovery ------------------------------------------------------------------------


def _smart_configuration(service: AuthService) -> dict[str, Any]:
    grant_types = ["client_credentials"]
    capabilities = ["client-confidential-asymmetric", "permission-v1", "permission-v2"]
    config: dict[str, Any] = {
        "issuer": service.base_url,
        "jwks_uri": f"{service.base_url}/auth/jwks.json",
        "token_endpoint": service.token_url,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write"],
        "registration_endpoint": f"{service.base_url}/auth/clients",
    }
    if service.dev_mode:
        grant_types.append("authorization_code")
        capabilities += [
            "launch-standalone",
            "context-standalone-patient",
            "permission-patient",
            "client-public",
            "sso-openid-connect",
        ]
        config["authorization_endpoint"] = f"{service.base_url}/auth/authorize"
        config["response_types_supported"] = ["code"]
        config["code_challenge_methods_supported"] = ["S256"]
        config["scopes_supported"] += PATIENT_SCOPES.split()
    config["grant_types_supported"] = grant_types
    config["capabilities"] = capabilities
    return config


@router.get("/.well-known/smart-configuration", include_in_schema=False)
@router.get("/fhir/.well-known/smart-configuration", include_in_schema=False)
async def smart_configuration(request: Request) -> JSONResponse:
    """SMART App Launch / Backend Services discovery document."""
    return JSONResponse(_smart_configuration(get_auth_service(request.app)))


@router.get("/.well-known/openid-configuration", include_in_schema=False)
async def openid_configuration(request: Request) -> Response:
    """OIDC discovery of the dev patient issuer (dev mode only)."""
    if (denied := _dev_only(request)) is not None:
        return denied
    service = get_auth_service(request.app)
    return JSONResponse(
        {
            "issuer": service.base_url,
            "authorization_endpoint": f"{service.base_url}/auth/authorize",
            "token_endpoint": service.token_url,
            "jwks_uri": f"{service.base_url}/auth/jwks.json",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": PATIENT_SCOPES.split(),
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser", "patient"],
        }
    )


@router.get("/auth/jwks.json", include_in_schema=False)
async def jwks(request: Request) -> JSONResponse:
    """The sandbox's public signing keys (tokens and notification signatures)."""
    return JSONResponse(
        get_auth_service(request.app).keys.jwks(),
        headers={"Cache-Control": "public, max-age=60"},
    )


# -- token endpoint -------------------------------------------------------------------


@router.post("/auth/token", include_in_schema=False)
async def token(request: Request) -> Response:
    """OAuth 2.0 token endpoint: client_credentials (SMART Backend Services) and, in dev
    mode, authorization_code with PKCE for patients."""
    service = get_auth_service(request.app)
    try:
        form = await _read_form(request)
        grant_type = form.get("grant_type")
        if grant_type == "client_credentials":
            result = service.client_credentials(form)
        elif grant_type == "authorization_code" and service.dev_mode:
            result = service.authorization_code(form)
        elif not grant_type:
            raise OAuthError("invalid_request", "grant_type is required")
        else:
            raise OAuthError("unsupported_grant_type", f"grant_type {grant_type} is not supported")
    except OAuthError as exc:
        log.info("token_request_rejected", error=exc.error)
        return _oauth_error(exc)
    return JSONResponse(result.body(), headers=_NO_STORE)


# -- admin ----------------------------------------------------------------------------


@router.post("/auth/clients", include_in_schema=False)
async def register_client(request: Request) -> Response:
    """Register (or replace) a backend client with its public JWKS (admin only)."""
    if not _is_admin(request):
        return _admin_required()
    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        return problem(400, "Bad Request", "The body must be a JSON object")
    try:
        client = validate_registration(data)
    except ClientRegistrationError as exc:
        return problem(422, "Unprocessable Content", str(exc))
    service = get_auth_service(request.app)
    if client.client_id == service.settings.dev_client_id and service.dev_client is not None:
        return problem(409, "Conflict", "The dev client's keys are managed by the sandbox")
    service.clients.register(client)
    log.info("client_registered", client_id=client.client_id)
    return JSONResponse(client.public_view(), status_code=201)


@router.post("/auth/keys/rotate", include_in_schema=False)
async def rotate_keys(request: Request) -> Response:
    """Start signing with a new key; old public keys stay in the JWKS for the grace."""
    if not _is_admin(request):
        return _admin_required()
    service = get_auth_service(request.app)
    kid = service.keys.rotate()
    return JSONResponse(
        {"kid": kid, "grace_seconds": service.settings.key_grace_s, "jwks": service.keys.jwks()}
    )


@router.get("/dev/clients/{client_id}", include_in_schema=False)
async def dev_client(request: Request, client_id: str) -> Response:
    """Where the generated dev client's private key is, so a local connector can use it."""
    if (denied := _dev_only(request)) is not None:
        return denied
    service = get_auth_service(request.app)
    files = service.dev_client
    if files is None or client_id != files.client_id:
        return problem(404, "Not Found", "No generated client with this id")
    return JSONResponse(
        {
            "client_id": files.client_id,
            "token_endpoint": service.token_url,
            "alg": files.alg,
            "kid": files.kid,
            "private_key_path": str(files.private_key_pem),
            "private_jwk_path": str(files.private_key_jwk),
            "jwks": files.public_jwks,
            "scope": service.settings.dev_client_scope,
        }
    )


# -- dev patient issuer: authorization endpoint ---------------------------------------


class _AuthorizeError(Exception):
    """An authorization request error; redirectable ones go back to the client."""

    def __init__(self, error: str, description: str, redirect: bool) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.redirect = redirect


def _redirect_allowed(service: AuthService, uri: str) -> bool:
    allowed = service.settings.patient_redirect_uris
    if allowed:
        return uri in allowed
    try:
        parts = urlsplit(uri)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def _validate_scope(scope: str) -> str:
    tokens = scope.split()
    for token in tokens:
        if token in NON_RESOURCE_SCOPES:
            continue
        try:
            parsed = parse_scope(token)
        except ScopeError as exc:
            raise _AuthorizeError("invalid_scope", str(exc), True) from exc
        writes = [parse_scope(w) for w in PATIENT_WRITE_SCOPES]
        if parsed.context != "patient" or (
            parsed.permissions - {"r", "s"} and not any(w.covers(parsed) for w in writes)
        ):
            raise _AuthorizeError(
                "invalid_scope",
                "Patients may only be granted patient/<type>.rs scopes and "
                + " ".join(PATIENT_WRITE_SCOPES),
                True,
            )
    if "openid" not in tokens:
        raise _AuthorizeError("invalid_scope", "scope must include openid", True)
    return " ".join(dict.fromkeys(tokens))


def _validate_authorize(service: AuthService, params: dict[str, str]) -> dict[str, str]:
    client_id = params.get("client_id", "")
    if client_id != service.settings.patient_audience:
        raise _AuthorizeError("unauthorized_client", "Unknown client_id", False)
    redirect_uri = params.get("redirect_uri", "")
    if not _redirect_allowed(service, redirect_uri):
        raise _AuthorizeError("invalid_request", "redirect_uri is not allowed", False)
    if params.get("response_type") != "code":
        raise _AuthorizeError("unsupported_response_type", "response_type must be code", True)
    if params.get("code_challenge_method") != "S256":
        raise _AuthorizeError(
            "invalid_request", "PKCE is required with code_challenge_method=S256", True
        )
    challenge = params.get("code_challenge", "")
    if len(challenge) != 43:
        raise _AuthorizeError("invalid_request", "code_challenge must be an S256 value", True)
    clean = {k: params[k] for k in _AUTHORIZE_PARAMS if params.get(k)}
    clean["scope"] = _validate_scope(params.get("scope") or PATIENT_SCOPES)
    return clean


def _redirect_with(uri: str, values: dict[str, str]) -> RedirectResponse:
    separator = "&" if urlsplit(uri).query else "?"
    return RedirectResponse(uri + separator + urlencode(values), status_code=303)


def _authorize_error_response(exc: _AuthorizeError, params: dict[str, str]) -> Response:
    if not exc.redirect:
        # RFC 6749 §4.1.2.1: never redirect to an unverified redirect_uri.
        return HTMLResponse(error_page(exc.description), status_code=400)
    values = {"error": exc.error, "error_description": exc.description}
    if params.get("state"):
        values["state"] = params["state"]
    return _redirect_with(params["redirect_uri"], values)


@router.get("/auth/authorize", include_in_schema=False)
async def authorize_page(request: Request) -> Response:
    """The dev sign-in page: the user picks one of the demo patients."""
    if (denied := _dev_only(request)) is not None:
        return denied
    service = get_auth_service(request.app)
    params = dict(request.query_params.items())
    try:
        clean = _validate_authorize(service, params)
    except _AuthorizeError as exc:
        return _authorize_error_response(exc, params)
    patients = await demo_patients(request.app)
    caregivers = await demo_caregivers(request.app, patients)
    return HTMLResponse(
        choose_patient_page(patients, clean, "/auth/authorize", caregivers),
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


@router.post("/auth/authorize", include_in_schema=False)
async def authorize_submit(request: Request) -> Response:
    """The sign-in form's submission: redirect back with a code (or access_denied)."""
    if (denied := _dev_only(request)) is not None:
        return denied
    service = get_auth_service(request.app)
    try:
        form = await _read_form(request)
    except OAuthError as exc:
        return HTMLResponse(error_page(exc.description), status_code=400)
    try:
        clean = _validate_authorize(service, form)
    except _AuthorizeError as exc:
        return _authorize_error_response(exc, form)
    state = {"state": clean["state"]} if clean.get("state") else {}
    if form.get("decision") != "allow":
        return _redirect_with(
            clean["redirect_uri"],
            {"error": "access_denied", "error_description": "The user cancelled", **state},
        )
    patient = form.get("patient", "")
    patients = await demo_patients(request.app)
    related_person: str | None = None
    if patient.startswith(CAREGIVER_PREFIX):
        # A caregiver signs in as themself, for the patient the EHR relates them to.
        caregivers = {r: pid for r, pid, _n, _h in await demo_caregivers(request.app, patients)}
        related_person = patient.removeprefix(CAREGIVER_PREFIX)
        patient = caregivers.get(related_person, "")
    known = {pid for pid, _name, _hint in patients}
    if patient not in known:
        return HTMLResponse(error_page("Choose one of the listed patients."), status_code=400)
    code = service.create_code(
        client_id=clean["client_id"],
        redirect_uri=clean["redirect_uri"],
        code_challenge=clean["code_challenge"],
        patient=patient,
        scope=clean["scope"],
        nonce=clean.get("nonce"),
        related_person=related_person,
    )
    return _redirect_with(clean["redirect_uri"], {"code": code, **state})
