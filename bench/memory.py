"""Peak resident memory of one ``interest worker`` process through a catch-up.

    python -m bench.memory [--events 200000] [--users 20000] [--quick]

Why a catch-up: it is when a worker holds the most at once (full micro-batches, the encoder's
largest inputs, every touched person's sequence in the per-partition cache, which only grows
while the worker owns the partitions).  RSS is sampled from /proc every poll; the peak is the
kernel's high-water mark (VmHWM), so a spike between samples is not missed.  The population is
larger than in the throughput bench on purpose: the cache grows with people, not events.
Target: peak RSS < 600 MB on CPU.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
    add_broker_option,
    bench_settings,
    broker_name,
    command,
    embedded_broker,
    emit,
    ensure_model,
    knobs,
    machine,
    out_dir,
    plot_path,
    produce,
    quick_overrides,
    say,
    synthetic,
    target,
)
from bench.runs import Offsets, Proc, wait_committed
from streams.faust_tuning import raw_group

TARGET_MB = 600.0


Sample = tuple[float, float, float, float]  # seconds, RSS MB, raw share committed, person-topic share committed


def _plot(samples: list[Sample], report: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ts = [s[0] for s in samples]
    ax.plot(ts, [s[1] for s in samples], label="RSS (MB)")
    ax.axhline(report["peak_rss_mb"], color="grey", linestyle=":", label=f"peak (VmHWM) {report['peak_rss_mb']} MB")
    ax.axhline(TARGET_MB, color="red", linestyle="--", label=f"target {TARGET_MB:g} MB")
    ax.set_xlabel("seconds since process start")
    ax.set_ylabel("MB")
    twin = ax.twinx()
    twin.plot(ts, [s[2] for s in samples], color="tab:green", alpha=0.6, label="raw messages committed (ingest)")
    twin.plot(ts, [s[3] for s in samples], color="tab:purple", alpha=0.6, label="person envelopes committed (update)")
    twin.legend(loc="lower right", fontsize=8)
    twin.set_ylabel("share committed")
    ax.set_title(f"worker memory, catch-up of {report['events']} events from {report['users']} people")
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out-dir", default=str(BENCH_DIR))
    parser.add_argument("--registry", default=None, help="bench model registry (default OUT_DIR/registry)")
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    add_broker_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.users, args.items = min(args.events, 2_000), min(args.users, 300), min(args.items, 600)
    directory = out_dir(args.out_dir, "memory")
    registry = args.registry or str(Path(args.out_dir) / "registry")
    report: dict[str, Any] = {"bench": "memory", "command": command("memory", argv), "machine": machine(),
                              "events": args.events, "users": args.users, "quick": args.quick,
                              "model_version": ensure_model(registry, args.quick)}
    samples: list[Sample] = []
    with embedded_broker(directory, args.broker) as broker:
        report["broker"] = broker_name(broker)
        settings = bench_settings(broker.url, directory, f"m{int(time.time())}", registry,
                                  **quick_overrides(args))
        report["settings"] = knobs(settings)
        produced = produce(settings, synthetic(args.events, args.users, args.items, args.seed))
        total = produced["messages"]
        say(f"produced {produced['messages']} messages; starting `interest worker`")
        proc = Proc.worker(settings, directory / "worker.log")
        offsets = Offsets(settings, produced["end_offsets"])
        try:

            def sample(t: float, committed: int) -> None:
                done, seen = offsets.person_progress(settings.app_id)
                samples.append((round(t, 2), proc.rss_mb()[0], committed / total, done / seen if seen else 0.0))

            seconds = wait_committed(offsets, settings.app_id, proc, args.timeout, on_sample=sample,
                                     raw_group=raw_group(settings))
            for _ in range(10):  # settle: the last batch's buffers, the commit
                time.sleep(0.2)
                samples.append((round(time.monotonic() - proc.started, 2), proc.rss_mb()[0], 1.0, 1.0))
            rss, peak = proc.rss_mb()
        finally:
            offsets.close()
            proc.stop()
    with sqlite3.connect(settings.sqlite_path()) as conn:
        people = conn.execute("SELECT count(*) FROM sequences").fetchone()[0]
    ready = next((s[1] for s in samples if s[2] > 0), None)
    report.update({"seconds": round(seconds, 2), "peak_rss_mb": round(peak, 1), "rss_end_mb": round(rss, 1),
                   "rss_first_commit_mb": None if ready is None else round(ready, 1), "people_cached": people,
                   "targets": {"peak_rss_mb": target(peak, TARGET_MB, higher_is_better=False)}})
    report["all_targets_met"] = report["targets"]["peak_rss_mb"]["met"]
    say(f"peak RSS {report['peak_rss_mb']} MB over {people} people")
    path = plot_path(directory, "memory")
    _plot(samples, report, path)
    report["plot"] = str(path)
    return emit(report)


if __name__ == "__main__":
    main(sys.argv[1:])
