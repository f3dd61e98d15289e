"""NUL characters in JSON text are refused before they reach PostgreSQL (which cannot store
them in text: the insert failed with a 500, found by schemathesis)."""

from __future__ import annotations

import json

import pytest

from servicekit.limits import has_nul_escape


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("a\x00b", True),
        ("\\\x00", True),  # an escaped backslash, then NUL
        ("\\u0000", False),  # the six characters \u0000 are fine
        ("plain text", False),
    ],
)
def test_nul_in_any_string_is_found(text: str, refused: bool) -> None:
    assert has_nul_escape(json.dumps({"text": text}).encode()) is refused
