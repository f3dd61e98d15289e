"""The synthetic canary: a lab result written for the `canary` patient goes the whole way
(EHR write → Subscription notification → connector → outbox → Kafka) and its latency is
exported; the canary runs on its own timer when enabled."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.topics import ensure_topics
from servicekit.testing import eventually

from .inbound_support import (
    connector_settings,
    ehr_sandbox,
    ops_client,
    read_events,
    running_connector,
    wait_subscriptions_active,
)

pytestmark = [pytest.mark.integration]


async def test_canary_measures_write_to_publish_latency(
    tmp_path: Path,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    async with ehr_sandbox(tmp_path / "ehr") as box:
        settings = connector_settings(
            box,
            database_url=database_url,
            bootstrap=kafka_bootstrap,
            prefix=unique_prefix,
            idempotence=kafka_enable_idempotence,
            canary_enabled=True,
            canary_interval_s=2.0,
            canary_timeout_s=60.0,
        )
        async with running_connector(settings):
            await wait_subscriptions_active(settings)
            async with ops_client(settings) as client:
                answer = await client.post("/ops/canary")
                assert answer.status_code == 200
                latency = answer.json()["latency_s"]
                assert latency is not None and 0 <= latency < 60

                # The timer runs it too: a second observation arrives by itself.
                async def timed_runs() -> bool:
                    text = (await client.get("/metrics")).text
                    counts = [
                        float(line.split()[-1])
                        for line in text.splitlines()
                        if line.startswith("canary_latency_seconds_count")
                    ]
                    return bool(counts) and counts[0] >= 2

                await eventually(timed_runs, timeout=60, interval=0.5)
                metrics = (await client.get("/metrics")).text
            last_success = [
                line for line in metrics.splitlines()
                if line.startswith("canary_last_success_timestamp_seconds ")
            ]  # fmt: skip
            assert last_success and float(last_success[0].split()[-1]) > 0
        events = await read_events(
            kafka_bootstrap, unique_prefix + "lab.resulted", lambda es: len(es) >= 2
        )
        assert all(e.key == "canary" and e.data["patient_id"] == "canary" for e in events)
        assert events[0].data["observations"][0]["code"]["code"] == "2345-7"
