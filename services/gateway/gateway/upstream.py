"""Calls from the gateway to the services that own the data (HTTP, per-call timeouts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.responses import JSONResponse

from gateway.settings import Settings


class UpstreamError(Exception):
    """A service did not answer usefully: `status` is what the patient should get."""

    def __init__(self, service: str, status: int, detail: str) -> None:
        super().__init__(f"{service}: {detail}")
        self.service = service
        self.status = status
        self.detail = detail


# Response headers of a service that the client of the gateway should see.
PASSED_HEADERS = frozenset({"idempotent-replayed", "content-type", "retry-after"})


@dataclass(frozen=True)
class Forwarded:
    """A service's answer to pass on to the patient as it is."""

    status: int
    body: Any
    headers: dict[str, str]

    def response(self) -> JSONResponse:
        """The answer as the gateway's response (problem+json stays problem+json)."""
        media = self.headers.get("content-type", "application/json").split(";")[0]
        extra = {k: v for k, v in self.headers.items() if k.lower() != "content-type"}
        return JSONResponse(self.body, status_code=self.status, headers=extra, media_type=media)


class Upstreams:
    """One pooled HTTP client for every owning service."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self.client = client
        self.timeout = settings.upstream_timeout_s
        self.urls = {
            "records": settings.records_url.rstrip("/"),
            "scheduling": settings.scheduling_url.rstrip("/"),
            "messaging": settings.messaging_url.rstrip("/"),
            "triage": settings.triage_url.rstrip("/"),
        }

    async def request(
        self,
        service: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Call a service; 404, 409 and 422 pass through, anything else unusable is a
        502/503/504."""
        url = self.urls[service] + path
        try:
            response = await self.client.request(
                method, url, json=json, params=params, headers=headers, timeout=self.timeout
            )
        except httpx.TimeoutException as exc:
            raise UpstreamError(service, 504, "did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(service, 503, "is unavailable") from exc
        if response.status_code == 404:
            raise UpstreamError(service, 404, "not found")
        if response.status_code in (409, 422):
            raise UpstreamError(service, response.status_code, _detail(response))
        if response.status_code >= 400:
            raise UpstreamError(service, 502, f"answered {response.status_code}")
        return response.json()

    async def forward(
        self,
        service: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Forwarded:
        """Call a service for a patient's command and keep its answer: the status (201, 202,
        a replayed 201...), the body and the headers that matter to the client; 4xx answers
        (problem details) pass through too. Anything unusable is an `UpstreamError`."""
        url = self.urls[service] + path
        try:
            response = await self.client.request(
                method, url, json=json, params=params, headers=headers, timeout=self.timeout
            )
        except httpx.TimeoutException as exc:
            raise UpstreamError(service, 504, "did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(service, 503, "is unavailable") from exc
        if response.status_code >= 500 or response.status_code in (401, 403):
            raise UpstreamError(service, 502, f"answered {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise UpstreamError(service, 502, "answered something unreadable") from exc
        kept = {k: v for k, v in response.headers.items() if k.lower() in PASSED_HEADERS}
        return Forwarded(response.status_code, body, kept)

    async def get(self, service: str, path: str, params: Any = None) -> Any:
        """GET JSON from a service."""
        return await self.request(service, "GET", path, params=params)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "invalid request"
    return str(body.get("detail") or body.get("title") or "invalid request")
