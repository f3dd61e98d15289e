"""Benchmark 5: a patient's 5-year history back-filled beside live traffic.

A new EHR patient gets a 5-year history of `resources` resources (lab panels — reports
and their observations, the bulk of a real chart — plus medication orders, conditions,
allergies and immunizations), written through the sandbox's FHIR API (PUT with our ids:
the reports must name their observations). Then the patient signs in to the portal: the
link starts the connector's back-fill (paged searches → `record.imported` → records).
Measured:

* time to fully visible: from the sign-in until every report (with all its results) is in
  `GET /v1/me/lab-results` and every other resource in `/v1/me/medications`,
  `/conditions`, `/allergies` and `/immunizations`;
* benchmark 1's live flow (lab results for the run's patients, to their SSE streams)
  while the back-fill runs, in rounds of the run's duration until the history is
  visible, against the same flow alone just before (the baseline of this run): the
  live p99 must stay within 2x of its solo value.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from ehr_sandbox.dev.vocabulary import (
    FORMULARY,
    PANELS,
    SNOMED,
    concept,
    conclusion_for,
    lab_observation,
    lab_report,
    medication_request,
    reference,
    sample_value,
)

from .context import Context, sign_in
from .lab_to_patient import live_flow
from .report import Progress, Result, latency_summary, ratio

YEARS = 5
WRITERS = 8  # concurrent PUTs while seeding the history
POLL_S = 1.0
FHIR_JSON = {"Content-Type": "application/fhir+json"}
PRACTITIONER = "dr-adams"  # the sandbox's seeded primary care physician
CONDITIONS = [
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("55822004", "Hyperlipidemia"),
    ("195967001", "Asthma"),
]
ALLERGENS = [("764146007", "Penicillin"), ("91935009", "Peanut"), ("300916003", "Latex")]
VACCINES = [("140", "Influenza, seasonal, injectable"), ("208", "COVID-19, mRNA")]


@dataclass
class History:
    """The resources written, and what the portal must show once they are imported."""

    resources: list[dict[str, Any]] = field(default_factory=list)
    reports: dict[str, int] = field(default_factory=dict)  # report id -> its results
    lists: dict[str, int] = field(default_factory=dict)  # gateway list -> count


def _when(rng: random.Random, now: datetime) -> datetime:
    return now - timedelta(days=rng.uniform(1, 365 * YEARS))


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def history(patient: str, total: int, seed: int = 5) -> History:
    """About `total` resources over five years: 90 % lab panels, the rest split between
    medication orders, conditions, allergies and immunizations."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    tag = uuid.uuid4().hex[:8]
    out = History()
    panels = list(PANELS.values())
    performer = [reference("Organization", "clinic-lab", "Riverside Clinical Laboratory")]
    n = 0
    while len(out.resources) < total * 0.9:
        panel = panels[n % len(panels)]
        when = _when(rng, now)
        observations = [
            lab_observation(
                patient,
                analyte,
                sample_value(analyte, abnormal=rng.random() < 0.1, rng=rng),
                effective=_iso(when),
                issued=_iso(when + timedelta(hours=6)),
                status="final",
                performer=performer,
                resource_id=f"bf{tag}-o{n}-{k}",
            )
            for k, analyte in enumerate(panel.analytes)
        ]
        report = lab_report(
            patient,
            panel,
            [reference("Observation", o["id"]) for o in observations],
            effective=_iso(when),
            issued=_iso(when + timedelta(hours=6)),
            status="final",
            performer=performer,
            interpreter=[reference("Practitioner", PRACTITIONER)],
            conclusion=conclusion_for(observations),
            resource_id=f"bf{tag}-r{n}",
        )
        out.resources += [*observations, report]
        out.reports[report["id"]] = len(observations)
        n += 1
    rest = max(4, total - len(out.resources))
    drugs = list(FORMULARY.values())
    kinds = {"medications": 0.5, "conditions": 0.2, "allergies": 0.1, "immunizations": 0.2}
    for kind, share in kinds.items():
        count = max(1, round(rest * share))
        out.lists[kind] = count
        for k in range(count):
            rid = f"bf{tag}-{kind[:3]}{k}"
            at = _iso(_when(rng, now))
            if kind == "medications":
                resource = medication_request(
                    patient,
                    drugs[k % len(drugs)],
                    authored_on=at,
                    requester=reference("Practitioner", PRACTITIONER),
                    status="completed" if k % 3 else "active",
                    resource_id=rid,
                )
            elif kind == "conditions":
                code, display = CONDITIONS[k % len(CONDITIONS)]
                resource = {
                    "resourceType": "Condition",
                    "id": rid,
                    "clinicalStatus": concept(
                        "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "active",
                        "Active",
                    ),
                    "verificationStatus": concept(
                        "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "confirmed",
                        "Confirmed",
                    ),
                    "category": [
                        concept(
                            "http://terminology.hl7.org/CodeSystem/condition-category",
                            "problem-list-item",
                            "Problem List Item",
                        )
                    ],
                    "code": concept(SNOMED, code, display),
                    "subject": reference("Patient", patient),
                    "onsetDateTime": at,
                    "recordedDate": at,
                }
            elif kind == "allergies":
                code, display = ALLERGENS[k % len(ALLERGENS)]
                resource = {
                    "resourceType": "AllergyIntolerance",
                    "id": rid,
                    "clinicalStatus": concept(
                        "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                        "active",
                        "Active",
                    ),
                    "verificationStatus": concept(
                        "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                        "confirmed",
                        "Confirmed",
                    ),
                    "type": "allergy",
                    "category": ["medication" if k % 3 == 0 else "food"],
                    "criticality": "low",
                    "code": concept(SNOMED, code, display),
                    "patient": reference("Patient", patient),
                    "recordedDate": at,
                }
            else:
                cvx, display = VACCINES[k % len(VACCINES)]
                resource = {
                    "resourceType": "Immunization",
                    "id": rid,
                    "status": "completed",
                    "vaccineCode": concept("http://hl7.org/fhir/sid/cvx", cvx, display),
                    "patient": reference("Patient", patient),
                    "occurrenceDateTime": at,
                    "primarySource": True,
                }
            out.resources.append(resource)
    return out


async def seed(ctx: Context, written: History) -> float:
    """PUT every resource (update-as-create with our ids); returns the seconds it took."""
    resources = list(written.resources)
    total = len(resources)
    progress = Progress("m5 seeding the history", total / 100)
    done = 0
    began = time.monotonic()

    async def writer() -> None:
        nonlocal done
        while resources:
            resource = resources.pop()
            path = f"/fhir/{resource['resourceType']}/{resource['id']}"
            response = await ctx.clinic.http.put(path, json=resource, headers=FHIR_JSON)
            if response.status_code not in (200, 201):
                raise RuntimeError(f"seeding {path}: {response.status_code} {response.text}")
            done += 1
            progress.update(done, "resources written")

    await asyncio.gather(*(writer() for _ in range(WRITERS)))
    return time.monotonic() - began


def _items(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        items = body.get("items", [])
        return items if isinstance(items, list) else []
    return []


async def _lab_results(patient: Any) -> dict[str, int]:
    """Every report listed for the patient, with its number of results."""
    seen: dict[str, int] = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100}
        if cursor:
            params["cursor"] = cursor
        response = await patient.http.get("/v1/me/lab-results", params=params)
        if response.status_code != 200:
            return seen
        body = response.json()
        for item in _items(body):
            seen[str(item.get("id"))] = len(item.get("observations", []) or [])
        cursor = body.get("next_cursor") if isinstance(body, dict) else None
        if not cursor:
            return seen


async def _visible(patient: Any, written: History) -> dict[str, Any]:
    """What the portal shows of the history now: counts per list, complete or not."""
    counts: dict[str, int] = {}
    for kind in written.lists:
        try:
            response = await patient.http.get(f"/v1/me/{kind}")
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            counts[kind] = len(_items(response.json()))
    lists_done = all(counts.get(k, 0) >= v for k, v in written.lists.items())
    reports: dict[str, int] = {}
    if lists_done:  # page the lab results only once the cheap lists are there
        reports = await _lab_results(patient)
    complete_reports = sum(
        1 for rid, results in written.reports.items() if reports.get(rid, -1) >= results
    )
    return {
        "counts": counts,
        "reports": complete_reports,
        "done": lists_done and complete_reports == len(written.reports),
    }


async def _watch(
    patient: Any, written: History, began: float, limit_s: float, done: asyncio.Event
) -> dict[str, Any]:
    total = len(written.reports) + sum(written.lists.values())
    progress = Progress("m5 back-fill visible", limit_s)
    last: dict[str, Any] = {}
    while time.monotonic() - began < limit_s:
        last = await _visible(patient, written)
        shown = sum(last["counts"].values()) + last["reports"]
        progress.update(shown, f"of {total} list entries visible")
        if last["done"]:
            done.set()
            return {"visible_s": time.monotonic() - began, **last}
        await asyncio.sleep(POLL_S)
    done.set()
    return {"visible_s": None, **last}


def _mean_rate(rounds: list[dict[str, Any]]) -> float | None:
    """The rounds' written rates, weighted by their results."""
    weighted = [(r["written_rate"], r["acked"]) for r in rounds if r.get("written_rate")]
    results = sum(n for _, n in weighted)
    return round(sum(rate * n for rate, n in weighted) / results, 1) if results else None


async def run(ctx: Context) -> Result:
    """Benchmark 5 and its baseline (the live flow alone, just before)."""
    started = time.monotonic()
    settings = ctx.settings
    # Quick: a small history, so that `make bench-quick` stays within minutes in all.
    total = 400 if settings.quick else 10_000
    # The live flow alone first: seeding makes the EHR notify the connector of every
    # seeded report (of a patient nobody has linked yet), and the tail of that work falls
    # into the back-fill phase (against us), not into the baseline.
    solo = await live_flow(ctx)
    fhir_id = await ctx.clinic.new_patient("Backfill")
    written = history(fhir_id, total)
    seed_s = await seed(ctx, written)
    began = time.monotonic()
    if ctx.profiler is not None:
        await ctx.profiler.start("m5", ctx.pids())
    patient = await sign_in(ctx.clinic, fhir_id)  # links: the back-fill starts
    try:
        done = asyncio.Event()
        watcher = asyncio.create_task(
            _watch(patient, written, began, settings.drain_limit_s * 2, done)
        )
        rounds: list[dict[str, Any]] = []
        while not done.is_set():  # live traffic for as long as the back-fill runs
            rounds.append(await live_flow(ctx))
        seen = await watcher
    finally:
        await patient.http.aclose()
    if ctx.profiler is not None:
        ctx.extra_results.append(await ctx.profiler.result("benchmark 5's back-fill and live"))
    live_stream = [x for r in rounds for x in r["stream"]]
    live = latency_summary(live_stream)
    alone = latency_summary(solo["stream"])
    visible_s = seen["visible_s"]
    figures: dict[str, Any] = {
        "resources": len(written.resources),
        "reports": len(written.reports),
        "seed_s": round(seed_s, 1),
        "visible_s": round(visible_s, 1) if visible_s is not None else None,
        "resources_per_s": round(len(written.resources) / visible_s, 1) if visible_s else None,
        "reports_visible": seen["reports"],
        "live_acknowledged": sum(r["acked"] for r in rounds),
        "live_lost": sum(r["lost"] for r in rounds),
        "live_duplicated": sum(r["duplicated"] for r in rounds),
        "live_written_rate_per_s": _mean_rate(rounds),
        "live_p50_ms": live["p50_ms"],
        "live_p99_ms": live["p99_ms"],
        "live_rounds": len(rounds),
    }
    baseline: dict[str, Any] = {
        "live_acknowledged": solo["acked"],
        "live_lost": solo["lost"],
        "live_duplicated": solo["duplicated"],
        "live_written_rate_per_s": solo["written_rate"],
        "live_p50_ms": alone["p50_ms"],
        "live_p99_ms": alone["p99_ms"],
    }
    result = Result(
        name="m5_backfill",
        title="5. Back-fill beside live traffic",
        config={
            "resources": len(written.resources),
            "years": YEARS,
            "live_patients": settings.patients,
            "live_rate_per_s": settings.lab_rate,
            "live_round_s": settings.duration_s,
        },
        figures=figures,
        baseline=baseline,
        ratios={
            "live_p50_ms": ratio(live["p50_ms"], alone["p50_ms"]),
            "live_p99_ms": ratio(live["p99_ms"], alone["p99_ms"]),
        },
        samples={
            "live during back-fill: to SSE": live_stream,
            "live alone: to SSE": solo["stream"],
        },
        notes=[
            f"One patient's {YEARS}-year history ({len(written.resources):,} resources: "
            f"{len(written.reports):,} lab reports with their results, "
            + ", ".join(f"{v} {k}" for k, v in written.lists.items())
            + ") written to the EHR, then the patient signs in: visible_s runs from the "
            "sign-in to the last entry in the portal's lists.",
            "Live: benchmark 1's flow (the same patients, rate and round length) in rounds "
            "while the back-fill runs; baseline: one round alone just before. Target: live "
            "p99 ratio <= 2.",
            f"lists seen at the end: {seen['counts']}",
        ],
    )
    result.elapsed_s = time.monotonic() - started
    return result
