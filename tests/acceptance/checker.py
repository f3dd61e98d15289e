"""What the system acknowledged, what reached the patients, and the verdict per journey.

The suite records every input the system acknowledged (the EHR committed a lab result, the
gateway accepted a booking, ...) with the notification it must cause on that patient's
stream; each patient's open stream records what arrived. `verify` then finds, per patient,
what is missing, what came twice and what came out of order, and the latency from the
acknowledgement to the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

# One TLS context for every client the suite opens: httpx builds one per client (the CA
# bundle loaded again, ~60 ms of CPU each), and a run opens hundreds (two per patient,
# one per stream reconnect) against servers that are plain HTTP here anyway.
TLS = httpx.create_ssl_context()

Key = tuple[str, str, str | None]  # (kind, ref, status)


@dataclass
class Delivered:
    """One notification as the patient's stream delivered it."""

    key: Key
    event_id: int
    received: float


class PatientStream:
    """A patient's open `/v1/me/events` stream, reconnecting with `Last-Event-ID`."""

    def __init__(self, gateway: str, patient: str, auth: httpx.Auth) -> None:
        self.gateway = gateway
        self.patient = patient
        # Renews the token before it expires (a reconnect presents a valid one).
        self.auth = auth
        self.delivered: list[Delivered] = []
        self.connected = asyncio.Event()
        self._last_id = ""
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0
        # Why the stream ended each time (a lost notification's verdict names them).
        self.interruptions: Counter[str] = Counter()

    def start(self) -> None:
        """Open the stream in the background."""
        self._task = asyncio.create_task(self._run(), name=f"sse-{self.patient}")

    async def stop(self) -> None:
        """Close the stream."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            headers = {"Last-Event-ID": self._last_id} if self._last_id else {}
            try:
                async with (
                    httpx.AsyncClient(
                        base_url=self.gateway,
                        auth=self.auth,
                        timeout=httpx.Timeout(30, read=60),
                        verify=TLS,
                    ) as client,
                    client.stream("GET", "/v1/me/events", headers=headers) as response,
                ):
                    if response.status_code != 200:
                        # Rate-limited after a burst (429), or the gateway restarting.
                        self.interruptions[f"refused {response.status_code}"] += 1
                        self.reconnects += 1
                        await asyncio.sleep(0.5)
                        continue
                    self.connected.set()
                    event_id = ""
                    async for line in response.aiter_lines():
                        if line.startswith("id: "):
                            event_id = line[4:]
                        elif line.startswith("data: "):
                            body = json.loads(line[6:])
                            self.delivered.append(
                                Delivered(
                                    key=(body["kind"], body["ref"], body.get("status")),
                                    event_id=int(event_id or 0),
                                    received=time.monotonic(),
                                )
                            )
                            self._last_id = event_id
                self.interruptions["ended by the gateway"] += 1
            except Exception as exc:
                # The gateway restarting (journey 5) ends the stream: reconnect and replay.
                # Whatever ended it, the stream reconnects (a patient's app does): a task
                # that died here silently would lose every later notification.
                self.interruptions[type(exc).__name__] += 1
            self.reconnects += 1
            await asyncio.sleep(0.5)


@dataclass
class Expected:
    """A notification the system owes a patient after acknowledging an input."""

    patient: str
    key: Key
    acknowledged: float
    what: str


@dataclass
class Verdict:
    """The outcome of one journey."""

    journey: str
    acknowledged: int = 0
    delivered: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing lost, doubled or reordered, and no other problem."""
        return not (self.lost or self.duplicated or self.out_of_order or self.problems)

    def percentile(self, p: float) -> float | None:
        """The p-th percentile of the latencies in ms (None without any)."""
        if not self.latencies_ms:
            return None
        if len(self.latencies_ms) == 1:
            return self.latencies_ms[0]
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(p) - 1]

    def row(self) -> dict[str, Any]:
        """The journey's line of the report."""
        p50, p99 = self.percentile(50), self.percentile(99)
        return {
            "journey": self.journey,
            "acknowledged": self.acknowledged,
            "delivered": self.delivered,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "out_of_order": len(self.out_of_order),
            "p50_ms": round(p50, 1) if p50 is not None else None,
            "p99_ms": round(p99, 1) if p99 is not None else None,
            "problems": len(self.problems),
        }

    def explain(self) -> str:
        """What went wrong, for the failure message."""
        parts = [f"journey {self.journey!r}:"]
        for label, items in (
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("out of order", self.out_of_order),
            ("problems", self.problems),
        ):
            if items:
                parts.append(f"{label} ({len(items)}): " + "; ".join(items[:10]))
        return "\n  ".join(parts)


class Checker:
    """Collects what was acknowledged and compares it with what the streams delivered."""

    def __init__(self, journey: str) -> None:
        self.verdict = Verdict(journey)
        self.expected: list[Expected] = []

    def acknowledged(self, patient: str, key: Key, what: str) -> None:
        """The system acknowledged an input that owes `patient` the notification `key`."""
        self.expected.append(Expected(patient, key, time.monotonic(), what))
        self.verdict.acknowledged += 1

    def problem(self, text: str) -> None:
        """Something else the journey found wrong."""
        self.verdict.problems.append(text)

    def outstanding(self, streams: dict[str, PatientStream]) -> int:
        """How many expected notifications have not arrived yet."""
        missing = 0
        for patient, wanted in self._by_patient().items():
            got = Counter(d.key for d in self._since(streams[patient]))
            for key, count in Counter(e.key for e in wanted).items():
                if got.get(key, 0) == 0:
                    missing += count
                elif got[key] < count:
                    last_ack = max(e.acknowledged for e in wanted if e.key == key)
                    last = max(d.received for d in self._since(streams[patient]) if d.key == key)
                    missing += 1 if last < last_ack - 0.5 else 0
        return missing

    def _by_patient(self) -> dict[str, list[Expected]]:
        grouped: dict[str, list[Expected]] = defaultdict(list)
        for item in self.expected:
            grouped[item.patient].append(item)
        return grouped

    def _since(self, stream: PatientStream) -> Iterable[Delivered]:
        start = min((e.acknowledged for e in self.expected), default=0.0)
        # Notifications of earlier journeys (or of set-up) are not this journey's business;
        # a small margin keeps a notification that raced its own acknowledgement.
        return [d for d in stream.delivered if d.received >= start - 0.5]

    async def wait(self, streams: dict[str, PatientStream], timeout: float) -> None:
        """Wait until everything expected arrived, or the timeout passed."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.outstanding(streams) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.25)
        # Anything doubled arrives shortly after the original: give it a moment to show.
        await asyncio.sleep(1.0)

    def verify(self, streams: dict[str, PatientStream]) -> Verdict:
        """Lost, doubled and reordered notifications per patient, and the latencies."""
        verdict = self.verdict
        for patient, wanted in self._by_patient().items():
            delivered = [
                d for d in self._since(streams[patient]) if d.key in {e.key for e in wanted}
            ]
            verdict.delivered += len(delivered)
            counts = Counter(d.key for d in delivered)
            expected_counts = Counter(e.key for e in wanted)
            for key, count in expected_counts.items():
                got = counts.get(key, 0)
                last_ack = max(e.acknowledged for e in wanted if e.key == key)
                last_delivery = max((d.received for d in delivered if d.key == key), default=0.0)
                if got > count:
                    verdict.duplicated.append(f"{patient}: {key} x{got}")
                elif got == 0 or (got < count and last_delivery < last_ack - 0.5):
                    # Fewer notifications than versions is right when versions came faster
                    # than they were read (the EHR's notification names the resource, and
                    # the connector reads its newest version): then the last notification
                    # arrives after the last version was written.
                    what = next(e.what for e in wanted if e.key == key)
                    verdict.lost.append(f"{patient}: {what} {key}")
            stream = streams[patient]
            if verdict.lost and stream.interruptions:
                verdict.problems.append(
                    f"{patient}'s stream reconnected {stream.reconnects} times: "
                    f"{dict(stream.interruptions)}"
                )
            # Order per kind: each kind travels on its own topic, ordered per patient, and
            # one patient's inputs were acknowledged in sequence.
            for kind in {e.key[0] for e in wanted}:
                order = [e.key for e in sorted(wanted, key=lambda e: e.acknowledged)]
                firsts: list[Key] = []
                for d in sorted(delivered, key=lambda d: d.event_id):
                    if d.key[0] == kind and d.key not in firsts:
                        firsts.append(d.key)
                expected_order = [k for k in dict.fromkeys(order) if k in firsts]
                for position, (got_key, want_key) in enumerate(
                    zip(firsts, expected_order, strict=True)
                ):
                    if got_key != want_key:
                        verdict.out_of_order.append(
                            f"{patient}: {kind} #{position} got {got_key[1]}, "
                            f"expected {want_key[1]}"
                        )
                        break
            pending = list(wanted)
            for d in delivered:
                match = next((e for e in pending if e.key == d.key), None)
                if match is not None:
                    pending.remove(match)
                    verdict.latencies_ms.append(max(0.0, (d.received - match.acknowledged) * 1000))
        return verdict


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of journey rows."""
    columns = [
        "journey",
        "acknowledged",
        "delivered",
        "lost",
        "duplicated",
        "out_of_order",
        "p50_ms",
        "p99_ms",
        "problems",
    ]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)
