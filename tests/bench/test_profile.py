"""The profile summary of `bench/run.py --profile` (bench/benchkit/profile.py): py-spy's
collapsed stacks turned into the report's section. No process is profiled here."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from benchkit.profile import as_result, summarise, summarise_file
from benchkit.report import markdown

# py-spy --format raw: outermost frame first, the sample count last.
COLLAPSED = [
    "run (asyncio/runners.py:118);handle (gateway/api/me.py:143);"
    "execute (asyncpg/connection.py:350) 6\n",
    "run (asyncio/runners.py:118);handle (gateway/api/me.py:150);"
    "record (gateway/audit.py:40);execute (asyncpg/connection.py:351) 2\n",
    "run (asyncio/runners.py:118) 2\n",
    "\n",
    "not a sample line\n",
]


def test_self_time_is_the_innermost_function_whatever_its_line() -> None:
    profile = summarise(COLLAPSED)
    assert profile.samples == 10
    assert profile.self_top == [
        ("execute (asyncpg/connection.py)", 0.8),
        ("run (asyncio/runners.py)", 0.2),
    ]


def test_ours_counts_each_of_our_functions_once_per_sample() -> None:
    recursive = ["a (gateway/x.py:1);a (gateway/x.py:2);b (httpx/y.py:3) 4\n"]
    assert summarise(recursive).ours_top == [("a (gateway/x.py)", 1.0)]
    assert summarise(COLLAPSED).ours_top == [
        ("handle (gateway/api/me.py)", 0.8),
        ("record (gateway/audit.py)", 0.2),
    ]


def test_top_keeps_the_largest_shares() -> None:
    assert len(summarise(COLLAPSED, top=1).self_top) == 1


def test_no_samples_is_an_empty_profile() -> None:
    assert summarise([]).samples == 0
    assert summarise([]).self_top == []


def test_the_report_section_gives_cores_and_where_they_went() -> None:
    result = as_result(
        "m1", {"gateway": summarise(COLLAPSED), "idle": summarise([])}, 2.0, 10, "a test"
    )
    # 10 samples at 10 Hz over 2 s: half a core.
    assert result.figures == {"cores.gateway": 0.5, "cores.idle": 0.0}
    assert any(
        n.startswith("gateway: self: 80% execute (asyncpg/connection.py)") for n in result.notes
    )
    text = markdown([result], {"cpus": 2}, {"started": "t", "mode": "quick", "kafka": "tansu"})
    assert "| cores.gateway | 0.50 |" in text


def test_a_process_py_spy_could_not_sample_is_named() -> None:
    result = as_result("m4", {}, 2.0, 10, "a test", missing=["records"])
    assert result.name == "m4_profile"
    assert result.figures == {}
    assert "records: not profiled (py-spy's reason in profile/m4/records.err)" in result.notes


def test_a_garbled_line_of_py_spy_does_not_lose_the_profile(tmp_path: Path) -> None:
    # A line of py-spy's output in the sandbox's profile held bytes that are not UTF-8
    # (a frame read while it changed); reading it as text failed the whole benchmark.
    path = tmp_path / "ehr-sandbox.txt"
    garbled = b"\xf6\xae\x84\xa1\x00\xf9 (\xef\xbf\xbd:1) 1\n"
    path.write_bytes("".join(COLLAPSED).encode() + garbled)
    profile = summarise_file(path)
    assert profile.samples == 11
    assert profile.self_top[0] == ("execute (asyncpg/connection.py)", round(8 / 11, 3))
