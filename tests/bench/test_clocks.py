"""The load generator's clocks: benchmark 1 starts each result's at the EHR's write of the
report (not when the loaded generator read the answer) and reports the rate the EHR
actually wrote, and a patient's token is renewed ahead of a phase that stops its issuer. No benchmark runs here."""

from __future__ import annotations

import base64
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from benchkit.acceptance import portal
from benchkit.backfill import _mean_rate
from benchkit.lab_to_patient import _committed, written_rate

PatientAuth = portal.PatientAuth


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def test_a_result_is_timed_from_its_reports_write() -> None:
    written_at = datetime.now(UTC) - timedelta(seconds=0.4)
    written = [
        {
            "reference": "Observation/o1",
            "versionId": "1",
            "lastUpdated": _instant(datetime.now(UTC)),
        },
        {"reference": "DiagnosticReport/r1", "versionId": "1", "lastUpdated": _instant(written_at)},
    ]
    found = _committed(written)
    assert found is not None
    report, at = found
    assert report == "r1"
    # 0.4 s before now on this process's monotonic clock (the conversion's own error: ~ms).
    assert abs((time.monotonic() - at) - 0.4) < 0.05


def test_an_answer_without_a_report_has_no_time() -> None:
    written = [
        {
            "reference": "Observation/o1",
            "versionId": "1",
            "lastUpdated": _instant(datetime.now(UTC)),
        }
    ]
    assert _committed(written) is None


def test_the_written_rate_is_what_the_ehr_wrote_not_what_was_asked() -> None:
    # Asked for 50/s over 60 s, but a saturated EHR wrote its 3,000th result at 150 s.
    start = 1000.0
    written_at = [start + 0.05 * k for k in range(2999)] + [start + 150.0]
    assert written_rate(written_at, start) == 20.0
    assert written_rate([], start) is None


def test_benchmark_5_weights_each_live_rounds_rate_by_its_results() -> None:
    rounds = [{"written_rate": 20.0, "acked": 3000}, {"written_rate": 40.0, "acked": 1000}]
    assert _mean_rate(rounds) == 25.0
    assert _mean_rate([{"written_rate": None, "acked": 0}]) is None


def _token(expires_in_s: float) -> str:
    claims = base64.urlsafe_b64encode(json.dumps({"exp": time.time() + expires_in_s}).encode())
    return "e30." + claims.decode().rstrip("=") + ".sig"


class _Issuer:
    def __init__(self) -> None:
        self.issued = 0

    async def token(self, patient: str) -> str:
        self.issued += 1
        return _token(300)


async def test_a_token_is_renewed_only_when_it_would_not_last() -> None:
    issuer = _Issuer()
    auth = PatientAuth(issuer, "pt-1", _token(90))  # type: ignore[arg-type]
    first = await auth.token()
    assert issuer.issued == 0 and first == auth.current  # lasts the default minute
    # Ahead of a 60 s phase whose issuer will be stopped: renewed now.
    renewed = await auth.token(valid_for_s=120)
    assert issuer.issued == 1 and renewed != first
