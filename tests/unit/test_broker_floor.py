"""``bench.broker_floor.summary``: a phase's latencies by consume time, nothing outside the window."""

from __future__ import annotations

from bench.broker_floor import summary


def test_summary_takes_only_the_window_and_orders_before_ranking() -> None:
    seen = [(9.99, 1000.0), (10.0, 30.0), (10.5, 10.0), (11.0, 20.0), (11.99, 40.0), (12.0, 5000.0)]
    assert summary(seen, 10.0, 12.0) == {"messages": 4, "p50_ms": 30.0, "p99_ms": 40.0}


def test_an_empty_window_says_so() -> None:
    assert summary([(1.0, 5.0)], 2.0, 3.0) == {"messages": 0, "p50_ms": None, "p99_ms": None}
