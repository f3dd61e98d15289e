"""Publishing again what a broker lost after it had acknowledged it.

An acknowledged publish is durable only as long as the broker keeps its log. Tansu, the
broker `make up` starts, keeps its log in memory: when it restarts it is empty, and every
event it had acknowledged but no consumer had read yet would be gone, although the outbox
says "sent".

A broker that comes back without its log is a new cluster, and says so: its cluster id (in
every metadata response) is new (the local supervisor and the test fixtures start Tansu
with a fresh id each time; Apache Kafka keeps its id with its log). The relay tags each row
it marks sent with the cluster id of the broker that acknowledged it. When the broker's
cluster id is not the one a sent row carries, that row is pending again and the relay
publishes it anew, before anything newer of its key, since claims go by row id; consumers'
inboxes drop what they had handled already. It looks before publishing after any failure and
every few seconds otherwise. Rows purged after the retention period cannot come back.
"""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from servicekit import kafka_security
from servicekit.logging import get_logger
from servicekit.metrics import OUTBOX_REPUBLISHED
from servicekit.settings import ServiceSettings
from servicekit.tables import OutboxRow

log = get_logger(__name__)


class BrokerIdentity:
    """Asks the broker which cluster it is (its cluster id)."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._admin: AIOKafkaAdminClient | None = None

    async def cluster_id(self) -> str:
        """The broker's cluster id; raises when the broker cannot be asked."""
        try:
            if self._admin is None:
                admin = AIOKafkaAdminClient(
                    bootstrap_servers=self.settings.kafka_bootstrap_servers,
                    client_id=f"{self.settings.service_name}-relay-identity",
                    **kafka_security.client_options(self.settings),
                    request_timeout_ms=10_000,
                )
                await admin.start()
                self._admin = admin
            described = await self._admin.describe_cluster()
        except Exception:
            await self.close()
            raise
        cluster = described.get("cluster_id")
        if not cluster:
            raise RuntimeError("the broker did not say its cluster id")
        return str(cluster)

    async def topics(self) -> list[str]:
        """The topics the broker has; raises when the broker cannot be asked."""
        try:
            if self._admin is None:
                await self.cluster_id()
            assert self._admin is not None
            found: list[str] = await self._admin.list_topics()
            return found
        except Exception:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection (a new one is made on the next question)."""
        if self._admin is not None:
            admin, self._admin = self._admin, None
            try:
                await admin.close()
            except Exception as exc:
                log.debug("outbox.identity_close_failed", error=type(exc).__name__)


async def requeue_lost(session: AsyncSession, cluster_id: str, *, service: str) -> int:
    """Make pending again every sent row another cluster (incarnation) acknowledged."""
    stmt = (
        update(OutboxRow)
        .where(
            OutboxRow.status == "sent",
            OutboxRow.broker_cluster.is_not(None),
            OutboxRow.broker_cluster != cluster_id,
        )
        .values(
            status="pending",
            sent_at=None,
            broker_cluster=None,
            kafka_partition=None,
            kafka_offset=None,
        )
        .returning(OutboxRow.topic)
    )
    topics = list((await session.execute(stmt)).scalars())
    if topics:
        counts: dict[str, int] = {}
        for topic in topics:
            counts[topic] = counts.get(topic, 0) + 1
        for topic, count in counts.items():
            OUTBOX_REPUBLISHED.labels(service, topic).inc(count)
        log.warning(
            "outbox.broker_lost_events",
            requeued=len(topics),
            topics=len(counts),
            reason="the broker is a new cluster: what the old one acknowledged is gone",
        )
    return len(topics)


async def acknowledged_elsewhere(session: AsyncSession, cluster_id: str) -> int:
    """How many sent rows carry another cluster's id (for tests and ops)."""
    stmt = (
        select(func.count())
        .select_from(OutboxRow)
        .where(
            OutboxRow.status == "sent",
            OutboxRow.broker_cluster.is_not(None),
            OutboxRow.broker_cluster != cluster_id,
        )
    )
    return int(await session.scalar(stmt) or 0)
