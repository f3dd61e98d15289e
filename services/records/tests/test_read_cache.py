"""The bounded store of chart reads' answers (`records.read_cache`), without I/O."""

from __future__ import annotations

from records.read_cache import ChartReads


def test_an_answer_is_given_only_at_the_version_it_was_computed_at() -> None:
    reads = ChartReads(max_bytes=100)
    reads.put("/patients/p/lab-results?", 7, b"[1]")
    assert reads.get("/patients/p/lab-results?", 7) == b"[1]"
    assert reads.get("/patients/p/lab-results?limit=5", 7) is None
    # The chart was written since: the answer is dropped, not given.
    assert reads.get("/patients/p/lab-results?", 8) is None
    assert reads.get("/patients/p/lab-results?", 7) is None
    assert reads.size == 0


def test_the_least_recently_used_answers_go_first_beyond_the_bound() -> None:
    reads = ChartReads(max_bytes=10)
    reads.put("a", 1, b"1234")
    reads.put("b", 1, b"1234")
    assert reads.get("a", 1) == b"1234"  # now b is the least recently used
    reads.put("c", 1, b"1234")
    assert (reads.get("a", 1), reads.get("b", 1), reads.get("c", 1)) == (b"1234", None, b"1234")
    assert reads.size == 8
    reads.put("a", 2, b"12")  # replaced, not added
    assert reads.size == 6
    reads.put("huge", 1, b"x" * 11)  # larger than the whole bound: not kept
    assert reads.get("huge", 1) is None
    assert reads.size == 6
