"""Runs `devstack.supervisor.up` over fake services, as `python -m devstack up` would.

Usage: run_stack.py KAFKA_PORT NAME=PORT[:ENV=VALUE,...] ...
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from devstack.supervisor import Output, ServiceDef, StackConfig, up


def main(argv: list[str]) -> int:
    kafka_port = int(argv[0])
    services = []
    extra: dict[str, str] = {"PYTHONPATH": str(Path(__file__).parent)}
    for item in argv[1:]:
        name, _, rest = item.partition("=")
        port, _, env = rest.partition(":")
        services.append(
            ServiceDef(name=name, package="fakeapp", port=int(port), app="fakeapp:create_app")
        )
        for pair in filter(None, env.split(",")):
            key, _, value = pair.partition("=")
            extra[key] = value
    config = StackConfig(
        kafka="tansu",
        kafka_port=kafka_port,
        root=Path.cwd(),
        services=services,
        topics=[("fake.topic", 1)],
        extra_env=extra,
        ready_timeout=30,
    )
    return asyncio.run(up(config, Output(sys.stdout, colour=False)))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main(sys.argv[1:]))
