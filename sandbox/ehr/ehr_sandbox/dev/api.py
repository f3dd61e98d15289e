"""Developer conveniences: demo patients, patient tokens, simulated actions, fault injection.

- `GET /dev/patients`, `POST /dev/patient-token`: dev mode only (404 otherwise), no auth:
  the gateway's local login uses them.
- `POST /sandbox/simulate/<action>`, `GET|POST|DELETE /sandbox/faults`: admin token.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ehr_sandbox.auth import bearer_token, mint_patient_id_token, mint_patient_token
from ehr_sandbox.auth.service import PATIENT_SCOPES
from ehr_sandbox.dev.faults import FaultConfig, FaultState
from ehr_sandbox.dev.simulate import Simulator
from ehr_sandbox.fhir.outcomes import FhirError, issues_from_errors
from ehr_sandbox.fhir.validation import parse_json_body
from ehr_sandbox.search import format_instant, is_valid_id
from ehr_sandbox.seed import DEMO_PATIENTS
from ehr_sandbox.settings import SandboxSettings
from ehr_sandbox.store import Store

router = APIRouter()


def _settings(request: Request) -> SandboxSettings:
    settings: SandboxSettings = request.app.state.settings
    return settings


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _require_dev_mode(request: Request) -> None:
    if not _settings(request).dev_mode:
        raise FhirError(404, "Not found", code="not-found")


def require_admin(request: Request) -> None:
    """401 without a bearer token, 403 unless it is the admin token."""
    token = bearer_token(request)
    if token is None:
        raise FhirError(
            401,
            "Missing bearer token",
            code="login",
            headers={"WWW-Authenticate": 'Bearer realm="ehr-sandbox"'},
        )
    if not hmac.compare_digest(token.encode(), _settings(request).admin_token.encode()):
        raise FhirError(403, "The admin token is required", code="forbidden")


async def _json_object(request: Request, *, optional: bool) -> dict[str, Any]:
    raw = await request.body()
    if optional and not raw.strip():
        return {}
    return parse_json_body(raw, what="a JSON object")


def _parse(model: type[BaseModel], body: dict[str, Any], root: str) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise FhirError(
            422, "Invalid request", issues=issues_from_errors(root, exc.errors())
        ) from exc


# -- dev mode -----------------------------------------------------------------------------


def _display_name(patient: dict[str, Any]) -> str:
    for name in patient.get("name", []):
        if name.get("text"):
            return str(name["text"])
        parts = [*name.get("given", []), name.get("family", "")]
        text = " ".join(p for p in parts if p)
        if text:
            return text
    return str(patient.get("id", ""))


@router.get("/dev/patients")
async def dev_patients(request: Request) -> JSONResponse:
    """The demo patients: id, display name and whether they have a clinical history."""
    _require_dev_mode(request)
    store = _store(request)
    patients = await store.read_many([("Patient", p.id) for p in DEMO_PATIENTS])
    known = {p.id: p for p in DEMO_PATIENTS}
    return JSONResponse(
        [
            {"id": p.id, "name": _display_name(p.content), "has_history": known[p.id].has_history}
            for p in patients
        ]
    )


class PatientTokenRequest(BaseModel):
    """Body of `POST /dev/patient-token`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    patient: str = Field(min_length=1, max_length=64)
    scope: str | None = Field(
        default=None,
        max_length=2000,
        description="Scopes to grant instead of the sign-in's (tests of narrower tokens)",
    )
    related_person: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Sign in as this RelatedPerson (a caregiver of `patient`) acting for "
        "the patient: `fhirUser` is the RelatedPerson, `patient` the patient",
    )


@router.post("/dev/patient-token")
async def dev_patient_token(request: Request) -> JSONResponse:
    """A patient access token for a demo (or any existing) patient, as the dev issuer mints it."""
    _require_dev_mode(request)
    body: PatientTokenRequest = _parse(
        PatientTokenRequest, await _json_object(request, optional=False), "body"
    )
    if not is_valid_id(body.patient) or not await _store(request).exists("Patient", body.patient):
        raise FhirError(404, f"Patient/{body.patient} is not known", code="not-found")
    if body.related_person is not None:
        await _check_caregiver(_store(request), body.related_person, body.patient)
    token = mint_patient_token(
        body.patient, app=request.app, scope=body.scope, related_person=body.related_person
    )
    answer = {
        "access_token": token,
        "token_type": "Bearer",
        "patient": body.patient,
        "scope": body.scope if body.scope is not None else PATIENT_SCOPES,
    }
    if body.related_person is None:
        # The ID token names the patient as the user; a caregiver's would not.
        answer["id_token"] = mint_patient_id_token(body.patient, app=request.app)
    return JSONResponse(answer)


async def _check_caregiver(store: Store, related_person: str, patient: str) -> None:
    """404 unless the RelatedPerson exists, is active and is related to the patient: a
    caregiver may only launch with the patient they are recorded for."""
    if not is_valid_id(related_person) or not await store.exists("RelatedPerson", related_person):
        raise FhirError(404, f"RelatedPerson/{related_person} is not known", code="not-found")
    person = dict((await store.read("RelatedPerson", related_person)).content)
    reference = (person.get("patient") or {}).get("reference", "")
    if person.get("active") is False or reference.rsplit("/", 2)[-2:] != ["Patient", patient]:
        raise FhirError(
            403,
            f"RelatedPerson/{related_person} is not an active caregiver of Patient/{patient}",
            code="forbidden",
        )


# -- simulation ---------------------------------------------------------------------------


@router.post("/sandbox/simulate/{action}")
async def simulate(request: Request, action: str) -> JSONResponse:
    """Perform a simulated clinician or lab action; returns what it wrote."""
    require_admin(request)
    body = await _json_object(request, optional=True)
    simulator = Simulator(_store(request), fhir_base=_settings(request).fhir_base)
    written = await simulator.run(action, body)
    # `lastUpdated`: when each version was written (a benchmark's start of the clock).
    return JSONResponse(
        {
            "written": [
                {
                    "reference": s.reference,
                    "versionId": str(s.version),
                    "lastUpdated": format_instant(s.last_updated),
                }
                for s in written
            ]
        },
        status_code=201,
    )


# -- faults -------------------------------------------------------------------------------


def _fault_view(request: Request) -> dict[str, Any]:
    config: FaultConfig = request.app.state.faults
    state: FaultState = request.app.state.fault_state
    return {
        **config.model_dump(),
        "down_remaining_s": round(state.down_remaining(), 3),
        # The rate limit's ledger per client since the configuration was set.
        "rate_limit_clients": {name: ledger.view() for name, ledger in state.clients.items()},
    }


@router.get("/sandbox/faults")
async def get_faults(request: Request) -> JSONResponse:
    """The active fault configuration."""
    require_admin(request)
    return JSONResponse(_fault_view(request))


@router.post("/sandbox/faults")
async def set_faults(request: Request) -> JSONResponse:
    """Replace the fault configuration (unset fields are off)."""
    require_admin(request)
    config: FaultConfig = _parse(FaultConfig, await _json_object(request, optional=False), "faults")
    request.app.state.fault_state.apply(config)
    request.app.state.faults = config
    return JSONResponse(_fault_view(request))


@router.delete("/sandbox/faults")
async def reset_faults(request: Request) -> JSONResponse:
    """Turn every fault off."""
    require_admin(request)
    config = FaultConfig()
    request.app.state.fault_state.apply(config)
    request.app.state.faults = config
    return JSONResponse(_fault_view(request))
