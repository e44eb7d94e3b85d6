"""Freshness during a model hot-swap against steady state, in the same run.

    python -m bench.swap [--rate 500] [--seconds 20] [--quick]

A real ``interest worker`` serves the bench model at a fixed event rate.  Phase ``steady``
measures produced -> readable latency (same method as ``bench.freshness``); phase ``swap``
runs the same load and, a second in, publishes and promotes a new version and announces it on
``interest.models`` (exactly what ``interest models promote`` does).  The worker verifies,
loads and warms the new version in a thread and swaps between two batches.  Target (model
lifecycle issue): p99 during the swap at most 2x the steady p99.  The new version is a
re-import of the bench model's files: verify + load + warm-up cost the same as for new weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
import urllib.request
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
    ratio,
    say,
    target,
)
from bench.freshness import Tracker, _wait_ready, run_rate
from bench.runs import Proc

MAX_SWAP_P99_RATIO = 2.0


def _serving(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
            return str(json.loads(resp.read())["model_version"])
    except (OSError, ValueError, KeyError):
        return None


def _plot(report: dict[str, Any], latencies: dict[str, list[float]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for phase in ("steady", "swap"):
        values = sorted(latencies.get(phase, []))
        if values:
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.plot(values, ys, label=f"{phase} (p99 {report[phase]['p99_ms']} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("event produced -> profile readable (ms)")
    ax.set_ylabel("share of events")
    ax.set_title(f"freshness at {report['rate']:g} events/s: steady vs. during a model swap "
                 f"(swap took {report['swap_seconds']} s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="events/s in both phases")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--poll-ms", type=float, default=20.0)
    parser.add_argument("--out-dir", default=str(BENCH_DIR))
    parser.add_argument("--registry", default=None, help="bench model registry (default OUT_DIR/registry)")
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    add_broker_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.rate, args.seconds, args.users, args.items = min(args.rate, 200.0), min(args.seconds, 4.0), 300, 600
    directory = out_dir(args.out_dir, "swap")
    source = args.registry or str(Path(args.out_dir) / "registry")
    report: dict[str, Any] = {"bench": "swap", "command": command("swap", argv), "machine": machine(),
                              "rate": args.rate, "seconds_per_phase": args.seconds, "quick": args.quick}
    version = ensure_model(source, args.quick)
    registry = directory / "registry"  # a private copy: promoting here must not touch the shared bench model
    shutil.rmtree(registry, ignore_errors=True)
    shutil.copytree(source, registry)
    from interest.synthetic import SyntheticTraffic
    from model.registry import Registry
    from schemas.adapters import load_adapters
    from streams.kafka_config import ensure_topics, worker_topics
    from streams.model_watch import announce

    Registry(registry).promote(version)
    traffic = SyntheticTraffic(load_adapters(), users=args.users, items=args.items, seed=7, anonymous_share=0.0)
    with embedded_broker(directory, args.broker) as broker:
        report["broker"] = broker_name(broker)
        settings = bench_settings(broker.url, directory, f"s{int(time.time())}", str(registry),
                                  model_check_interval_s=3600.0)
        report["settings"] = knobs(settings)
        ensure_topics(settings, worker_topics(settings))
        proc = Proc.worker(settings, directory / "worker.log")
        tracker = Tracker(settings.sqlite_path(), args.poll_ms / 1000)
        swap: dict[str, Any] = {}

        def promote_soon() -> None:
            time.sleep(1.0)
            new = Registry(registry).import_version(Registry(registry), version, promote=False, force=True)
            Registry(registry).promote(new)
            started = time.monotonic()
            announce(settings, new, "promote")
            while _serving(settings.web_port) != new and time.monotonic() - started < 60:
                time.sleep(0.02)
            swap.update(version=new, seconds=round(time.monotonic() - started, 3),
                        served=_serving(settings.web_port) == new)

        try:
            _wait_ready(proc, settings.web_port)
            tracker.thread.start()
            run_rate(settings, tracker, traffic, min(args.rate, 200.0), 2.0, 60.0, phase="warm-up")
            report["steady"] = run_rate(settings, tracker, traffic, args.rate, args.seconds, 60.0, phase="steady")
            swapper = threading.Thread(target=promote_soon)
            swapper.start()
            report["swap"] = run_rate(settings, tracker, traffic, args.rate, args.seconds, 60.0, phase="swap")
            swapper.join()
        finally:
            tracker.stop.set()
            proc.stop()
    report["new_version"] = swap.get("version")
    report["swap_seconds"] = swap.get("seconds")
    report["swapped"] = bool(swap.get("served"))
    report["p99_ratio_swap_vs_steady"] = ratio(report["swap"]["p99_ms"], report["steady"]["p99_ms"])
    report["targets"] = {"swap_p99_within_2x_steady": target(report["p99_ratio_swap_vs_steady"], MAX_SWAP_P99_RATIO,
                                                             higher_is_better=False)}
    report["targets"]["swap_p99_within_2x_steady"]["met"] = bool(
        report["swapped"] and report["p99_ratio_swap_vs_steady"] is not None
        and report["p99_ratio_swap_vs_steady"] <= MAX_SWAP_P99_RATIO)
    report["all_targets_met"] = report["targets"]["swap_p99_within_2x_steady"]["met"]
    say(f"steady p99 {report['steady']['p99_ms']} ms, swap p99 {report['swap']['p99_ms']} ms, "
        f"swap took {report['swap_seconds']} s")
    path = plot_path(directory, "swap")
    _plot(report, tracker.latencies, path)
    report["plot"] = str(path)
    return emit(report)


if __name__ == "__main__":
    main(sys.argv[1:])
