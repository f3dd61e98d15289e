"""The bounded store of chart reads' answers (`records.read_cache`), without I/O."""

from __future__ import annotations

from records.read_cache import ENTRY_OVERHEAD, ChartReads


def test_an_answer_is_given_only_at_the_version_it_was_computed_at() -> None:
    reads = ChartReads(max_bytes=10_000)
    reads.put("/patients/p/lab-results?", 7, b"[1]")
    assert reads.get("/patients/p/lab-results?", 7) == b"[1]"
    assert reads.get("/patients/p/lab-results?limit=5", 7) is None
    # The chart was written since: the answer is dropped, not given.
    assert reads.get("/patients/p/lab-results?", 8) is None
    assert reads.get("/patients/p/lab-results?", 7) is None
    assert reads.size == 0


ONE = ENTRY_OVERHEAD + 1 + 4  # an answer of 4 bytes to a request of 1 character


def test_the_least_recently_used_answers_go_first_beyond_the_bound() -> None:
    reads = ChartReads(max_bytes=2 * ONE + 1)
    reads.put("a", 1, b"1234")
    reads.put("b", 1, b"1234")
    assert reads.get("a", 1) == b"1234"  # now b is the least recently used
    reads.put("c", 1, b"1234")
    assert (reads.get("a", 1), reads.get("b", 1), reads.get("c", 1)) == (b"1234", None, b"1234")
    assert reads.size == 2 * ONE
    reads.put("a", 2, b"12")  # replaced, not added
    assert reads.size == 2 * ONE - 2
    reads.put("huge", 1, b"x" * 2 * ONE)  # larger than the whole bound: not kept
    assert reads.get("huge", 1) is None
    assert reads.size == 2 * ONE - 2


def test_many_small_answers_are_bounded_by_what_keeping_them_costs() -> None:
    """A patient varying a query (`since=` each second) makes many small answers: each is
    counted with its request and its entry, so they cannot outgrow the bound."""
    reads = ChartReads(max_bytes=100 * ENTRY_OVERHEAD)
    for n in range(10_000):
        reads.put(f"/patients/p/lab-results?since=2026-12-07T10:{n:05d}", 1, b"[]")
    assert len(reads) < 100
    assert reads.size <= reads.max_bytes
