"""Refused notifications: a replayed one, a bad signature, a wrong channel token, a
malformed bundle and an unknown Subscription are answered 401/400/404 and publish nothing.

The EHR's notifications reach the connector through a recording proxy (the "public URL"
of the webhook), so the test can replay a genuine notification byte for byte. The JWKS the
connector trusts is the sandbox's plus one test key, with which the test signs bodies the
EHR would never send (a malformed bundle, another Subscription's id): those must be refused
by what they say, not by their signature.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from joserfc import jws
from joserfc.jwk import ECKey
from joserfc.jws import JWSRegistry
from joserfc.registry import HeaderParameter
from sqlalchemy import func, select

from devstack.topics import ensure_topics
from ehr_connector.settings import Settings
from ehr_sandbox.testing.http import RunningSandbox, free_port, serve
from servicekit.app import Service
from servicekit.tables import OutboxRow

from .inbound_support import (
    connector_settings,
    ehr_sandbox,
    last_of,
    link,
    ops_client,
    read_events,
    running_connector,
    simulate,
    wait_linked,
    wait_subscriptions_active,
)

pytestmark = [pytest.mark.integration]
TEST_KEY = ECKey.generate_key("P-256", parameters={"kid": "test-signer"})
_REGISTRY = JWSRegistry(
    header_registry={
        "iat": HeaderParameter("iat", "int", True),
        "jti": HeaderParameter("jti", "str", True),
        "htu": HeaderParameter("htu", "str"),
    },
    algorithms=["ES256"],
)


@dataclass
class Proxy:
    """The webhook's public face: records what the EHR sends, forwards it to the connector."""

    box: RunningSandbox
    target: str = ""
    url: str = ""
    recorded: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            headers = {
                k: v for k, v in request.headers.items() if k not in ("host", "content-length")
            }
            self.recorded.append((headers, body))
            async with httpx.AsyncClient() as client:
                answer = await client.post(self.target, content=body, headers=headers)
            return Response(answer.content, answer.status_code, media_type="application/fhir+json")

        @app.get("/jwks.json")
        async def jwks() -> dict[str, Any]:
            keys = (await self.box.admin.get("/auth/jwks.json")).json()["keys"]
            return {"keys": [*keys, TEST_KEY.as_dict(private=False)]}

        return app


def sign(body: bytes, endpoint: str) -> str:
    header = {
        "alg": "ES256",
        "kid": TEST_KEY.kid,
        "typ": "JOSE",
        "iat": int(time.time()),
        "jti": uuid.uuid4().hex,
        "htu": endpoint,
    }
    head, _payload, signature = jws.serialize_compact(
        header, body, TEST_KEY, registry=_REGISTRY
    ).split(".")
    return f"{head}..{signature}"


@pytest.fixture
async def setup(
    tmp_path: Path,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> AsyncIterator[tuple[RunningSandbox, Proxy, Service, Settings]]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    async with ehr_sandbox(tmp_path / "ehr") as box:
        proxy = Proxy(box)
        proxy_port = free_port()
        async with serve(proxy.app(), proxy_port) as proxy_url:
            proxy.url = proxy_url
            settings = connector_settings(
                box,
                database_url=database_url,
                bootstrap=kafka_bootstrap,
                prefix=unique_prefix,
                idempotence=kafka_enable_idempotence,
                port=free_port(),
                inbound_webhook_url=f"{proxy_url}/hook",
                inbound_jwks_url=f"{proxy_url}/jwks.json",
            )
            proxy.target = f"http://127.0.0.1:{settings.http_port}/fhir/notifications"
            async with running_connector(settings) as service:
                await wait_subscriptions_active(settings)
                await link(kafka_bootstrap, unique_prefix, "pt-alice", "demo-alice", backfill=False)
                await wait_linked(settings, "pt-alice")
                yield box, proxy, service, settings


async def _outbox_rows(service: Service) -> int:
    async with service.db.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(OutboxRow)) or 0)


def _notification(subscription_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "fullUrl": "urn:uuid:1",
                "resource": {
                    "resourceType": "Parameters",
                    "parameter": [
                        {
                            "name": "subscription",
                            "valueReference": {"reference": f"Subscription/{subscription_id}"},
                        },
                        {"name": "status", "valueCode": "active"},
                        {"name": "type", "valueCode": "event-notification"},
                        {"name": "events-since-subscription-start", "valueString": "1"},
                        {
                            "name": "notification-event",
                            "part": [
                                {"name": "event-number", "valueString": "1"},
                                {
                                    "name": "focus",
                                    "valueReference": {
                                        "reference": "DiagnosticReport/alice-a1c-1-dr"
                                    },
                                },
                            ],
                        },
                    ],
                },
            }
        ],
    }


async def test_refused_notifications_publish_nothing(
    setup: tuple[RunningSandbox, Proxy, Service, Settings],
    kafka_bootstrap: str,
    unique_prefix: str,
) -> None:
    box, proxy, service, settings = setup
    report_id, _ = last_of(
        await simulate(box, "lab-result", patient="demo-alice"), "DiagnosticReport"
    )
    await read_events(
        kafka_bootstrap,
        unique_prefix + "lab.resulted",
        lambda es: any(e.data["report_fhir_id"] == report_id for e in es),
    )
    genuine = [(h, b) for h, b in proxy.recorded if report_id.encode() in b]
    assert genuine, "the sandbox's notification went through the proxy"
    headers, body = genuine[0]
    before = await _outbox_rows(service)
    hook = f"{proxy.url}/hook"
    token = {"Authorization": headers["authorization"], "Content-Type": "application/fhir+json"}
    async with httpx.AsyncClient(timeout=30) as client:
        # 1. The EHR's own notification, byte for byte, a second time: a replay.
        replay = await client.post(hook, content=body, headers=headers)
        assert replay.status_code == 401
        assert replay.json()["issue"][0]["code"] == "security"

        # 2. The body changed after signing.
        tampered = await client.post(hook, content=body + b" ", headers=headers)
        assert tampered.status_code == 401

        # 3. Signed by a key the EHR does not hold, under the name of one it publishes.
        impostor = ECKey.generate_key("P-256", parameters={"kid": TEST_KEY.kid})
        header = {"alg": "ES256", "kid": TEST_KEY.kid, "iat": int(time.time()),
                  "jti": uuid.uuid4().hex, "htu": hook}  # fmt: skip
        head, _payload, signature = jws.serialize_compact(
            header, body, impostor, registry=_REGISTRY
        ).split(".")
        forged = await client.post(
            hook, content=body, headers={**token, "X-Signature": f"{head}..{signature}"}
        )
        assert forged.status_code == 401

        # 4. A correct signature but the wrong channel token.
        wrong_token = await client.post(
            hook,
            content=body,
            headers={
                "Authorization": "Bearer not-the-secret",
                "X-Signature": sign(body, hook),
                "Content-Type": "application/fhir+json",
            },
        )
        assert wrong_token.status_code == 401

        # 5. Signed, but not a notification Bundle.
        malformed_body = b'{"resourceType": "Bundle", "type": "history", "entry": []}'
        malformed = await client.post(
            hook,
            content=malformed_body,
            headers={**token, "X-Signature": sign(malformed_body, hook)},
        )
        assert malformed.status_code == 400
        assert malformed.json()["resourceType"] == "OperationOutcome"
        assert malformed.json()["issue"][0]["code"] == "invalid"
        not_json = b"{not json"
        assert (
            await client.post(
                hook, content=not_json, headers={**token, "X-Signature": sign(not_json, hook)}
            )
        ).status_code == 400

        # 6. Signed and well-formed, about a Subscription that is not ours.
        unknown_body = json.dumps(_notification("not-ours")).encode()
        unknown = await client.post(
            hook, content=unknown_body, headers={**token, "X-Signature": sign(unknown_body, hook)}
        )
        assert unknown.status_code == 404

    assert await _outbox_rows(service) == before
    async with ops_client(settings) as ops:
        metrics = (await ops.get("/metrics")).text
    for reason in ("replay", "bad_signature", "bad_token", "malformed", "unknown_subscription"):
        assert f'inbound_notifications_rejected_total{{reason="{reason}"}}' in metrics, reason
