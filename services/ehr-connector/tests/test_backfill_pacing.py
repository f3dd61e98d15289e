"""A back-fill yields to live notifications: how long it rests between pages."""

from __future__ import annotations

from ehr_connector.inbound.service.pacing import LiveTraffic, pause_after_page


def test_live_traffic_is_recent_only_within_the_window() -> None:
    now = [100.0]
    live = LiveTraffic(clock=lambda: now[0])
    assert not live.recent(2.0)  # nothing heard yet
    live.seen()
    now[0] = 101.5
    assert live.recent(2.0)
    now[0] = 102.5
    assert not live.recent(2.0)


def test_under_live_traffic_the_rest_keeps_the_back_fill_to_its_share() -> None:
    # A page of 0.2 s at half the time: 0.2 s of rest; at a quarter: 0.6 s.
    assert pause_after_page(0.2, 0.5, 0.0, live=True) == 0.2
    assert abs(pause_after_page(0.2, 0.25, 0.0, live=True) - 0.6) < 1e-9
    # The configured interval when it is longer.
    assert pause_after_page(0.2, 0.5, 1.0, live=True) == 1.0


def test_without_live_traffic_or_with_a_full_share_only_the_interval() -> None:
    assert pause_after_page(0.2, 0.5, 0.0, live=False) == 0.0
    assert pause_after_page(0.2, 1.0, 0.3, live=True) == 0.3
