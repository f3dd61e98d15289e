"""Calls from the gateway to the services that own the data (HTTP, per-call timeouts)."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.settings import Settings


class UpstreamError(Exception):
    """A service did not answer usefully: `status` is what the patient should get."""

    def __init__(
        self, service: str, status: int, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{service}: {detail}")
        self.service = service
        self.status = status
        self.detail = detail
        self.headers = headers or {}


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
        """Call a service; 404, 409, 413, 415, 422 and 429 (with its Retry-After) pass
        through, anything else unusable is a 502/503/504."""
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
        if response.status_code in (409, 413, 415, 422):
            raise UpstreamError(service, response.status_code, _detail(response))
        if response.status_code == 429:
            retry = response.headers.get("Retry-After")
            headers = {"Retry-After": retry} if retry else None
            raise UpstreamError(service, 429, _detail(response), headers)
        if response.status_code >= 400:
            raise UpstreamError(service, 502, f"answered {response.status_code}")
        return response.json()

    async def get(self, service: str, path: str, params: Any = None) -> Any:
        """GET JSON from a service."""
        return await self.request(service, "GET", path, params=params)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "invalid request"
    return str(body.get("detail") or body.get("title") or "invalid request")
