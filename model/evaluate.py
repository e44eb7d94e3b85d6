"""Offline evaluation under one fixed protocol (torch-free).

Protocol (the same for every model and baseline, so numbers are comparable):

* per person, events in time order (ties keep file order); the last item is
  the test target, the one before it the validation target, the rest is
  training; people with fewer than 3 events are left out;
* every item of the catalogue (all items in the events file) is ranked: no
  sampled negatives, which inflate metrics and reorder models;
* items already in the person's history are masked, except the target;
* metrics: NDCG@10 and HR@10 averaged over people.

``evaluate_version`` computes person vectors through the exported ONNX model
with :class:`model.runtime.EncoderRuntime`, exactly as a stream worker does;
the trainer reuses :func:`rank_metrics` with its PyTorch model for the
per-epoch validation that picks the best epoch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from model.data import Sequences, Split, leave_two_out
from schemas.sequence import SeqEvent

Target = Literal["valid", "test"]
Encoder = Callable[[Sequence[Sequence[SeqEvent]]], np.ndarray]


@dataclass(frozen=True)
class EvalSet:
    """Inputs of one ranking run: the people, their histories and targets as catalogue indices."""

    people: list[str]
    histories: list[list[SeqEvent]]
    history_idx: list[np.ndarray]
    target_idx: np.ndarray


def catalogue_of(people: Sequences, platform: str | None = None) -> list[str]:
    """All item ids of the events (of ``platform``'s events only, when given), sorted: the candidates."""
    return sorted({e.item_id for seq in people.values() for e in seq if platform is None or e.platform == platform})


def build_eval_set(split: Split, catalogue: Sequence[str], target: Target) -> EvalSet:
    index = {item: i for i, item in enumerate(catalogue)}
    goal = split.test if target == "test" else split.valid
    people = sorted(goal)
    histories = [split.history(p, target) for p in people]
    # Items outside the catalogue (other platforms' items for a platform's ranking) cannot be masked.
    history_idx = [np.fromiter((index[e.item_id] for e in h if e.item_id in index), np.int64) for h in histories]
    target_idx = np.fromiter((index[goal[p].item_id] for p in people), np.int64, len(people))
    return EvalSet(people, histories, history_idx, target_idx)


def rank_metrics(scores_fn: Callable[[slice], np.ndarray], data: EvalSet, k: int = 10) -> dict[str, float]:
    """NDCG@k / HR@k from full-catalogue scores; ``scores_fn(rows)`` gives ``[rows, C]``.

    The target's rank is the number of other candidates scoring at least as
    high after masking history: ties count against the model (a constant
    scorer gets nothing), and a NaN score ranks last.
    """
    users = len(data.people)
    ndcg = 0.0
    hits = 0
    chunk = 512
    for start in range(0, users, chunk):
        rows = slice(start, min(users, start + chunk))
        scores = np.array(scores_fn(rows), dtype=np.float64, copy=True)
        for r, u in enumerate(range(rows.start, rows.stop)):
            hist = data.history_idx[u]
            scores[r, hist[hist != data.target_idx[u]]] = -np.inf
        tgt = data.target_idx[rows]
        target_scores = scores[np.arange(len(tgt)), tgt]
        ranks = (scores >= target_scores[:, None]).sum(axis=1) - 1  # the target ties with itself
        ranks = np.where(np.isfinite(target_scores), ranks, scores.shape[1])
        top = ranks < k
        hits += int(top.sum())
        ndcg += float((1.0 / np.log2(ranks[top] + 2.0)).sum())
    return {f"ndcg@{k}": ndcg / max(users, 1), f"hr@{k}": hits / max(users, 1), "users": users}


def vector_metrics(
    person_vecs: np.ndarray, item_vecs: np.ndarray, data: EvalSet, k: int = 10
) -> dict[str, float]:
    """Metrics for dot-product scoring of person vectors against catalogue item vectors."""
    return rank_metrics(lambda rows: person_vecs[rows] @ item_vecs.T, data, k)


def popularity_metrics(
    split: Split, catalogue: Sequence[str], data: EvalSet, target: Target, k: int = 10
) -> dict[str, float]:
    """Baseline: rank by how often each item occurs in everything before the targets."""
    here = split.platform
    counts: Counter[str] = Counter(e.item_id for seq in split.train.values() for e in seq
                                   if here is None or e.platform == here)
    if target == "test":
        counts.update(e.item_id for e in split.valid.values())
        counts.update(e.item_id for seq in split.between.values() for e in seq if e.platform == here)
    pop = np.array([counts.get(item, 0) for item in catalogue], dtype=np.float64)
    pop += np.arange(len(catalogue))[::-1] * 1e-9  # deterministic tie order
    return rank_metrics(lambda rows: np.broadcast_to(pop, (rows.stop - rows.start, len(pop))), data, k)


def encoder_metrics(encode: Encoder, item_vecs: np.ndarray, data: EvalSet, k: int = 10) -> dict[str, float]:
    """Metrics with person vectors from any ``encode(sequences)`` callable."""
    return vector_metrics(encode(data.histories), item_vecs, data, k)


def evaluate_version(
    people: Sequences,
    registry_root: str,
    version: str | None = None,
    target: Target = "test",
    k: int = 10,
    use_gpu: str = "auto",
    precision: str = "auto",
    platform: str | None = None,
) -> dict[str, Any]:
    """Evaluate a published version through the ONNX runtime, with the popularity baseline.

    ``precision`` picks the graph (``auto``: the one a worker on this machine
    loads; ``fp16``: the GPU workers' graph, also runnable on CPU).  With
    ``platform`` the targets are that platform's held-out events
    (:func:`model.data.platform_split`) ranked among its own catalogue, for
    any version: a platform's fine-tuned one or the shared one it came from.
    """
    from model.data import split_for
    from model.runtime import EncoderRuntime

    runtime = EncoderRuntime.load(registry_root, version, use_gpu=use_gpu, precision=precision)
    split = split_for(people, platform) if platform is not None else leave_two_out(people)
    catalogue = catalogue_of(people, platform)
    data = build_eval_set(split, catalogue, target)
    item_vecs = runtime.item_vectors(catalogue)
    ours = encoder_metrics(runtime.encode, item_vecs, data, k)
    pop = popularity_metrics(split, catalogue, data, target, k)
    return {
        "version": runtime.version,
        "target": target,
        **({} if platform is None else {"platform": platform}),
        "precision": runtime.precision,
        f"ndcg@{k}": round(float(ours[f"ndcg@{k}"]), 6),
        f"hr@{k}": round(float(ours[f"hr@{k}"]), 6),
        "users": int(ours["users"]),
        "items": len(catalogue),
        "popularity": {
            f"ndcg@{k}": round(float(pop[f"ndcg@{k}"]), 6),
            f"hr@{k}": round(float(pop[f"hr@{k}"]), 6),
            "users": int(pop["users"]),
        },
    }
