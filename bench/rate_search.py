"""The rate search of ``bench.freshness``: which rates count as held, and the next rate to try.

Why a module of its own: the search is a pure function of the results so far, kept apart from the
phases that measure them.
"""

from __future__ import annotations

import math
from typing import Any


def held(result: dict[str, Any], hold_p99_ms: float) -> bool:
    p99 = result["p99_ms"]
    return p99 is not None and p99 < hold_p99_ms and result["achieved_rate"] >= 0.95 * result["rate"]


def probe_rates(run: Any, results: list[dict[str, Any]], steps: int, hold_p99_ms: float) -> None:
    """Grow by 1.5x past the last held rate, or bisect between the best held and the first failed."""
    good = max((r["rate"] for r in results if held(r, hold_p99_ms)), default=0.0)
    bad = min((r["rate"] for r in results if not held(r, hold_p99_ms)), default=math.inf)
    for _ in range(steps):
        rate = round(good * 1.5 if math.isinf(bad) else (good + bad) / 2, -1) or 100.0
        if rate in {r["rate"] for r in results}:
            break
        result = run(rate)
        results.append(result)
        if held(result, hold_p99_ms):
            good = rate
        else:
            bad = rate
