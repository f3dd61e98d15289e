"""Operator commands of messaging: `python -m messaging reencrypt|encryption-status`.

Settings come from the environment like the service's own (`DATABASE_URL`,
`ENCRYPTION_KEYS`, `ENCRYPTION_ACTIVE_KEY`). `reencrypt` re-wraps every stored value with
the active key (after adding a new key and making it active); it is idempotent and may run
while the service serves. The same is `POST /ops/encryption/reencrypt`.
"""

from __future__ import annotations

import asyncio
import json
import sys

from messaging.app import build
from messaging.settings import Settings


async def _run(command: str) -> dict[str, object]:
    settings = Settings(relay_enabled=False, consumers_enabled=False)
    service = build(settings)
    await service.prepare_database()
    assert service.definition.deps is not None
    try:
        # The use cases as the running service has them (its composition root's `deps`).
        async with service.definition.deps(service) as use_cases:
            result: dict[str, object] = {"active_key_id": use_cases.cipher.active_key_id}
            if command == "reencrypt":
                result["reencrypted"] = await use_cases.reencrypt()
            result["not_on_active_key"] = await use_cases.encryption_status()
            return result
    finally:
        await service.db.dispose()


def main(argv: list[str]) -> int:
    """Entry point; returns the exit code."""
    if len(argv) != 1 or argv[0] not in ("reencrypt", "encryption-status"):
        sys.stderr.write("usage: python -m messaging reencrypt|encryption-status\n")
        return 2
    sys.stdout.write(json.dumps(asyncio.run(_run(argv[0]))) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
