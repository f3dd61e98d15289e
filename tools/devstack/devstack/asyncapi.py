"""`python -m devstack.asyncapi [--check]`: the AsyncAPI document of every service's real
subscribers and declared publishers, written to `docs/asyncapi.yaml` (or compared with it).

The document is generated from the FastStream brokers the services build at start-up, so
it cannot drift from the code; CI fails when the committed copy is out of date.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from faststream.specification import AsyncAPI

from devstack._paths import repo_root

DOC = repo_root() / "docs" / "asyncapi.yaml"
SERVICES = ("gateway", "records", "scheduling", "messaging", "triage", "ehr_connector")


# Building a service makes its database engine, which needs a PostgreSQL URL but connects
# to nothing until the service starts: a placeholder does for reading the definitions.
UNCONNECTED_DATABASE = "postgresql+asyncpg://unused@/unused"


def built_services() -> list[Any]:
    """Every installed service, built (not started) with its default settings."""
    os.environ.setdefault("DATABASE_URL", UNCONNECTED_DATABASE)
    services = []
    for package in SERVICES:
        try:
            app_module = importlib.import_module(f"{package}.app")
        except ModuleNotFoundError:
            continue
        services.append(app_module.build())
    return services


def render() -> str:
    """The AsyncAPI 3.0 document of all services, as YAML."""
    brokers = [service.broker for service in built_services()]
    spec = AsyncAPI(
        *brokers,
        title="Patient portal integration backbone",
        version="1.0.0",
        description=(
            "Domain events on Kafka (CloudEvents 1.0, binary mode; key = internal patient id). "
            "Dead letters go to <topic>.dlq. Generated from the services' subscribers."
        ),
        schema_version="3.0.0",
    )
    # Sorted keys: the order brokers list channels is not stable between runs, and the
    # committed document must only change when the contracts do.
    document = spec.to_specification().to_jsonable()
    text: str = yaml.safe_dump(document, sort_keys=True, allow_unicode=True, width=100)
    return text


def main(argv: list[str]) -> int:
    """Write the document, or with --check fail when the committed one differs."""
    current = render()
    if "--check" in argv:
        committed = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
        if committed != current:
            sys.stderr.write(f"{DOC} is out of date: run python -m devstack.asyncapi\n")
            return 1
        sys.stdout.write("asyncapi.yaml up to date\n")
        return 0
    Path(DOC).write_text(current, encoding="utf-8")
    sys.stdout.write(f"wrote {DOC}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
