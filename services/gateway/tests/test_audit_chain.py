"""The keyed access-log chain and its signed checkpoints (pure rules, no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from gateway.domain import (
    GENESIS,
    AccessRecord,
    Checkpoint,
    access_hash,
    keyed_access_hash,
    verify_log,
)

KEY = b"k" * 32


def _keyed(n: int, key: bytes = KEY, start: int = 1, prev: str = GENESIS) -> list[AccessRecord]:
    out: list[AccessRecord] = []
    for i in range(n):
        at = datetime(2026, 12, 3, tzinfo=UTC) + timedelta(minutes=i)
        row = AccessRecord(
            f"p{i % 2}",
            "self",
            "read",
            "Observation",
            at,
            prev,
            "",
            chain=2,
            actor_id=f"Patient/p{i % 2}",
            on_behalf_of=f"p{i % 2}",
            resource_id=f"obs-{i}",
            client_id="portal",
            trace_id="ab" * 16,
            id=start + i,
        )
        row = replace(row, hash=keyed_access_hash(key, row))
        out.append(row)
        prev = row.hash
    return out


def _anchor(rows: list[AccessRecord], key: bytes = KEY) -> Checkpoint:
    return Checkpoint(rows[-1].id, len(rows), rows[-1].hash, "2026-12-03T12:00:00+00:00").signed(
        key
    )


def test_a_keyed_chain_with_its_anchor_verifies() -> None:
    rows = _keyed(6)
    verdict = verify_log(rows, [_anchor(rows[:4]), _anchor(rows)], KEY)
    assert verdict.intact and verdict.rows == 6 and verdict.checkpoints == 2


def test_every_field_is_covered_by_the_hmac() -> None:
    for field in ("outcome", "client_id", "resource_id", "on_behalf_of", "trace_id", "actor_id"):
        rows = _keyed(3)
        rows[1] = replace(rows[1], **{field: "changed"})
        assert verify_log(rows, [], KEY).first_broken_id == 2, field


def test_deleting_a_patients_rows_and_rehashing_without_the_key_is_found() -> None:
    rows = _keyed(6)
    kept = [r for r in rows if r.patient_id != "p1"]
    rehashed = _keyed_again(kept, b"a guessed key, not the real one")
    verdict = verify_log(rehashed, [], KEY)
    assert not verdict.intact and verdict.first_broken_id == kept[0].id


def test_rewriting_everything_as_unkeyed_rows_is_caught_by_the_anchor() -> None:
    rows = _keyed(6)
    anchor = _anchor(rows)
    prev = GENESIS
    forged: list[AccessRecord] = []
    for r in rows:
        if r.patient_id == "p1":
            continue
        h = access_hash(prev, r.patient_id, r.actor, r.action, r.resource, r.at)
        forged.append(replace(r, chain=1, prev_hash=prev, hash=h))
        prev = h
    verdict = verify_log(forged, [anchor], KEY)
    assert not verdict.intact
    assert "missing or changed" in (verdict.problem or "")


def test_unkeyed_rows_after_keyed_ones_are_refused() -> None:
    rows = _keyed(2)
    at = rows[-1].at + timedelta(minutes=1)
    h = access_hash(rows[-1].hash, "p0", "self", "read", "Observation", at)
    late = AccessRecord("p0", "self", "read", "Observation", at, rows[-1].hash, h, chain=1, id=3)
    assert verify_log([*rows, late], [], KEY).first_broken_id == 3


def test_cutting_the_tail_is_caught_by_the_anchor() -> None:
    rows = _keyed(6)
    verdict = verify_log(rows[:4], [_anchor(rows)], KEY)
    assert not verdict.intact and verdict.first_broken_id == 6


def test_a_checkpoint_signed_with_another_key_is_refused() -> None:
    rows = _keyed(3)
    verdict = verify_log(rows, [_anchor(rows, b"x" * 32)], KEY)
    assert not verdict.intact and "not signed" in (verdict.problem or "")


def test_deleting_rows_before_an_anchor_changes_the_count() -> None:
    rows = _keyed(6)
    anchor = _anchor(rows)
    # Remove the first row and re-hash with the real key (an insider with the key but not
    # the anchor file): the count no longer matches even though every hash does.
    rest = _keyed_again(rows[1:], KEY)
    rest[-1] = replace(rest[-1], hash=anchor.head_hash)  # even faking the head's hash
    assert not verify_log(rest, [anchor], KEY).intact


def _keyed_again(rows: list[AccessRecord], key: bytes) -> list[AccessRecord]:
    prev = GENESIS
    out: list[AccessRecord] = []
    for r in rows:
        row = replace(r, prev_hash=prev, hash="")
        row = replace(row, hash=keyed_access_hash(key, row))
        out.append(row)
        prev = row.hash
    return out
