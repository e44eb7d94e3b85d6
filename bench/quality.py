"""Model quality bar on MovieLens-100K: train + eval, one JSON object, one PNG.

    python -m bench.quality [--out-dir data/bench] [--seed 0] [--time-budget-s 540] [--quick]

Trains the default ``interest train --movielens`` configuration into a fresh
registry, evaluates the published version through the ONNX worker runtime
under the fixed protocol (last item = test, the one before = validation,
full-catalogue ranking, history masked), and compares with the popularity
baseline and the public SASRec reference (2 blocks, width 50, max len 200,
200 epochs, BCE with one negative: NDCG@10 0.101 / HR@10 0.188 on test).
The bar is NDCG@10 >= 0.111 on test with the epoch chosen on validation only
and training under 10 minutes on a 2-core CPU.

Same conventions as the other benches (``bench/common.py``): progress on stderr,
one JSON object as the last stdout line with the targets and whether each was
met, the machine and the command; the PNG under ``<out-dir>/quality/``.
``--quick`` trains two epochs on the first 150 people of the file (a smoke test
of the pipeline, not of the bar: its numbers are not comparable).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, command, emit, machine, plot_path, ratio, say, target

SASREC_REFERENCE = {"ndcg@10": 0.101, "hr@10": 0.188}
BAR_NDCG = 0.111
BAR_SECONDS = 600.0


def _plot(result: Any, report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    hist = result.history
    left.plot([h.epoch for h in hist], [h.loss for h in hist], color="tab:blue", label="train loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    twin = left.twinx()
    scored = [h for h in hist if h.valid]
    twin.plot(
        [h.epoch for h in scored],
        [h.valid["ndcg@10"] for h in scored],
        color="tab:orange",
        label="valid NDCG@10",
    )
    twin.axvline(result.best_epoch, color="grey", linestyle=":")
    left.set_title(f"training (best epoch {result.best_epoch}, {result.train_seconds:.0f}s)")
    left.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)
    names = ["popularity", "SASRec (BCE) ref", "ours"]
    ndcg = [report["popularity"]["ndcg@10"], SASREC_REFERENCE["ndcg@10"], report["ours"]["ndcg@10"]]
    hr = [report["popularity"]["hr@10"], SASREC_REFERENCE["hr@10"], report["ours"]["hr@10"]]
    xs = range(len(names))
    right.bar([x - 0.2 for x in xs], ndcg, width=0.4, label="NDCG@10")
    right.bar([x + 0.2 for x in xs], hr, width=0.4, label="HR@10")
    right.axhline(BAR_NDCG, color="red", linestyle="--", label=f"bar NDCG@10 {BAR_NDCG}")
    right.set_xticks(list(xs), names)
    right.set_title("MovieLens-100K test target, full ranking")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _subset(source: Path, dest: Path, people: int) -> Path:
    """The header and every line of the first ``people`` users of an ``.inter`` file (quick runs)."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    keep: set[str] = set()
    out = [lines[0]]
    for line in lines[1:]:
        user = line.split("\t", 1)[0]
        if user in keep or len(keep) < people:
            keep.add(user)
            out.append(line)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(out), encoding="utf-8")
    return dest


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(BENCH_DIR))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget-s", type=float, default=None, help="override the default budget")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--ema", type=float, default=None, help="override TrainConfig.ema (experiments)")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 150 people: pipeline smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.time_budget_s = min(args.epochs or 2, 2), min(args.time_budget_s or 60.0, 60.0)

    from model.data import load_events, movielens_path
    from model.evaluate import evaluate_version
    from model.trainer import TrainConfig, train

    out = Path(args.out_dir) / "quality"
    registry = out / f"registry-{int(time.time())}-{os.getpid()}"
    cfg = TrainConfig(seed=args.seed, progress=not args.quick)
    if args.time_budget_s is not None:
        cfg.time_budget_s = args.time_budget_s
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.ema is not None:
        cfg.ema = args.ema
    source = movielens_path() if not args.quick else _subset(movielens_path(), out / "ml-100k-150.inter", 150)
    say(f"training on {source} into {registry}")
    result = train(source, registry, cfg, out_plot=out / "training.png")
    people = load_events(source)
    test = evaluate_version(people, str(registry), result.version, target="test", use_gpu="no")
    valid = evaluate_version(people, str(registry), result.version, target="valid", use_gpu="no")
    report: dict[str, Any] = {
        "dataset": "ml-100k",
        "protocol": "leave-two-out, full ranking, history masked, epoch chosen on validation",
        "version": result.version,
        "ours": {"ndcg@10": test["ndcg@10"], "hr@10": test["hr@10"], "users": test["users"]},
        "ours_valid": {"ndcg@10": valid["ndcg@10"], "hr@10": valid["hr@10"]},
        "popularity": test["popularity"],
        "sasrec_reference": SASREC_REFERENCE,
        "train_seconds": round(result.train_seconds, 1),
        "total_seconds": round(result.total_seconds, 1),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped": result.stopped,
        "cpu_count": os.cpu_count(),
        "bench": "quality",
        "command": command("quality", argv),
        "machine": machine(),
        "quick": args.quick,
        "config": {k: v for k, v in cfg.__dict__.items() if k != "progress"},
        "bar": {"ndcg@10": BAR_NDCG, "train_seconds": BAR_SECONDS},
    }
    report["ratios"] = {"ndcg_vs_popularity": ratio(test["ndcg@10"], test["popularity"]["ndcg@10"]),
                        "ndcg_vs_sasrec_reference": ratio(test["ndcg@10"], SASREC_REFERENCE["ndcg@10"])}
    report["targets"] = {"ndcg@10": target(test["ndcg@10"], BAR_NDCG),
                         "train_seconds": target(result.train_seconds, BAR_SECONDS, higher_is_better=False)}
    report["passed"] = report["all_targets_met"] = all(t["met"] for t in report["targets"].values())
    path = plot_path(out, "quality")
    _plot(result, report, path)
    report["plot"] = str(path)
    return emit(report)


if __name__ == "__main__":
    main(sys.argv[1:])
