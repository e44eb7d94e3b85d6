"""Recommendation quality of what the workers serve, on any events file: one JSON line, one PNG.

    python -m bench.quality [--dataset ml-100k|beauty | --events FILE] [--config NAME]
                            [--registry DIR --version V] [--threads 1] [--quick] [--out-dir data/bench]

Trains the named configuration (``--config``; by default the dataset's own:
``beauty`` for Amazon-Beauty, ``default`` otherwise) into a fresh registry, or
with ``--registry``/``--version`` evaluates a version already published, then
measures it under the protocol of ``../shared/datasets/README.md``: per person
the last item is the test target and the one before it the validation target,
everything earlier trains; the whole catalogue is ranked and the person's
earlier items (the validation item too, for the test target) are excluded;
NDCG@10 and HR@10 are averaged over all people.  Why each measurement:

* the exported ONNX graph is evaluated through ``EncoderRuntime`` exactly as
  a worker runs it, in fp32 on CPU **and** with the fp16 graph that GPU
  workers load by default (run on CPU here: its numbers are the ranking the
  GPU workers serve, up to kernel rounding), so a published number holds for
  every worker;
* the popularity baseline comes from the same split in the same run;
* people/s at batch 256 through the served runtime (a better model must not
  fall below 5 000 people/s on this CPU);
* the epoch is chosen on validation only: the test target is looked at once,
  here, after training.

Amazon-Beauty is read by path from ``../shared/datasets/amazon-beauty.csv``
(never copied into the repository).  Same conventions as the other benches
(``bench/common.py``): progress on stderr, one JSON object as the last stdout
line with the targets and their ``met`` flags; the PNG (validation curves and
the final numbers beside the published ones) under ``<out-dir>/quality/``.
``--quick`` trains two epochs on the first 150 people (a pipeline smoke test:
its numbers are not comparable to the bars).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, command, emit, machine, plot_path, ratio, say, target

ROOT = Path(__file__).resolve().parents[1]
BEAUTY = ROOT.parent / "shared" / "datasets" / "amazon-beauty.csv"
# Published full-ranking test numbers on the same splits: (NDCG@10, HR@10).
PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "beauty": {"ICLRec": (0.0403, 0.0744), "SASRec": (0.0432, 0.0848), "eSASRec": (0.0523, 0.0928)},
    "ml-100k": {"SASRec (BCE)": (0.101, 0.188)},
}
BARS: dict[str, dict[str, float]] = {
    "beauty": {"ndcg@10": 0.055, "train_seconds": 1800.0},
    "ml-100k": {"ndcg@10": 0.111, "train_seconds": 600.0},
}
DATASET_CONFIG = {"beauty": "beauty", "ml-100k": "default"}
MIN_PEOPLE_PER_S = 5000.0
FP16_MAX_DROP = 0.002  # the fp16 graph may rank at most this much worse (NDCG@10) than fp32


def _source(args: argparse.Namespace) -> tuple[str, Path]:
    from model.data import movielens_path

    if args.events:
        return Path(args.events).stem, Path(args.events)
    if args.dataset == "beauty":
        return "beauty", BEAUTY
    return "ml-100k", movielens_path()


def _rows(people: dict[str, Any]) -> list[dict[str, Any]]:
    """Event dicts (``ts_ms``) of in-memory sequences, for training on a subset."""
    return [
        {"user_id": p, "item_id": e.item_id, "ts_ms": e.ts_ms, "action": e.action, "platform": e.platform,
         "weight": e.weight, "event_id": e.event_id}
        for p, seq in people.items() for e in seq
    ]


def _plot(report: dict[str, Any], history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=100)
    epochs = [h["epoch"] for h in history if "ndcg@10" in h]
    left.plot(epochs, [h["ndcg@10"] for h in history if "ndcg@10" in h], color="tab:orange",
              label="valid NDCG@10")
    left.plot(epochs, [h["hr@10"] for h in history if "hr@10" in h], color="tab:green", linestyle="--",
              label="valid HR@10")
    left.axvline(report["best_epoch"], color="grey", linestyle=":", label=f"chosen epoch {report['best_epoch']}")
    left.set_xlabel("epoch")
    left.set_ylabel("validation metric (PyTorch model)")
    left.set_title(f"{report['dataset']}: validation curves ({report['config_name']}, "
                   f"{report['train_seconds']:.0f}s training)")
    left.legend(fontsize=8)
    bars = [("popularity", report["popularity"]["ndcg@10"], report["popularity"]["hr@10"])]
    bars += [(name, n, h) for name, (n, h) in PUBLISHED.get(report["dataset"], {}).items()]
    valid_name = "ours valid (selection run)" if report.get("refit_epochs") else "ours valid fp32"
    bars += [(valid_name, report["valid_fp32"]["ndcg@10"], report["valid_fp32"]["hr@10"]),
             ("ours test fp32", report["test_fp32"]["ndcg@10"], report["test_fp32"]["hr@10"]),
             ("ours test fp16", report["test_fp16"]["ndcg@10"], report["test_fp16"]["hr@10"])]
    xs = list(range(len(bars)))
    for offset, col, name in ((-0.2, 1, "NDCG@10"), (0.2, 2, "HR@10")):
        drawn = right.bar([x + offset for x in xs], [b[col] for b in bars], width=0.4, label=name)
        right.bar_label(drawn, fmt="%.4f", fontsize=6, rotation=90, padding=2)
    bar = BARS.get(report["dataset"], {}).get("ndcg@10")
    if bar:
        right.axhline(bar, color="red", linestyle="--", linewidth=1, label=f"goal NDCG@10 {bar}")
    right.set_xticks(xs, [b[0] for b in bars], rotation=25, ha="right", fontsize=8)
    right.set_title("test target, full ranking (published numbers: same split)")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _train(args: argparse.Namespace, source: Path, people: dict[str, Any], out: Path) -> tuple[str, str]:
    """Train ``--config`` on the file (or, with ``--quick``, on its first people) into a fresh registry."""
    from model.trainer import named_config, train

    registry = out / f"registry-{int(time.time())}-{os.getpid()}"
    cfg = named_config(args.config, seed=args.seed, threads=args.threads, epochs=args.epochs,
                       time_budget_s=args.time_budget_s, progress=not args.quick)
    say(f"training config {args.config!r} on {len(people)} people into {registry}")
    events: Path | list[dict[str, Any]] = _rows(people) if args.quick else source
    result = train(events, registry, cfg, time_unit="ms" if args.quick else None)
    return str(registry), result.version


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASET_CONFIG), default="ml-100k")
    parser.add_argument("--events", default=None, help="any events file (CSV / JSON lines / .inter)")
    parser.add_argument("--config", default=None, help="named training configuration (default: the dataset's)")
    parser.add_argument("--registry", default=None, help="evaluate a published version instead of training")
    parser.add_argument("--version", default=None, help="with --registry (default: the promoted one)")
    parser.add_argument("--out-dir", default=str(BENCH_DIR))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training")
    parser.add_argument("--time-budget-s", type=float, default=None, help="override the config's budget")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="2 epochs, 150 people: pipeline smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.time_budget_s = min(args.epochs or 2, 2), min(args.time_budget_s or 60.0, 60.0)

    from bench.encoder import runtime_rate
    from model.data import load_events
    from model.evaluate import evaluate_version
    from model.registry import Registry

    name, source = _source(args)
    args.config = args.config or DATASET_CONFIG.get(name, "default")
    out = Path(args.out_dir) / "quality"
    people = load_events(source)
    if args.quick:
        people = {p: people[p] for p in list(people)[:150]}
    if args.registry:
        registry, version = args.registry, Registry(args.registry).resolve(args.version)
    else:
        registry, version = _train(args, source, people, out)
    training = Registry(registry).manifest(version).get("training", {})
    say(f"evaluating {version} through the ONNX runtime (fp32 and fp16 graphs, CPU)")
    test = evaluate_version(people, registry, version, target="test", use_gpu="no", precision="fp32")
    test16 = evaluate_version(people, registry, version, target="test", use_gpu="no", precision="fp16")
    valid = evaluate_version(people, registry, version, target="valid", use_gpu="no", precision="fp32")
    serve_threads = max(1, min(4, os.cpu_count() or 1))  # the worker runtime's default
    rate = runtime_rate(registry, version, serve_threads, 0.2 if args.quick else 2.0)
    keep = ("ndcg@10", "hr@10", "users")
    bar = BARS.get(name) if not args.quick else None
    train_seconds = float(training.get("seconds", 0.0))
    report: dict[str, Any] = {
        "bench": "quality",
        "dataset": name,
        "source": str(source),
        "protocol": "leave-one-out (last = test, one before = validation), full catalogue ranked, "
                    "earlier items excluded, epoch chosen on validation only",
        "version": version,
        "registry": registry,
        "config_name": args.config,
        "config": training.get("config", {}),
        "items": test["items"],
        "test_fp32": {k: test[k] for k in keep},
        "ours": {k: test[k] for k in keep},  # = test_fp32 (the name earlier reports used)
        "test_fp16": {k: test16[k] for k in keep},
        "valid_fp32": {k: valid[k] for k in keep},
        "refit_epochs": training.get("refit_epochs", 0),
        "popularity": test["popularity"],
        "popularity_valid": valid["popularity"],
        "published": {k: {"ndcg@10": n, "hr@10": h} for k, (n, h) in PUBLISHED.get(name, {}).items()},
        "people_per_s_batch256": rate,
        "serve_threads": serve_threads,
        "train_seconds": train_seconds,
        "best_epoch": training.get("best_epoch"),
        "epochs_run": training.get("epochs_run"),
        "stopped": training.get("stopped"),
        "cpu_count": os.cpu_count(),
        "command": command("quality", argv),
        "machine": machine(),
        "quick": args.quick,
    }
    if report["refit_epochs"]:
        # Refit weights trained on the validation targets: the honest validation is the selection run's.
        selection = Registry(registry).manifest(version).get("metrics", {}).get("valid", {})
        report["valid_seen_in_training_fp32"] = report["valid_fp32"]
        report["valid_fp32"] = {k: selection.get(k) for k in keep}
        report["valid_from"] = "selection run (PyTorch; the refit weights trained on these targets)"
    best_pub = max((n for n, _ in PUBLISHED.get(name, {}).values()), default=None)
    report["ratios"] = {"ndcg_vs_popularity": ratio(test["ndcg@10"], test["popularity"]["ndcg@10"]),
                        "ndcg_vs_best_published": ratio(test["ndcg@10"], best_pub),
                        "fp16_vs_fp32": ratio(test16["ndcg@10"], test["ndcg@10"])}
    targets = {"people_per_s_batch256": target(rate, MIN_PEOPLE_PER_S),
               "fp16_ndcg_drop": target(test["ndcg@10"] - test16["ndcg@10"], FP16_MAX_DROP,
                                        higher_is_better=False)}
    if bar:
        targets["ndcg@10"] = target(test["ndcg@10"], bar["ndcg@10"])
        targets["ndcg@10_fp16"] = target(test16["ndcg@10"], bar["ndcg@10"])
        targets["train_seconds"] = target(train_seconds, bar["train_seconds"], higher_is_better=False)
    report["targets"] = targets
    report["passed"] = report["all_targets_met"] = all(t["met"] for t in targets.values())
    path = plot_path(out, f"quality-{name}")
    _plot(report, list(training.get("history", [])), path)
    report["plot"] = str(path)
    return emit(report)


if __name__ == "__main__":
    main(sys.argv[1:])
