"""The per-second recovery view of a freshness phase: when it got back under the goal, and whether it stayed."""

from __future__ import annotations

from bench.recovery import back_under, recovery, windows

Phase = tuple[list[float], list[float]]  # produce times, latencies (ms)


def _phase(p99_by_second: list[float], start_ms: float = 1_000_000.0, per_second: int = 200) -> Phase:
    """Events spread over each second; two in a hundred at that second's p99, the rest fast."""
    produced: list[float] = []
    latency: list[float] = []
    for second, slow in enumerate(p99_by_second):
        for i in range(per_second):
            produced.append(start_ms + 1000 * second + 1000 * i / per_second)
            latency.append(slow if i % 100 >= 98 else 10.0)
    return produced, latency


def test_an_overload_tail_that_ends_is_back_under_from_the_first_good_second() -> None:
    produced, latency = _phase([1500.0, 900.0, 300.0, 200.0, 250.0])
    series = windows(produced, latency, 1_000_000.0)
    assert [w["p99_ms"] for w in series] == [1500.0, 900.0, 300.0, 200.0, 250.0]
    assert [w["events"] for w in series] == [200] * 5
    assert back_under(series, 500.0) == 2.0


def test_a_worker_that_stays_slow_is_never_back_under() -> None:
    produced, latency = _phase([300.0, 200.0, 800.0])  # good, then slow again at the end
    result = recovery(produced, latency, 1_000_000.0, 500.0)
    assert result["under_goal_from_s"] is None and result["worst_second_p99_ms"] == 800.0


def test_a_relapse_moves_the_recovery_past_it() -> None:
    produced, latency = _phase([900.0, 200.0, 700.0, 100.0, 100.0])
    assert recovery(produced, latency, 1_000_000.0, 500.0)["under_goal_from_s"] == 3.0
    assert recovery(*_phase([100.0, 100.0]), 1_000_000.0, 500.0)["under_goal_from_s"] == 0.0


def test_events_produced_before_the_phase_start_count_in_its_first_second() -> None:
    series = windows([999_500.0, 1_000_100.0], [40.0, 60.0], 1_000_000.0)
    assert series == [{"from_s": 0.0, "events": 2, "p99_ms": 60.0}]
    assert windows([], [], 0.0) == [] and back_under([], 500.0) is None


def test_a_second_whose_p99_was_never_readable_is_not_under_any_goal() -> None:
    import math

    produced, latency = _phase([100.0, 100.0, 100.0])
    latency[-3:] = [math.inf] * 3  # 1.5 % of the last second given up on: its p99 is never readable
    result = recovery(produced, latency, 1_000_000.0, 500.0)
    assert result["p99_ms_per_second"] == [100.0, 100.0, None]
    assert result["under_goal_from_s"] is None and result["worst_second_p99_ms"] is None


def test_a_second_without_events_keeps_its_place_and_counts_as_neither() -> None:
    produced, latency = _phase([900.0, 100.0, 100.0, 100.0])
    keep = [i for i, at in enumerate(produced) if not 1_001_000.0 <= at < 1_002_000.0]  # second 1: nothing produced
    result = recovery([produced[i] for i in keep], [latency[i] for i in keep], 1_000_000.0, 500.0)
    assert result["p99_ms_per_second"] == [900.0, None, 100.0, 100.0]  # index = second, the gap included
    assert result["events_per_second"] == [200, 0, 200, 200]
    assert result["under_goal_from_s"] == 2.0 and result["worst_second_p99_ms"] == 900.0
    assert recovery(*_phase([100.0, 900.0]), 1_000_000.0, 500.0)["under_goal_from_s"] is None  # ends slow
