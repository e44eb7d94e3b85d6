"""What several interests per person buy, on the public benchmark protocol: one JSON line, one PNG.

    python -m bench.interests [--dataset ml-100k|beauty] [--registry DIR --version V] [--k 3]
                              [--threads 1] [--out-dir data/bench]

Same split as ``bench.quality`` (per person the last item is the test target,
the one before the validation target; the whole catalogue ranked, earlier
items excluded).  Without ``--registry`` it trains the dataset's named
configuration first.  For every person, from the served ONNX graph
(``EncoderRuntime``, fp32, CPU) and the interests the workers compute
(``model.interests.person_interests`` with the worker's defaults):

* **recall@50 / HR@10 / NDCG@10** of three lists of the same length: the
  single vector's top items; each interest's own nearest items mixed by
  weight (PinnerSage-style: the interest vectors alone); and what
  ``interest recommend --diverse`` serves (``model.interests.diverse_ranking``:
  the single vector's ranking with slots shared among the interests);
* **coverage**: how many of the person's distinct interests each top 10
  touches (an item belongs to the interest whose vector scores it highest),
  over people with two interests or more;
* **cost**: people/s of the worker's encode step at batch 256 (50-event
  windows) without and with interests, in the same run; the goal is at most
  30 % slower.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BENCH_DIR, command, emit, machine, plot_path, ratio, say, target

MAX_SLOWDOWN = 0.30  # encode with interests may take at most 30 % longer per person


def _top(scores: np.ndarray, banned: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best scores, best first, ``banned`` excluded."""
    s = scores.astype(np.float64, copy=True)
    s[banned] = -np.inf
    part = np.argpartition(-s, k)[:k]
    return part[np.argsort(-s[part], kind="stable")]


def _hits(lists: list[list[int]], targets: np.ndarray, k: int) -> tuple[float, float]:
    """(recall@k, NDCG@k) of one ranked list per person against its single target."""
    recall, ndcg = 0.0, 0.0
    for lst, t in zip(lists, targets, strict=True):
        top = lst[:k]
        if int(t) in top:
            recall += 1.0
            ndcg += 1.0 / float(np.log2(top.index(int(t)) + 2.0))
    return recall / max(len(lists), 1), ndcg / max(len(lists), 1)


def measure_lists(runtime: Any, data: Any, catalogue: list[str], k_interests: int,
                  depth: int = 50) -> dict[str, Any]:
    """Single vector vs the interests' own vectors vs ``--diverse``, and how many interests each top 10 covers."""
    from model.interests import diverse_ranking, mix_ranked, person_interests

    item_matrix = runtime.item_vectors(catalogue)
    vectors = runtime.encode(data.histories)
    interests = person_interests(runtime.item_vectors, data.histories, k=k_interests,
                                 window=int(runtime.spec.max_len))
    lists: dict[str, list[list[int]]] = {"single": [], "centres": [], "diverse": []}
    cover: dict[str, list[int]] = {"single": [], "centres": [], "diverse": []}
    several: list[int] = []
    for u, kept in enumerate(interests):
        banned = data.history_idx[u][data.history_idx[u] != data.target_idx[u]]
        own = [int(i) for i in _top(item_matrix @ vectors[u], banned, depth)]
        lists["single"].append(own)
        if not kept:
            lists["centres"].append(own)
            lists["diverse"].append(own)
            continue
        centres = np.stack([np.asarray(i.vector, dtype=np.float32) for i in kept])
        per = [[(int(i), 0.0) for i in _top(item_matrix @ c, banned, depth)] for c in centres]
        lists["centres"].append([i for i, _, _ in mix_ranked(per, [i.weight for i in kept], depth)])
        lists["diverse"].append([i for i, _, _ in diverse_ranking(vectors[u], kept, item_matrix, banned, depth)])
        if len(kept) > 1:
            several.append(len(kept))
            owner = np.argmax(item_matrix @ centres.T, axis=1)  # each item's interest
            for name in cover:
                cover[name].append(len({int(owner[i]) for i in lists[name][-1][:10]}))
    out: dict[str, Any] = {}
    for name, ranked in lists.items():
        r50, _ = _hits(ranked, data.target_idx, 50)
        r10, n10 = _hits(ranked, data.target_idx, 10)
        out[name] = {"recall@50": round(r50, 4), "hr@10": round(r10, 4), "ndcg@10": round(n10, 4)}
        if cover[name]:
            out[name]["top10_interests_covered_mean"] = round(float(np.mean(cover[name])), 3)
            out[name]["top10_covers_all_share"] = round(float(np.mean(
                [c == n for c, n in zip(cover[name], several, strict=True)])), 3)
    counts = np.asarray([len(k) for k in interests])
    out["interests_per_person"] = {"mean": round(float(counts.mean()), 3),
                                   "people_with_2_or_more": len(several),
                                   "histogram": {str(n): int((counts == n).sum()) for n in range(k_interests + 1)}}
    return out


def encode_cost(runtime: Any, sequences: list[Any], k_interests: int, min_time: float) -> dict[str, Any]:
    """People/s of the worker's encode step at batch 256, without and with interests (same run)."""
    from bench.encoder import time_call
    from model.interests import person_interests

    batch = sequences[:256]
    window = int(runtime.spec.max_len)

    def plain() -> None:
        runtime.encode(batch)

    def with_interests() -> None:
        runtime.encode(batch)
        person_interests(runtime.item_vectors, batch, k=k_interests, window=window)

    rates: dict[str, list[float]] = {}
    for _ in range(2):  # interleave so that a slow moment of the machine does not fall on one side only
        for name, fn in (("plain", plain), ("interests", with_interests)):
            rates.setdefault(name, []).append(len(batch) / time_call(fn, min_time))
    plain_rate, interests_rate = max(rates["plain"]), max(rates["interests"])
    return {"batch": len(batch), "window": window, "plain_people_per_s": round(plain_rate, 1),
            "interests_people_per_s": round(interests_rate, 1),
            "slowdown": round(1.0 - interests_rate / plain_rate, 4)}


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    names = ["single", "centres", "diverse"]
    labels = ["single vector", "interest vectors", "--diverse"]
    for offset, key in ((-0.2, "recall@50"), (0.2, "hr@10")):
        drawn = left.bar([n + offset for n in range(3)], [report["lists"][m][key] for m in names], width=0.4,
                         label=key)
        left.bar_label(drawn, fmt="%.3f", fontsize=7)
    left.set_xticks(range(3), labels)
    left.set_title(f"{report['dataset']}: test target, full ranking")
    left.legend(fontsize=8)
    drawn = right.bar(range(3), [report["lists"][m].get("top10_interests_covered_mean", 0) for m in names],
                      color=["grey", "tab:orange", "tab:blue"])
    right.bar_label(drawn, fmt="%.2f")
    right.set_xticks(range(3), labels)
    people = report["lists"]["interests_per_person"]["people_with_2_or_more"]
    right.set_title(f"distinct interests in the top 10 ({people} people with >= 2)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench.quality import DATASET_CONFIG, _source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASET_CONFIG), default="ml-100k")
    parser.add_argument("--events", default=None, help="any events file (CSV / JSON lines / .inter)")
    parser.add_argument("--registry", default=None, help="a published version instead of training one")
    parser.add_argument("--version", default=None)
    parser.add_argument("--k", type=int, default=None, help="interests per person (default: the setting's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds per timing")
    parser.add_argument("--out-dir", default=str(BENCH_DIR))
    args = parser.parse_args(argv)

    from model.data import leave_two_out, load_events
    from model.evaluate import build_eval_set, catalogue_of
    from model.registry import Registry
    from model.runtime import EncoderRuntime
    from model.trainer import named_config, train
    from schemas.settings import Settings

    k_interests = args.k or Settings.model_fields["interests_max"].default
    name, source = _source(args)
    out = Path(args.out_dir) / "interests"
    people = load_events(source)
    if args.registry:
        registry, version = args.registry, Registry(args.registry).resolve(args.version)
    else:
        registry = str(out / f"registry-{int(time.time())}-{os.getpid()}")
        say(f"training config {DATASET_CONFIG[name]!r} on {name} into {registry}")
        version = train(source, registry, named_config(DATASET_CONFIG[name], threads=args.threads)).version
    runtime = EncoderRuntime.load(registry, version, use_gpu="no", precision="fp32")
    split = leave_two_out(people)
    catalogue = catalogue_of(people)
    data = build_eval_set(split, catalogue, "test")
    say(f"ranking {len(data.people)} people x {len(catalogue)} items: single vector, interest vectors, --diverse")
    lists = measure_lists(runtime, data, catalogue, k_interests)
    long_enough = sorted(data.histories, key=len, reverse=True)
    cost = encode_cost(runtime, [h[-50:] for h in long_enough], k_interests, args.min_time)
    report: dict[str, Any] = {
        "bench": "interests", "dataset": name, "version": version, "registry": registry,
        "interests_max": k_interests, "people": len(data.people), "items": len(catalogue),
        "lists": lists, "encode": cost,
        "ratios": {"recall@50_diverse_vs_single": ratio(lists["diverse"]["recall@50"], lists["single"]["recall@50"]),
                   "recall@50_centres_vs_single": ratio(lists["centres"]["recall@50"],
                                                        lists["single"]["recall@50"])},
        "targets": {"encode_slowdown": target(cost["slowdown"], MAX_SLOWDOWN, higher_is_better=False)},
        "command": command("interests", argv), "machine": machine(),
    }
    report["passed"] = all(t["met"] for t in report["targets"].values())
    path = plot_path(out, f"interests-{name}")
    _plot(report, path)
    report["plot"] = str(path)
    return emit(report)


if __name__ == "__main__":
    main(sys.argv[1:])
