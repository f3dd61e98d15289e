"""Service tokens: minted by the caller, verified by the callee, keyed per environment."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from servicekit.identity import (
    CLOCK_SKEW_S,
    VERIFIED_CACHE_MAX,
    ServiceTokenError,
    ServiceTokens,
    ServiceTokenVerifier,
)
from servicekit.settings import ServiceSettings

KEY = "k" * 48


def test_a_token_for_me_names_its_caller() -> None:
    token = ServiceTokens("gateway", KEY).token("records")
    caller = ServiceTokenVerifier("records", KEY).verify(f"Bearer {token}")
    assert caller.service == "gateway"
    assert caller.token_id


# Tokens are minted when the test runs, not when it is collected: a token minted at
# collection had expired by the time a long run reached this test (service tokens live a
# minute), and the test failed for the wrong reason.
@pytest.mark.parametrize(
    ("authorization", "status", "reason"),
    [
        (lambda: None, 401, "service_token_missing"),
        (lambda: "Bearer ", 401, "service_token_invalid"),
        (lambda: "Bearer not.a.jwt", 401, "service_token_invalid"),
        (
            lambda: f"Bearer {ServiceTokens('gateway', 'o' * 48).token('records')}",
            401,
            "service_token_invalid",
        ),
        (
            lambda: f"Bearer {ServiceTokens('gateway', KEY).token('triage')}",
            403,
            "service_token_wrong_audience",
        ),
    ],
    ids=["missing", "empty", "malformed", "other-key", "wrong-audience"],
)
def test_refusals(authorization: Callable[[], str | None], status: int, reason: str) -> None:
    with pytest.raises(ServiceTokenError) as refused:
        ServiceTokenVerifier("records", KEY).verify(authorization())
    assert (refused.value.status, refused.value.reason) == (status, reason)


def test_an_expired_token_is_refused_after_the_clock_skew() -> None:
    old = time.time() - 600
    token = ServiceTokens("gateway", KEY, ttl_s=60).token("records", now=old)
    with pytest.raises(ServiceTokenError) as refused:
        ServiceTokenVerifier("records", KEY).verify(f"Bearer {token}")
    assert refused.value.reason == "service_token_expired"


def test_the_development_key_is_refused_outside_development() -> None:
    with pytest.raises(ValidationError, match="SERVICE_TOKEN_KEY is the development default"):
        ServiceSettings(environment="prod", ops_token="o" * 32)


def test_the_key_comes_from_a_mounted_file(tmp_path: Path) -> None:
    mounted = tmp_path / "service-token-key"
    mounted.write_text(KEY + "\n")
    settings = ServiceSettings(
        environment="prod", ops_token="o" * 32, service_token_key_file=str(mounted)
    )
    assert settings.service_token_key == KEY
    with pytest.raises(ValidationError, match="cannot be read"):
        ServiceSettings(service_token_key_file=str(tmp_path / "missing"))


def test_a_verified_token_is_still_refused_once_it_expires() -> None:
    issued = time.time()
    token = ServiceTokens("gateway", KEY, ttl_s=60).token("records", now=issued)
    verifier = ServiceTokenVerifier("records", KEY)
    assert verifier.verify(f"Bearer {token}", now=issued).service == "gateway"
    assert verifier.verify(f"Bearer {token}", now=issued + 60).service == "gateway"
    with pytest.raises(ServiceTokenError) as refused:
        verifier.verify(f"Bearer {token}", now=issued + 60 + CLOCK_SKEW_S + 1)
    assert refused.value.reason == "service_token_expired"


def test_a_token_signed_with_another_key_is_refused_after_the_genuine_one_passed() -> None:
    genuine = ServiceTokens("gateway", KEY)
    verifier = ServiceTokenVerifier("records", KEY)
    verifier.verify(f"Bearer {genuine.token('records')}")
    header, claims, _ = genuine.token("records").split(".")
    forged = ServiceTokens("gateway", "o" * 48).token("records").split(".")[2]
    for token in (
        f"{header}.{claims}.{forged}",
        ServiceTokens("gateway", "o" * 48).token("records"),
    ):
        with pytest.raises(ServiceTokenError) as refused:
            verifier.verify(f"Bearer {token}")
        assert refused.value.reason == "service_token_invalid"


def test_a_token_for_another_service_stays_refused() -> None:
    token = ServiceTokens("gateway", KEY).token("triage")
    verifier = ServiceTokenVerifier("records", KEY)
    for _ in range(2):
        with pytest.raises(ServiceTokenError) as refused:
            verifier.verify(f"Bearer {token}")
        assert refused.value.status == 403


def test_the_remembered_tokens_stay_bounded() -> None:
    verifier = ServiceTokenVerifier("records", KEY)
    for n in range(VERIFIED_CACHE_MAX + 5):
        token = ServiceTokens(f"caller-{n}", KEY).token("records")
        assert verifier.verify(f"Bearer {token}").service == f"caller-{n}"
    assert len(verifier._verified) <= VERIFIED_CACHE_MAX
