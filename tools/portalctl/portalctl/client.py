"""Where the services are and how to call their ops APIs.

Each service is reached at `PORTALCTL_<NAME>_URL` (`PORTALCTL_EHR_CONNECTOR_URL`), by
default its local port on 127.0.0.1 (docs/design.md's fixed ports). The ops bearer token
comes from `PORTAL_OPS_TOKEN` (or `OPS_TOKEN`, the services' own variable): portalctl never
reads a database, only the services' HTTP ops APIs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

PORTS: Mapping[str, int] = {
    "gateway": 8000,
    "records": 8001,
    "scheduling": 8002,
    "messaging": 8003,
    "triage": 8004,
    "ehr-connector": 8005,
}
SERVICES = tuple(PORTS)
TOKEN_VARIABLES = ("PORTAL_OPS_TOKEN", "OPS_TOKEN")


class OpsError(Exception):
    """A call to a service's ops API failed: unreachable, refused, or answered an error."""

    def __init__(self, service: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.status = status


def service_url(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The base URL of a service: `PORTALCTL_<NAME>_URL` or its local default."""
    env = os.environ if environ is None else environ
    variable = f"PORTALCTL_{name.upper().replace('-', '_')}_URL"
    return env.get(variable) or f"http://127.0.0.1:{PORTS[name]}"


def ops_token(environ: Mapping[str, str] | None = None) -> str:
    """The ops token from the environment; an error naming the variables when unset."""
    env = os.environ if environ is None else environ
    for variable in TOKEN_VARIABLES:
        if env.get(variable):
            return env[variable]
    raise OpsError("portalctl", f"set {TOKEN_VARIABLES[0]} to the services' ops token")


@dataclass
class Ops:
    """Calls the ops APIs of the portal's services with the ops token."""

    http: httpx.AsyncClient
    token: str
    environ: Mapping[str, str] | None = None

    async def call(
        self,
        service: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """One request; the decoded JSON answer, or `OpsError` with the service's reason."""
        url = service_url(service, self.environ) + path
        try:
            response = await self.http.request(
                method,
                url,
                params={k: v for k, v in (params or {}).items() if v is not None},
                json=json,
                headers={"Authorization": f"Bearer {self.token}"},
            )
        except httpx.HTTPError as exc:
            raise OpsError(service, f"unreachable at {url} ({type(exc).__name__})") from exc
        if response.is_error:
            raise OpsError(service, _reason(response), response.status_code)
        if not response.content:
            return None
        return response.json()


def _reason(response: httpx.Response) -> str:
    """What a problem+json (or any) error answer says, in one line."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title")
        if isinstance(detail, list):  # FastAPI's validation errors
            detail = "; ".join(str(d.get("msg", d)) for d in detail if isinstance(d, dict))
        if detail:
            return f"HTTP {response.status_code}: {detail}"
    return f"HTTP {response.status_code}"
