"""The baselines: the same hops as the system, with no logic at all.

`Pipeline` is an HTTP server (uvicorn + a bare ASGI app on a free loopback port) and two
aiokafka hops on the stack's broker:

    client --HTTP POST /commit--> server (201 at once; then produce to topic 1, acks=all)
    relay: consume topic 1 -> produce to topic 2
    sink:  consume topic 2 -> push to the client's open SSE stream (`GET /events`) or
           POST to the server's `/ehr` endpoint

It is the physical limit of this machine for "an acknowledged write reaches a patient
through two Kafka hops": whatever the system adds on top is its logic (FHIR reads,
databases, inboxes, outboxes, audit). `GET /healthz` is the baseline of the gateway load.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from devstack.topics import ensure_topics

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def partitions_of(bootstrap: str, topic: str) -> set[int]:
    """The partitions of an existing topic. A producer's `partitions_for` waits for the
    topic's metadata; a consumer without a subscription has none (Apache Kafka's first
    metadata answer lists no topics, and `consumer.topics()` does not keep what it read)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        partitions: set[int] = await producer.partitions_for(topic)
        return partitions
    finally:
        await producer.stop()


async def tail_consumer(bootstrap: str, topic: str, fetch_max_wait_ms: int) -> AIOKafkaConsumer:
    """A consumer of every partition of `topic` from its end, without a group (no group
    join: Tansu's takes seconds), fetching as the stack's services do (Tansu answers a
    fetch only when its wait expires: with aiokafka's default 500 ms the measuring
    consumer itself added ~200 ms)."""
    partitions = await partitions_of(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    await consumer.start()
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    await consumer.seek_to_end(*assigned)
    # Resolve the end offsets now, so nothing produced after this call is skipped.
    for tp in assigned:
        await consumer.position(tp)
    return consumer


class Pipeline:
    """The bare HTTP + Kafka + Kafka + SSE/HTTP chain, in this process."""

    def __init__(self, bootstrap: str, fetch_max_wait_ms: int) -> None:
        self.bootstrap = bootstrap
        self.fetch_max_wait_ms = fetch_max_wait_ms
        run = uuid.uuid4().hex[:8]
        self.topic_in = f"bench.baseline.{run}.in"
        self.topic_out = f"bench.baseline.{run}.out"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.arrived: dict[str, float] = {}  # id -> monotonic time the sink saw it
        self.committed: dict[str, float] = {}  # id -> monotonic time /commit answered it
        self.ehr_writes: dict[str, float] = {}  # id -> monotonic time of the POST /ehr
        self._streams: list[asyncio.Queue[str | None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._producer: AIOKafkaProducer | None = None
        self._server: uvicorn.Server | None = None
        self.sink_mode = "sse"

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The bare ASGI app: /commit, /events, /ehr, /healthz."""
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/events":
            await self._events(send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if path == "/commit":
            item = uuid.uuid4().hex
            self.committed[item] = time.monotonic()
            await _respond(send, 201, json.dumps({"id": item}).encode())
            assert self._producer is not None
            # Like the EHR: commit, answer, then notify (here: produce) after the answer.
            await self._producer.send_and_wait(self.topic_in, item.encode(), key=item.encode())
        elif path == "/ehr":
            self.ehr_writes[body.decode()] = time.monotonic()
            await _respond(send, 201, b"{}")
        else:
            await _respond(send, 200, b'{"status":"ok"}')

    async def _events(self, send: Send) -> None:
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._streams.append(queue)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": b": open\n\n", "more_body": True})
        try:
            while True:
                item = await queue.get()
                if item is None:  # the pipeline stops: end the response cleanly
                    await send({"type": "http.response.body", "body": b""})
                    return
                chunk = f"id: 1\ndata: {json.dumps({'ref': item})}\n\n".encode()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            self._streams.remove(queue)

    async def start(self) -> None:
        """Topics, producer, server, relay and sink."""
        await ensure_topics(
            self.bootstrap, names_and_partitions=[(self.topic_in, 3), (self.topic_out, 3)]
        )
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0)
        await self._producer.start()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            interface="asgi3",
        )
        self._server = uvicorn.Server(config)
        self._tasks.append(asyncio.create_task(self._server.serve()))
        # uvicorn has no start-up event to await: poll its flag (a few ms).
        while not self._server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        relay_in = await tail_consumer(self.bootstrap, self.topic_in, self.fetch_max_wait_ms)
        sink_in = await tail_consumer(self.bootstrap, self.topic_out, self.fetch_max_wait_ms)
        self._tasks.append(asyncio.create_task(self._relay(relay_in)))
        self._tasks.append(asyncio.create_task(self._sink(sink_in)))

    async def _relay(self, consumer: AIOKafkaConsumer) -> None:
        assert self._producer is not None
        try:
            async for message in consumer:
                await self._producer.send_and_wait(self.topic_out, message.value, key=message.key)
        finally:
            await consumer.stop()

    async def _sink(self, consumer: AIOKafkaConsumer) -> None:
        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
                async for message in consumer:
                    item = message.value.decode()
                    if self.sink_mode == "sse":
                        for queue in list(self._streams):
                            queue.put_nowait(item)
                    else:
                        await client.post("/ehr", content=item)
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        """Everything this pipeline started."""
        for queue in list(self._streams):
            queue.put_nowait(None)
        if self._server is not None:
            self._server.should_exit = True
            # Let uvicorn finish its shutdown (open streams end above) before cancelling.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._tasks[0]), 5)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._producer is not None:
            await self._producer.stop()


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BaselineStream:
    """The client's open SSE stream of the baseline server: id -> monotonic arrival."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.received: dict[str, float] = {}
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the stream and wait until it is connected."""
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 10)

    async def _run(self) -> None:
        async with (
            httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(30, read=None)) as c,
            c.stream("GET", "/events") as response,
        ):
            self.connected.set()
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    self.received[json.loads(line[6:])["ref"]] = time.monotonic()

    async def stop(self) -> None:
        """Close it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
