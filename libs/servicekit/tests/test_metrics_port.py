"""METRICS_PORT: /metrics moves to a port of its own that serves nothing else (what the
Kubernetes NetworkPolicies admit the monitoring namespace to); without it, /metrics stays
on the API port as on the local stack."""

from __future__ import annotations

import httpx

from devstack._paths import free_port
from servicekit.settings import ServiceSettings
from servicekit.testing import broker_less_settings, serving_in_process

from . import fakeservice


async def test_metrics_port_serves_metrics_and_nothing_else(database_url: str) -> None:
    port = free_port("127.0.0.1")
    settings = ServiceSettings(
        service_name="fake",
        metrics_port=port,
        ops_token="test-ops-token-long-enough",
        **broker_less_settings(database_url),
    )
    service = fakeservice.build(settings)
    async with (
        serving_in_process(service.app, "http://fake") as api,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as scraper,
    ):
        scraped = await scraper.get("/metrics")
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        assert "outbox_" in scraped.text
        headers = {"Authorization": "Bearer test-ops-token-long-enough"}
        for path in ("/ops/dead-letters", "/healthz", "/readyz", "/docs", "/openapi.json"):
            assert (await scraper.get(path, headers=headers)).status_code == 404, path
        # The API port no longer answers /metrics; its own routes are unchanged.
        assert (await api.get("/metrics")).status_code == 404
        assert (await api.get("/healthz")).status_code == 200
    # Stopped with the service.
    async with httpx.AsyncClient() as client:
        try:
            await client.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            raise AssertionError("the metrics port still answers after the service stopped")
        except httpx.ConnectError:
            pass


async def test_without_a_metrics_port_the_api_port_serves_metrics(database_url: str) -> None:
    service = fakeservice.build(
        ServiceSettings(service_name="fake", **broker_less_settings(database_url))
    )
    assert service.metrics_server is None
    async with serving_in_process(service.app, "http://fake") as api:
        response = await api.get("/metrics")
        assert response.status_code == 200
        assert "outbox_" in response.text
