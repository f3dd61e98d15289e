"""The authorisation server's state and rules: tokens in, tokens out.

`AuthService` verifies SMART Backend Services client assertions, runs the dev patient
issuer's authorization-code + PKCE grant, issues access and id tokens signed with the
sandbox's key ring, and verifies the bearer tokens FHIR calls present. It is framework-free
so the rules can be tested directly; `ehr_sandbox.auth.routes` puts HTTP around it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jws import extract_compact

from ehr_sandbox.auth.clients import (
    ASSERTION_ALGORITHMS,
    Client,
    ClientRegistry,
    DevClientFiles,
    ensure_dev_client,
)
from ehr_sandbox.auth.keys import SIGNING_ALG, SigningKeyRing
from ehr_sandbox.auth.scopes import (
    NON_RESOURCE_SCOPES,
    Scope,
    ScopeError,
    parse_scope,
    split_scope_string,
)
from ehr_sandbox.auth.settings import AuthSettings
from servicekit.logging import get_logger

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# What a patient's sign-in grants: read/search of their record, and the portal's own
# writes (book/cancel appointments, send/mark-read messages, intake and symptom checks).
# The sandbox's FHIR API still lets patient tokens only read (auth.require_principal).
PATIENT_WRITE_SCOPES = (
    "patient/Appointment.cu",
    "patient/Communication.cu",
    "patient/QuestionnaireResponse.cu",
    "patient/Consent.cu",  # granting and revoking a caregiver's access
)
PATIENT_SCOPES = "openid fhirUser launch/patient patient/*.rs " + " ".join(PATIENT_WRITE_SCOPES)
_MAX_ASSERTION_LENGTH = 16_384
# Verified access tokens remembered (the oldest go first beyond it).
_VERIFIED_TOKENS = 4096

log = get_logger(__name__)


class OAuthError(Exception):
    """An RFC 6749 error response: `error` code, description and HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        """The JSON error body."""
        return {"error": self.error, "error_description": self.description}


class InvalidToken(Exception):
    """A bearer token that is missing, malformed, wrongly signed or expired."""


@dataclass(frozen=True)
class TokenResponse:
    """What the token endpoint returns on success."""

    access_token: str
    expires_in: int
    scope: str
    id_token: str | None = None
    patient: str | None = None

    def body(self) -> dict[str, Any]:
        """The JSON body of the token response."""
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }
        if self.id_token is not None:
            body["id_token"] = self.id_token
        if self.patient is not None:
            body["patient"] = self.patient
        return body


@dataclass(frozen=True)
class AuthorizationCode:
    """A pending authorization code of the dev patient issuer (single use, short-lived)."""

    client_id: str
    redirect_uri: str
    code_challenge: str
    patient: str
    scope: str
    nonce: str | None
    expires_at: float
    related_person: str | None = None  # the user, when a caregiver signs in for the patient


def pkce_s256(verifier: str) -> str:
    """The S256 code challenge of a PKCE code verifier (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _is_pkce_verifier(value: str) -> bool:
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    return 43 <= len(value) <= 128 and set(value) <= allowed


class AuthService:
    """Keys, clients, replay protection, codes, and token issue and verification."""

    def __init__(self, settings: AuthSettings, *, base_url: str, dev_mode: bool) -> None:
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        self.fhir_base = self.base_url + "/fhir"
        self.token_url = self.base_url + "/auth/token"
        self.dev_mode = dev_mode
        data_dir = settings.data_dir
        self.keys = SigningKeyRing(data_dir / "signing-keys.json", grace_s=settings.key_grace_s)
        self.clients = ClientRegistry(data_dir / "registered-clients.json")
        if settings.clients_file is not None:
            self.clients.load_clients_file(settings.clients_file)
        self.dev_client: DevClientFiles | None = None
        if dev_mode:
            self.dev_client = ensure_dev_client(data_dir / "clients", settings.dev_client_id)
            self.clients.register(
                Client(
                    client_id=self.dev_client.client_id,
                    jwks=self.dev_client.public_jwks,
                    scope=settings.dev_client_scope,
                    name="Local portal connector (generated)",
                    source="dev",
                )
            )
            log.info(
                "dev_client_ready",
                client_id=self.dev_client.client_id,
                private_key_path=str(self.dev_client.private_key_pem),
            )
        self._seen_jti: dict[tuple[str, str], float] = {}
        self._verified: OrderedDict[str, tuple[dict[str, Any], str]] = OrderedDict()
        self._codes: dict[str, AuthorizationCode] = {}
        self._lock = threading.Lock()

    # -- backend services -------------------------------------------------------------

    def client_credentials(self, form: dict[str, str]) -> TokenResponse:
        """Run the SMART Backend Services client-credentials grant."""
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise OAuthError(
                "invalid_client",
                f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}",
                401,
            )
        assertion = form.get("client_assertion", "")
        if not assertion or len(assertion) > _MAX_ASSERTION_LENGTH:
            raise OAuthError("invalid_client", "client_assertion is missing", 401)
        client = self._verify_assertion(assertion, form.get("client_id"))
        scope_text = form.get("scope", "").strip()
        if not scope_text:
            raise OAuthError("invalid_scope", "scope is required")
        granted = self._grant_backend_scopes(client, split_scope_string(scope_text))
        token = self._sign_access_token(
            subject=client.client_id,
            audience=self.fhir_base,
            scope=granted,
            extra={"client_id": client.client_id},
        )
        log.info("backend_token_issued", client_id=client.client_id)
        return TokenResponse(
            access_token=token, expires_in=self.settings.access_token_ttl_s, scope=granted
        )

    def _verify_assertion(self, assertion: str, form_client_id: str | None) -> Client:
        try:
            unverified = extract_compact(assertion.encode("ascii"))
            header = unverified.headers()
            # Only to find the client whose keys verify it; nothing is trusted before that.
            claims = json.loads(unverified.payload)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise OAuthError("invalid_client", "client_assertion is not a JWS", 401) from exc
        if not isinstance(claims, dict):
            raise OAuthError("invalid_client", "client_assertion claims must be an object", 401)
        if header.get("alg") not in ASSERTION_ALGORITHMS:
            raise OAuthError(
                "invalid_client", "client_assertion must be signed with RS384 or ES384", 401
            )
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or claims.get("sub") != issuer:
            raise OAuthError("invalid_client", "iss and sub must both be the client_id", 401)
        if form_client_id is not None and form_client_id != issuer:
            raise OAuthError("invalid_client", "client_id does not match the assertion", 401)
        client = self.clients.get(issuer)
        if client is None:
            raise OAuthError("invalid_client", "Unknown client", 401)
        try:
            verified = jwt.decode(assertion, client.keyset, algorithms=ASSERTION_ALGORITHMS)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise OAuthError(
                "invalid_client", "client_assertion signature is invalid", 401
            ) from exc
        self._check_assertion_claims(client.client_id, verified.claims)
        return client

    def _check_assertion_claims(self, client_id: str, claims: dict[str, Any]) -> None:
        now = time.time()
        skew = self.settings.clock_skew_s
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.token_url not in audiences:
            raise OAuthError("invalid_client", "aud must be the token endpoint URL", 401)
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise OAuthError("invalid_client", "exp is required", 401)
        if exp <= now - skew:
            raise OAuthError("invalid_client", "client_assertion has expired", 401)
        if exp > now + self.settings.assertion_max_lifetime_s + skew:
            raise OAuthError("invalid_client", "exp may be at most 5 minutes in the future", 401)
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + skew:
            raise OAuthError("invalid_client", "client_assertion is not valid yet", 401)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise OAuthError("invalid_client", "jti is required", 401)
        with self._lock:
            self._seen_jti = {k: v for k, v in self._seen_jti.items() if v > now - skew}
            if (client_id, jti) in self._seen_jti:
                raise OAuthError("invalid_client", "client_assertion jti was already used", 401)
            self._seen_jti[(client_id, jti)] = float(exp)

    def _grant_backend_scopes(self, client: Client, requested: list[str]) -> str:
        allowed: list[Scope] = []
        if client.scope is not None:
            allowed = [parse_scope(s) for s in split_scope_string(client.scope)]
        granted: list[str] = []
        for text in requested:
            try:
                scope = parse_scope(text)
            except ScopeError as exc:
                raise OAuthError("invalid_scope", str(exc)) from exc
            if scope.context != "system":
                raise OAuthError("invalid_scope", "Backend clients may only request system/ scopes")
            if client.scope is not None and not any(a.covers(scope) for a in allowed):
                raise OAuthError("invalid_scope", f"Scope {text} is not allowed for this client")
            granted.append(text)
        return " ".join(granted)

    # -- dev patient issuer -----------------------------------------------------------

    def create_code(
        self,
        *,
        client_id: str,
        redirect_uri: str,
        code_challenge: str,
        patient: str,
        scope: str,
        nonce: str | None,
        related_person: str | None = None,
    ) -> str:
        """Issue a single-use authorization code for the patient the user picked (and,
        for a caregiver, the RelatedPerson the user is)."""
        code = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self._codes = {k: v for k, v in self._codes.items() if v.expires_at > now}
            self._codes[code] = AuthorizationCode(
                client_id=client_id,
                redirect_uri=redirect_uri,
                code_challenge=code_challenge,
                patient=patient,
                scope=scope,
                nonce=nonce,
                expires_at=now + self.settings.auth_code_ttl_s,
                related_person=related_person,
            )
        return code

    def authorization_code(self, form: dict[str, str]) -> TokenResponse:
        """Exchange an authorization code and its PKCE verifier for patient tokens."""
        code = form.get("code", "")
        verifier = form.get("code_verifier", "")
        if not code:
            raise OAuthError("invalid_request", "code is required")
        if not _is_pkce_verifier(verifier):
            raise OAuthError("invalid_request", "code_verifier is missing or malformed")
        with self._lock:
            # Single use: the code is gone whether or not the rest of the checks pass.
            pending = self._codes.pop(code, None)
        if pending is None or pending.expires_at <= time.time():
            raise OAuthError("invalid_grant", "Unknown, used or expired authorization code")
        if form.get("redirect_uri") != pending.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorization")
        client_id = form.get("client_id")
        if client_id is not None and client_id != pending.client_id:
            raise OAuthError("invalid_grant", "client_id does not match the authorization")
        if not hmac.compare_digest(pkce_s256(verifier), pending.code_challenge):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        access = self.patient_access_token(
            pending.patient, scope=pending.scope, related_person=pending.related_person
        )
        id_token = self._sign_id_token(
            pending.patient, pending.client_id, pending.nonce, pending.related_person
        )
        log.info("patient_token_issued")
        return TokenResponse(
            access_token=access,
            expires_in=self.settings.access_token_ttl_s,
            scope=pending.scope,
            id_token=id_token,
            patient=pending.patient,
        )

    def patient_access_token(
        self, patient_id: str, scope: str = PATIENT_SCOPES, *, related_person: str | None = None
    ) -> str:
        """A patient access token: the `patient` claim and SMART v2 patient scopes.

        With `related_person`, the user is that RelatedPerson (a parent or family member)
        acting for the patient in context (SMART App Launch: `fhirUser` names the user,
        `patient` the patient chosen at launch); what they may see is then up to the
        patient's consent, which the portal's gateway enforces."""
        user = f"RelatedPerson/{related_person}" if related_person else f"Patient/{patient_id}"
        return self._sign_access_token(
            subject=related_person or patient_id,
            audience=self.settings.patient_audience,
            scope=scope,
            extra={
                "patient": patient_id,
                "fhirUser": f"{self.fhir_base}/{user}",
                "client_id": self.settings.patient_audience,
            },
        )

    def patient_id_token(self, patient_id: str) -> str:
        """The OIDC ID token the code flow issues alongside (tests show it is refused as an
        access token)."""
        return self._sign_id_token(patient_id, self.settings.patient_audience, None)

    def _sign_id_token(
        self, patient_id: str, client_id: str, nonce: str | None, related_person: str | None = None
    ) -> str:
        now = int(time.time())
        user = f"RelatedPerson/{related_person}" if related_person else f"Patient/{patient_id}"
        claims: dict[str, Any] = {
            "iss": self.base_url,
            "sub": related_person or patient_id,
            "aud": client_id,
            "iat": now,
            "auth_time": now,
            "exp": now + self.settings.access_token_ttl_s,
            "fhirUser": f"{self.fhir_base}/{user}",
            "patient": patient_id,
        }
        if nonce:
            claims["nonce"] = nonce
        return self._sign(claims)

    # -- tokens -----------------------------------------------------------------------

    def _sign_access_token(
        self, *, subject: str, audience: str, scope: str, extra: dict[str, Any]
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.base_url,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": now + self.settings.access_token_ttl_s,
            "jti": uuid.uuid4().hex,
            "scope": scope,
            "token_use": "access",
            **extra,
        }
        return self._sign(claims)

    def _sign(self, claims: dict[str, Any]) -> str:
        key = self.keys.current
        header = {"alg": SIGNING_ALG, "kid": key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, key, algorithms=[SIGNING_ALG])

    def verify_access_token(self, token: str) -> dict[str, Any]:
        """The claims of a valid sandbox access token, or raise InvalidToken.

        A token that passed is remembered by its text until it expires: a later request
        with it is checked against the clock and the keys still in use (a key rotated out
        of its grace refuses it, as verifying would), not verified again. Verifying every
        request's token was 8% of the sandbox's CPU under benchmark 1 (py-spy). Refused
        tokens are not remembered."""
        with self._lock:
            known = self._verified.get(token)
        if known is not None:
            remembered, signer = known
            exp = remembered["exp"]
            if signer in self.keys.live_kids() and exp > time.time() - self.settings.clock_skew_s:
                return dict(remembered)
            with self._lock:
                self._verified.pop(token, None)
        claims, kid = self._verify_access_token(token)
        if kid is not None:  # without one, which key signed it cannot be re-checked
            with self._lock:
                self._verified[token] = (claims, kid)
                while len(self._verified) > _VERIFIED_TOKENS:
                    self._verified.popitem(last=False)
        return dict(claims)

    def _verify_access_token(self, token: str) -> tuple[dict[str, Any], str | None]:
        if len(token) > _MAX_ASSERTION_LENGTH:
            raise InvalidToken("Token too long")
        try:
            decoded = jwt.decode(token, self.keys.verification_keys(), algorithms=[SIGNING_ALG])
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise InvalidToken("Token signature is invalid") from exc
        claims = decoded.claims
        kid = decoded.header.get("kid")
        if not isinstance(kid, str):
            kid = None
        if claims.get("iss") != self.base_url or claims.get("token_use") != "access":
            raise InvalidToken("Token was not issued by this server")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= time.time() - self.settings.clock_skew_s:
            raise InvalidToken("Token has expired")
        patient = claims.get("patient")
        expected_aud = self.settings.patient_audience if patient is not None else self.fhir_base
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if expected_aud not in audiences:
            raise InvalidToken("Token audience is not this server")
        if not isinstance(claims.get("scope"), str):
            raise InvalidToken("Token has no scope")
        return claims, kid

    def resource_scope_tokens(self, scope: str) -> list[str]:
        """The resource scopes (not OIDC/launch ones) in a scope string."""
        return [s for s in split_scope_string(scope) if s not in NON_RESOURCE_SCOPES]
