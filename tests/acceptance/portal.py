"""The two sides the suite plays: the clinic (the EHR sandbox's simulator and FHIR API with
the admin token) and patients (tokens from the sandbox's dev issuer, the gateway's API and
event stream). Nothing here reaches into a service: only public interfaces."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import Any

import httpx

from .checker import TLS, PatientStream
from .stack import ADMIN_TOKEN, CONNECTOR, GATEWAY, OPS_TOKEN, SANDBOX

FHIR_JSON = {"Content-Type": "application/fhir+json"}


class Clinic:
    """The clinic: simulated clinician and lab actions, FHIR reads and writes."""

    def __init__(self) -> None:
        self.http = httpx.AsyncClient(
            base_url=SANDBOX, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
        )

    async def __aenter__(self) -> Clinic:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.http.aclose()

    async def simulate(self, action: str, **body: Any) -> list[str]:
        """Run a simulated action; returns the references it wrote (`Type/id`)."""
        return [w["reference"] for w in await self.simulate_written(action, **body)]

    async def simulate_written(self, action: str, **body: Any) -> list[dict[str, str]]:
        """Run a simulated action; returns what it wrote (`reference`, `versionId`,
        `lastUpdated`), in order."""
        response = await self.http.post(f"/sandbox/simulate/{action}", json=body)
        if response.status_code != 201:
            raise AssertionError(f"simulate {action}: {response.status_code} {response.text}")
        written: list[dict[str, str]] = response.json()["written"]
        return written

    async def search(self, resource_type: str, **params: Any) -> list[dict[str, Any]]:
        """Every match of a FHIR search (following the Bundle's next links)."""
        found: list[dict[str, Any]] = []
        response = await self.http.get(f"/fhir/{resource_type}", params=params)
        while True:
            assert response.status_code == 200, response.text
            bundle = response.json()
            found += [
                e["resource"]
                for e in bundle.get("entry", [])
                if e.get("search", {}).get("mode", "match") == "match"
            ]
            following = next(
                (link["url"] for link in bundle.get("link", []) if link["relation"] == "next"),
                None,
            )
            if following is None:
                return found
            response = await self.http.get(following)

    async def read(self, reference: str) -> dict[str, Any]:
        """Read one resource by `Type/id`."""
        response = await self.http.get(f"/fhir/{reference}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def new_patient(self, family: str) -> str:
        """Register a patient in the EHR (as the clinic's front desk would); returns its id."""
        resource = {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:acceptance:mrn", "value": uuid.uuid4().hex[:12]}],
            "name": [{"family": family, "given": ["Test"]}],
            "gender": "unknown",
            "birthDate": "1980-01-01",
        }
        response = await self.http.post("/fhir/Patient", json=resource, headers=FHIR_JSON)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def token(self, patient: str) -> str:
        """A patient access token from the sandbox's development issuer."""
        response = await self.http.post("/dev/patient-token", json={"patient": patient})
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    async def wait_subscriptions_active(self, timeout: float = 120) -> None:
        """Wait until every topic the connector is configured for has an active
        Subscription, as the connector reports it (a topic it has not created yet is listed
        as missing) and as the EHR holds it."""
        deadline = time.monotonic() + timeout
        ops = {"Authorization": f"Bearer {OPS_TOKEN}"}
        async with httpx.AsyncClient(base_url=CONNECTOR, headers=ops, timeout=30) as connector:
            while True:
                listed: list[dict[str, Any]] = []
                with contextlib.suppress(httpx.HTTPError):
                    response = await connector.get("/ops/subscriptions")
                    if response.status_code == 200:
                        listed = response.json()
                held = await self.search("Subscription")
                if (
                    listed
                    and all(s.get("status") == "active" for s in listed)
                    and held
                    and all(s.get("status") == "active" for s in held)
                ):
                    return
                if time.monotonic() > deadline:
                    states = {
                        "connector": [(s.get("topic"), s.get("status")) for s in listed],
                        "ehr": [s.get("status") for s in held],
                    }
                    raise AssertionError(f"Subscriptions not active after {timeout} s: {states}")
                await asyncio.sleep(0.5)


def _expires_at(token: str) -> float:
    """The `exp` of a JWT (read, not verified: the client only plans its renewal)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return float(claims["exp"])


class PatientAuth(httpx.Auth):
    """A patient app's sign-in: its access token, renewed a minute before it expires, as an
    app does with its refresh token. The suite runs for longer than a token lives (five
    minutes): a stream reconnecting after a restart must not present an expired one."""

    def __init__(self, clinic: Clinic, patient_id: str, token: str) -> None:
        self.clinic = clinic
        self.patient_id = patient_id
        self.current = token
        self._lock = asyncio.Lock()

    async def token(self, valid_for_s: float = 60) -> str:
        """A token valid for at least another `valid_for_s` (at most its lifetime)."""
        async with self._lock:
            if _expires_at(self.current) - time.time() < valid_for_s:
                self.current = await self.clinic.token(self.patient_id)
        return self.current

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"Bearer {await self.token()}"
        yield request


class Patient:
    """A signed-in patient: the gateway's API with their token, and their open stream."""

    def __init__(self, patient_id: str, auth: PatientAuth) -> None:
        self.id = patient_id
        self.auth = auth
        self.http = httpx.AsyncClient(base_url=GATEWAY, auth=auth, timeout=60, verify=TLS)
        self.stream = PatientStream(GATEWAY, patient_id, auth)

    @property
    def token(self) -> str:
        """The access token in use now."""
        return self.auth.current

    @classmethod
    async def sign_in(cls, clinic: Clinic, patient_id: str) -> Patient:
        """Get a token and open the portal: the first call links the account."""
        token = await clinic.token(patient_id)
        patient = cls(patient_id, PatientAuth(clinic, patient_id, token))
        me = await patient.http.get("/v1/me")
        assert me.status_code == 200, me.text
        return patient

    async def open_stream(self) -> None:
        """Open `/v1/me/events` and wait until it is connected."""
        self.stream.start()
        await asyncio.wait_for(self.stream.connected.wait(), 60)

    async def close(self) -> None:
        """Close the stream and the client."""
        await self.stream.stop()
        await self.http.aclose()

    async def get(self, path: str, **params: Any) -> Any:
        """GET a gateway path; asserts 200 and returns the JSON body."""
        response = await self.fetch(path, **params)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    async def fetch(self, path: str, **params: Any) -> httpx.Response:
        """GET a gateway path as a well-behaved client: a 429 (this token or address was
        rate-limited, e.g. right after a burst) is retried once after its `Retry-After`."""
        response = await self.http.get(path, params=params or None)
        if response.status_code == 429:
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
            response = await self.http.get(path, params=params or None)
        return response
