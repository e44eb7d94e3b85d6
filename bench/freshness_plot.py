"""The freshness bench's picture: a module of its own so the bench's phases stay apart from drawing them."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_freshness(report: dict[str, Any], latencies: dict[str, list[float]], path: Path, goal_rate: float,
                   goal_p99_ms: float) -> None:
    """Left: the share of events readable within x ms, per phase.  Right: each phase's p99 second by
    second, the phases end to end, so an overload's tail and what follows it read at a glance."""
    import matplotlib.pyplot as plt

    phases = [(f"{r['rate']:g}", f"{r['rate']:g}/s", r) for r in report["rates"]]
    if "after_overload" in report:
        phases.append(("after-overload", f"{goal_rate:g}/s after the overload", report["after_overload"]))
    fig, (cdf, timeline) = plt.subplots(1, 2, figsize=(13, 4.5), dpi=100, width_ratios=[1, 1.3])
    offset = 0
    for key, label, result in phases:
        values = sorted(latencies.get(key, []))
        if values:
            ys = [(i + 1) / (len(values) + result["unreadable"]) for i in range(len(values))]
            line, = cdf.plot(values, ys, label=f"{label} (p99 {result['p99_ms']} ms)")
            per_second = result.get("recovery", {}).get("p99_ms_per_second", [])
            xs = [offset + i for i, v in enumerate(per_second) if v is not None]
            timeline.plot(xs, [v for v in per_second if v is not None], marker=".", color=line.get_color(),
                          label=label)
            offset += len(per_second) + 1
    goal = f"goal p99 {goal_p99_ms:g} ms @ {goal_rate}/s"
    cdf.axvline(goal_p99_ms, color="red", linestyle="--", label=goal)
    timeline.axhline(goal_p99_ms, color="red", linestyle="--", label=goal)
    cdf.set_xscale("log")
    cdf.set_xlabel("event produced -> profile readable (ms)")
    cdf.set_ylabel("share of events")
    timeline.set_yscale("log")
    timeline.set_xlabel("second of the run (phases end to end)")
    timeline.set_ylabel("p99 of the events produced in that second (ms)")
    workers = len(report.get("person_partitions_by_worker", [])) or 1
    fig.suptitle(f"freshness, {workers} worker{'s' if workers > 1 else ''}, {report['machine']['cores']} cores, "
                 "SQLite, embedded broker")
    cdf.legend(fontsize=8, loc="lower right")
    timeline.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
