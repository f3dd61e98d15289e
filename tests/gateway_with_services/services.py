"""The services these tests assemble in one process, built the same way by every test:
each on its own database of the session's PostgreSQL, topics and groups under the test's
prefix (`servicekit.testing.isolated_settings`)."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.app import build as build_gateway
from gateway.settings import Settings as GatewaySettings
from records.app import build as build_records
from records.settings import Settings as RecordsSettings
from servicekit.app import Service
from servicekit.testing import isolated_settings


def records_service(database_url: str, kafka_bootstrap: str, prefix: str) -> Service:
    """The records service on `database_url`."""
    return build_records(
        RecordsSettings(**isolated_settings(database_url, kafka_bootstrap, prefix))  # type: ignore[arg-type]
    )


def gateway_service(
    database_url: str,
    kafka_bootstrap: str,
    prefix: str,
    *,
    issuer: str,
    mounts: dict[str, httpx.AsyncBaseTransport] | None = None,
    **settings: Any,
) -> Service:
    """The gateway on `database_url`, trusting tokens of `issuer` (the sandbox's dev
    issuer), with `settings` on top (upstream URLs, limits) and in-process upstreams
    (`mounts`: URL → ASGI transport)."""
    return build_gateway(
        GatewaySettings(
            **isolated_settings(database_url, kafka_bootstrap, prefix),  # type: ignore[arg-type]
            oidc_issuer=issuer,
            **settings,
        ),
        mounts=mounts,
    )
