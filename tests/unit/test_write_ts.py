"""``window_write_ts`` is the per-event definition summed, exactly: every worker and every replay must agree."""

from __future__ import annotations

import math
import random

from schemas.sequence import _AGE_SCALE, TS_SHIFT, WEIGHT_MAX, SeqEvent, window_write_ts


def _weight(age_ms: int) -> int:
    """One event's share of a window's write timestamp: the definition (schemas.sequence's block comment)."""
    return WEIGHT_MAX - min(WEIGHT_MAX - 1, int(math.log1p(max(0, age_ms)) * _AGE_SCALE))


def _defined(events: list[SeqEvent]) -> int:
    newest = max(e.ts_ms for e in events)
    return (newest << TS_SHIFT) + sum(_weight(newest - e.ts_ms) for e in events)


def test_the_window_timestamp_is_the_sum_of_the_event_weights_for_any_window() -> None:
    rng = random.Random(20261203)
    for _ in range(2_000):
        base = rng.randint(0, 2**41)  # up to the year 2039 and beyond in ms
        ages = [rng.choice([0, 1, rng.randint(0, 1_000), rng.randint(0, 10**7), rng.randint(0, 10**12)])
                for _ in range(rng.randint(1, 300))]
        events = [SeqEvent(f"e{i}", base + age, "item", "click", "web") for i, age in enumerate(ages)]
        assert window_write_ts(events) == _defined(events)
    assert window_write_ts([]) == 0


def test_bucket_edges_and_the_weight_cap_agree() -> None:
    # ages around where one weight bucket gives way to the next, and past ten years (the lowest weight)
    newest = 1_790_000_000_000
    ages = sorted({a + d for a in (0, 1, 2, 3, 10, 99, 1_000, 86_400_000, 10 * 365 * 86_400_000, 2**40)
                   for d in (-1, 0, 1) if a + d >= 0})
    for age in ages:
        events = [SeqEvent("new", newest, "i", "click", "web"), SeqEvent("old", newest - age, "i", "click", "web")]
        assert window_write_ts(events) == _defined(events), age
