"""What a vector per platform buys, on synthetic traffic: one JSON line, one PNG.

    python -m bench.platforms [--users 1500] [--events 60000] [--platforms web,app,mini,tv]
                              [--tastes 0.8] [--catalogue 0.5] [--epochs 8] [--platform-epochs 4]
                              [--threads N] [--quick] [--out-dir data/bench]

The traffic is SYNTHETIC (``interest.synthetic.SyntheticTraffic``): people act on one to three
platforms; with ``--tastes`` (``platform_tastes``) a person's preferred item clusters on a
platform are drawn anew for that platform with that probability, and with ``--catalogue``
(``platform_catalogue``) that share of a platform's events comes from the platform's own
catalogue (``<platform>-i<n>``).  Both are 0 in the default traffic of the other benches.

The method measured is the source documents' two stages: pre-train one shared model on every
platform's events, then fine-tune it per platform (``interest train --platform P --from V``:
targets are P's events, the whole cross-platform sequence stays the input).  For each platform,
on that platform's held-out events (per person, the last event on P is the test target, every
earlier event on any platform the input; the platform's catalogue is ranked, earlier items
excluded), NDCG@10 of the platform version against the shared version it was fine-tuned from,
with the popularity baseline of the same split, all in the same run and through the exported
ONNX graphs a worker serves.  A second same-run baseline isolates the platform from the extra
training: the shared version fine-tuned for the same number of epochs on every platform's targets
(``shared_more_epochs``); a platform version must beat both.  Training is bounded by epochs, not
time (the budgets are generous), so a run on a busy machine trains the same models.

Serving cost: the worker encodes every changed person once per served version (one runtime
call per version per batch, ``ProfileUpdater._vectors``: vector plus interests); people/s at
batch 256 with the shared version alone against the shared version plus every platform's,
measured back to back on the same stored-like sequences.

Same conventions as the other benches (``bench/common.py``).  ``--quick`` is a smoke run (200
people, one platform, one epoch each): its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, command, emit, machine, plot_path, ratio, say, target

DAY_MS = 86_400_000


def _traffic_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from interest.synthetic import SyntheticTraffic, canonical_rows
    from schemas.adapters import load_adapters

    adapters = {p: a for p, a in load_adapters().items() if p in args.platform_list}
    traffic = SyntheticTraffic(adapters, users=args.users, items=args.items, clusters=args.clusters,
                               anonymous_share=0.0, seed=args.seed, platform_tastes=args.tastes,
                               platform_catalogue=args.catalogue)
    start = int(time.time() * 1000) - 30 * DAY_MS
    step = 30 * DAY_MS / max(1, args.events)
    return canonical_rows(traffic.events(args.events, start, step_ms=step), adapters)


def _config(args: argparse.Namespace, epochs: int, budget: float) -> Any:
    from model.trainer import TrainConfig

    return TrainConfig(epochs=epochs, time_budget_s=budget, seed=args.seed, threads=args.threads,
                       progress=not args.quiet)


def serving_rates(registry: str, versions: list[str], sequences: list[list[Any]], seconds: float,
                  interests: int = 3) -> dict[str, Any]:
    """People/s of the worker's encode step serving ``versions[:1]`` and then all of ``versions``."""
    import numpy as np

    from model.runtime import EncoderRuntime
    from schemas.settings import Settings
    from streams.updater import ProfileUpdater

    runtimes = [EncoderRuntime.load(registry, v, use_gpu="no") for v in versions]
    settings = Settings.model_validate({"interests_max": interests})
    updater = ProfileUpdater(None, lambda: runtimes[0], None, settings)  # type: ignore[arg-type]
    batch = sequences[:256]

    def once(served: list[Any]) -> float:
        t0 = time.perf_counter()
        for enc in served:
            updater._vectors(enc, batch)
        return time.perf_counter() - t0

    once(runtimes)  # warm-up
    # Interleaved, median of each: on a shared machine load drifts, and measuring one setting after the
    # other would put that drift into the ratio.
    one: list[float] = []
    every: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(one) < 3:
        one.append(once(runtimes[:1]))
        every.append(once(runtimes))
    return {"people_per_s_shared_only": round(len(batch) / float(np.median(one)), 1),
            "people_per_s_all_versions": round(len(batch) / float(np.median(every)), 1),
            "versions": len(runtimes), "batch": len(batch), "interests_max": interests, "rounds": len(one)}


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["platforms"])
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    width = 0.2
    for k, (key, label) in enumerate((("popularity", "popularity"), ("shared", "shared vector"),
                                       ("shared_more_epochs", "shared + same extra epochs"),
                                       ("platform", "platform vector"))):
        values = [report["platforms"][n][key]["ndcg@10"] for n in names]
        ax.bar([i + (k - 1.5) * width for i in range(len(names))], values, width, label=label)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test NDCG@10 on the platform's held-out events")
    ax.set_title("Pre-train on every platform, fine-tune per platform (synthetic traffic)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--platforms", default="web,app,mini,tv", help="comma-separated; each gets a version")
    parser.add_argument("--tastes", type=float, default=0.8, help="platform_tastes of the generator")
    parser.add_argument("--catalogue", type=float, default=0.5, help="platform_catalogue of the generator")
    parser.add_argument("--epochs", type=int, default=8, help="shared pre-training epochs")
    parser.add_argument("--platform-epochs", type=int, default=4, help="fine-tuning epochs per platform")
    parser.add_argument("--time-budget-s", type=float, default=1800.0, help="shared training budget")
    parser.add_argument("--platform-budget-s", type=float, default=900.0, help="budget per fine-tune")
    parser.add_argument("--serve-seconds", type=float, default=3.0, help="timing per serving measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(BENCH_DIR))
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one platform")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.items, args.events, args.platforms = 200, 300, 6000, "web,tv"
        args.epochs, args.platform_epochs, args.serve_seconds = 1, 1, 0.2
        args.time_budget_s, args.platform_budget_s = 60.0, 60.0
    args.platform_list = [p.strip() for p in args.platforms.split(",") if p.strip()]
    measured = args.platform_list[-1:] if args.quick else args.platform_list

    from model.data import load_events
    from model.evaluate import evaluate_version
    from model.trainer import train

    out = Path(args.out_dir) / "platforms"
    out.mkdir(parents=True, exist_ok=True)
    rows = _traffic_rows(args)
    people = load_events(rows, "ms")
    say(f"synthetic traffic: {len(rows)} events, {len(people)} people, platforms {args.platform_list}")
    registry = tempfile.mkdtemp(prefix="registry-", dir=out)
    started = time.perf_counter()
    shared = train(rows, registry, _config(args, args.epochs, args.time_budget_s), time_unit="ms", force=True)
    shared_s = time.perf_counter() - started
    say(f"shared {shared.version}: {shared_s:.0f}s")
    report: dict[str, Any] = {"bench": "platforms", "traffic": "synthetic", "shared_version": shared.version,
                              "shared_train_seconds": round(shared_s, 1), "platforms": {}, "registry": registry}
    versions = [shared.version]
    keep = ("ndcg@10", "hr@10", "users")
    t0 = time.perf_counter()
    more = train(rows, registry, _config(args, args.platform_epochs, args.platform_budget_s),
                 from_version=shared.version, time_unit="ms", force=True, promote=False)
    report["shared_more_epochs"] = {"version": more.version, "seconds": round(time.perf_counter() - t0, 1)}
    for platform in measured:
        t0 = time.perf_counter()
        tuned = train(rows, registry, _config(args, args.platform_epochs, args.platform_budget_s),
                      from_version=shared.version, platform=platform, time_unit="ms", force=True)
        seconds = time.perf_counter() - t0
        versions.append(tuned.version)
        ours = evaluate_version(people, registry, tuned.version, target="test", use_gpu="no", platform=platform)
        base = evaluate_version(people, registry, shared.version, target="test", use_gpu="no", platform=platform)
        longer = evaluate_version(people, registry, more.version, target="test", use_gpu="no", platform=platform)
        say(f"{platform}: platform {ours['ndcg@10']:.4f} vs shared {base['ndcg@10']:.4f}, shared + "
            f"{args.platform_epochs} epochs {longer['ndcg@10']:.4f} (popularity {base['popularity']['ndcg@10']:.4f}), "
            f"{ours['items']} items, {seconds:.0f}s")
        report["platforms"][platform] = {
            "version": tuned.version, "items": ours["items"], "fine_tune_seconds": round(seconds, 1),
            "platform": {k: ours[k] for k in keep}, "shared": {k: base[k] for k in keep},
            "shared_more_epochs": {k: longer[k] for k in keep}, "popularity": base["popularity"],
            "ratio_platform_vs_shared": ratio(ours["ndcg@10"], base["ndcg@10"]),
            "ratio_platform_vs_shared_more_epochs": ratio(ours["ndcg@10"], longer["ndcg@10"]),
        }
    sequences = [seq[-50:] for seq in people.values() if seq][:256]
    serving = serving_rates(registry, versions, sequences, args.serve_seconds)
    serving["slowdown"] = ratio(serving["people_per_s_shared_only"], serving["people_per_s_all_versions"])
    report["serving"] = serving
    say(f"serving: {serving}")
    targets = {f"{p}_platform_beats_shared": target(min(r["ratio_platform_vs_shared"] or 0.0,
                                                        r["ratio_platform_vs_shared_more_epochs"] or 0.0), 1.0)
               for p, r in report["platforms"].items()}
    # Serving P+1 versions should cost no more than P+1 times one (one runtime call per version, no
    # per-person overhead); 10 % slack for timing noise.
    targets["serving_slowdown_at_most_linear"] = target(serving["slowdown"], 1.1 * len(versions) + 1e-9,
                                                        higher_is_better=False)
    report.update(
        generator={"users": args.users, "items": args.items, "clusters": args.clusters, "events": args.events,
                   "platforms": args.platform_list, "platform_tastes": args.tastes,
                   "platform_catalogue": args.catalogue, "seed": args.seed},
        protocol="per platform: last event on the platform = test target, every earlier event (any platform) "
                 "the input; the platform's catalogue ranked, earlier items excluded; exported ONNX graphs",
        targets=targets, all_targets_met=all(t["met"] for t in targets.values()), command=command("platforms", argv),
        machine=machine(), quick=args.quick, cpu_count=os.cpu_count(),
    )
    path = plot_path(out, "platforms")
    _plot(report, path)
    report["plot"] = str(path)
    return emit(report)


if __name__ == "__main__":
    main(sys.argv[1:])
