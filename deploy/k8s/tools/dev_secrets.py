"""Print every Secret the portal's manifests reference, with fresh random values.

Nothing secret is committed: run this once per environment and pipe it to kubectl. It
makes each service's database login (`<service>-db`: the role CloudNativePG creates and the
DATABASE_URL the service uses), the ops token, the connector's webhook token and its SMART
Backend Services key pair (EC P-384, ES384), and for dev the EHR sandbox's database login
(`ehr-sandbox-db`, its SANDBOX_DATABASE_URL), admin token and the clients file that
registers the connector's public key with the sandbox, and the encryption keys at rest
(`<service>-encryption` for every service: messaging, triage, ehr-connector, records,
scheduling, gateway; rotating them is in docs/operations.md).

    python deploy/k8s/tools/dev_secrets.py --namespace portal-dev | kubectl apply -f -
    python deploy/k8s/tools/dev_secrets.py --env prod --namespace portal \
        --jwks-out connector-jwks.json > secrets.yaml   # register the JWKS with the EHR

Re-running makes new values: apply it again only to rotate everything (the services pick
the new values up on their next restart; CloudNativePG updates the role passwords). Except
the `*-encryption` Secrets: a new key alone makes stored text unreadable;
rotate it by adding a key to the existing Secret (docs/operations.md), never by replacing it.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

# Service folder → PostgreSQL role and database (identifiers: underscores).
DATABASES = {
    "gateway": "gateway",
    "records": "records",
    "scheduling": "scheduling",
    "messaging": "messaging",
    "triage": "triage",
    "ehr-connector": "ehr_connector",
}
# The sandbox's (dev only: components/ehr-sandbox adds the role and database).
SANDBOX_DATABASE = ("ehr-sandbox", "ehr_sandbox")
POSTGRES_HOST = "portal-postgres-rw:5432"
EHR_CLIENT_ID = "portal-connector"
# What the sandbox may grant the connector (the connector asks for less: EHR_SCOPE).
SANDBOX_CLIENT_SCOPE = "system/*.cruds"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _secret(name: str, data: dict[str, str], kind: str = "Opaque") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": kind,
        "stringData": data,
    }


def ehr_client_key(kid: str) -> tuple[str, dict[str, Any]]:
    """A new EC P-384 private key (PKCS#8 PEM) and its public JWK."""
    private = ec.generate_private_key(ec.SECP384R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    numbers = private.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-384",
        "x": _b64url(numbers.x.to_bytes(48, "big")),
        "y": _b64url(numbers.y.to_bytes(48, "big")),
        "kid": kid,
        "use": "sig",
        "alg": "ES384",
    }
    return pem, jwk


def database_secret(name: str, role: str, postgres_host: str) -> dict[str, Any]:
    """`<name>-db`: the login of `role` (CloudNativePG's passwordSecret) and its URL."""
    # Hex passwords need no escaping inside the URL.
    password = secrets.token_hex(24)
    url = f"postgresql+asyncpg://{role}:{password}@{postgres_host}/{role}"
    return _secret(
        f"{name}-db",
        {"username": role, "password": password, "url": url},
        kind="kubernetes.io/basic-auth",
    )


def secrets_for(env: str, postgres_host: str = POSTGRES_HOST) -> tuple[list[dict[str, Any]], dict]:
    """The Secrets of an environment, and the connector's public JWKS."""
    docs = [
        _secret("portal-ops", {"token": secrets.token_urlsafe(32)}),
        # SERVICE_TOKEN_KEY of every service: signs and verifies calls between services.
        _secret("portal-service-identity", {"key": secrets.token_urlsafe(48)}),
        # AUDIT_KEY of the gateway: keys the access log's hash chain and its checkpoints.
        _secret("gateway-audit", {"key": secrets.token_urlsafe(48)}),
    ]
    for service, role in DATABASES.items():
        docs.append(database_secret(service, role, postgres_host))
    kid = f"{EHR_CLIENT_ID}-{datetime.now(UTC):%Y%m%d}"
    pem, jwk = ehr_client_key(kid)
    jwks = {"keys": [jwk]}
    docs.append(_secret("ehr-connector-ehr-client", {"private-key.pem": pem, "key-id": kid}))
    docs.append(_secret("ehr-connector-webhook", {"token": secrets.token_urlsafe(32)}))
    # Encryption at rest (messaging's and triage's text, every service's kit tables:
    # outbox, stored answers, dead letters, parked events): one key id each, dated, so a
    # later rotation adds another.
    key_id = f"{datetime.now(UTC):%Y-%m}"
    for service in ("messaging", "triage", "ehr-connector", "records", "scheduling", "gateway"):
        name = f"{service}-encryption"
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        docs.append(_secret(name, {"keys": json.dumps({key_id: key}), "active": key_id}))
    if env == "dev":
        docs.append(database_secret(*SANDBOX_DATABASE, postgres_host))
        clients = {
            "clients": [
                {
                    "client_id": EHR_CLIENT_ID,
                    "client_name": "Portal ehr-connector",
                    "jwks": jwks,
                    "scope": SANDBOX_CLIENT_SCOPE,
                }
            ]
        }
        docs.append(
            _secret(
                "ehr-sandbox",
                {
                    "admin-token": secrets.token_urlsafe(32),
                    "clients.json": json.dumps(clients, indent=2),
                },
            )
        )
    return docs, jwks


def main(argv: list[str]) -> int:
    """Print the Secrets as one YAML stream (and write the JWKS when asked)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=("dev", "prod"), default="dev")
    parser.add_argument("--namespace", help="metadata.namespace of every Secret")
    parser.add_argument("--postgres-host", default=POSTGRES_HOST, help="host:port in the URLs")
    parser.add_argument("--jwks-out", type=Path, help="write the connector's public JWKS here")
    args = parser.parse_args(argv)
    docs, jwks = secrets_for(args.env, args.postgres_host)
    if args.namespace:
        for doc in docs:
            doc["metadata"]["namespace"] = args.namespace
    if args.jwks_out:
        args.jwks_out.write_text(json.dumps(jwks, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
