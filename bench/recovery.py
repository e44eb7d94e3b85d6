"""Freshness over a phase, second by second: when did the worker get back under the goal, and stay there?

Why: one p99 over a whole phase cannot tell "slow for the first two seconds after an overload, then
fine" from "slow throughout".  Each event's latency is filed under the second (of the phase) in which it
was produced; the phase is back under the goal from the first window after which every window's p99 is
under it.  A worker that stays slow once its backlog is gone shows as ``None`` (never back under).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def quantile(data: Sequence[float], q: float) -> float:
    """The value at rank ``q`` of sorted, non-empty ``data``: the one definition the freshness numbers use."""
    return data[min(len(data) - 1, int(q * len(data)))]


def windows(produced_ms: Sequence[float], latency_ms: Sequence[float], start_ms: float,
            width_s: float = 1.0) -> list[dict[str, Any]]:
    """p99 latency of the events produced in each ``width_s`` window from ``start_ms``, one entry per window
    up to the last one with events, so a list index is the window's number.  A window without events has
    ``events`` 0 and ``p99_ms`` None and counts as neither over nor under a goal."""
    by_window: dict[int, list[float]] = {}
    for at, latency in zip(produced_ms, latency_ms, strict=True):
        by_window.setdefault(max(0, int((at - start_ms) / (1000 * width_s))), []).append(latency)
    last = max(by_window, default=-1)
    return [{"from_s": round(i * width_s, 3), "events": len(v),
             "p99_ms": as_ms(quantile(sorted(v), 0.99)) if v else None}
            for i, v in ((i, by_window.get(i, [])) for i in range(last + 1))]


def as_ms(value: float) -> float | None:
    """Rounded ms; ``None`` for an event never readable (JSON has no infinity), which no goal is met by."""
    return None if math.isinf(value) else round(value, 1)


def back_under(series: Sequence[dict[str, Any]], goal_ms: float) -> float | None:
    """Seconds into the phase from which every window's p99 is under ``goal_ms`` (None: not by its end).

    Windows without events are skipped: nothing was late in them, and nothing was on time either."""
    seen = [w for w in series if w["events"]]
    over = [w["p99_ms"] is None or w["p99_ms"] >= goal_ms for w in seen]
    if not seen or over[-1]:
        return None
    last_over = max((i for i, o in enumerate(over) if o), default=-1)
    return 0.0 if last_over < 0 else float(seen[last_over + 1]["from_s"])


def recovery(produced_ms: Sequence[float], latency_ms: Sequence[float], start_ms: float,
             goal_ms: float) -> dict[str, Any]:
    series = windows(produced_ms, latency_ms, start_ms)
    seen = [w["p99_ms"] for w in series if w["events"]]
    known = [p99 for p99 in seen if p99 is not None]
    worst = None if not known or len(known) < len(seen) else max(known)  # None: a second never readable
    return {"p99_ms_per_second": [w["p99_ms"] for w in series], "events_per_second": [w["events"] for w in series],
            "worst_second_p99_ms": worst, "under_goal_from_s": back_under(series, goal_ms), "goal_ms": goal_ms}
