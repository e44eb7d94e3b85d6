"""Several interests per person: clusters of the item vectors of their recent events.

Why clustering the person's own items (PinnerSage's approach) and not a
multi-interest head (MIND, ComiRec): it needs no retraining and works with
every published encoder, each interest is explainable by construction (its
representative items are events the person had), and it costs a few
vectorised numpy operations per batch next to the encoder call.  A
multi-interest head would have to be trained, exported and checked as a
second output of every model version.

Method, for each person of a batch at once (arrays ``[people, window, dim]``):

1. The item vectors of the window's events (the published index, one lookup
   for the batch's distinct items), normalised, each event weighted by its
   action weight times a recency decay (half-life ``half_life`` events).
2. Weighted spherical k-means with ``k`` centres, seeded deterministically:
   the newest event's item, then each time the event farthest (lowest best
   cosine) from the centres chosen so far.  A few iterations suffice on <= 50
   points.
3. Two clusters are merged while their centres are closer to each other than
   their members are to them (the split found no gap) or closer than
   ``merge_cos``; clusters below ``min_share`` of the weight are dropped (their
   weight re-shared): a person with one interest gets one, not ``k`` pieces.
4. An interest's vector is its normalised weighted centre; its items are its
   members closest to the centre (the medoid first), distinct.

:func:`mix_ranked` turns one ranked list per interest into one list that
gives each interest slots in proportion to its weight (``interest recommend
--diverse``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from schemas.events import ACTION_WEIGHTS
from schemas.sequence import Interest, SeqEvent

DEFAULT_MAX_INTERESTS = 3


def person_interests(
    item_vectors: Callable[[Sequence[str]], np.ndarray],
    sequences: Sequence[Sequence[SeqEvent]],
    k: int = DEFAULT_MAX_INTERESTS,
    window: int = 50,
    half_life: float = 10.0,
    iterations: int = 6,
    merge_cos: float = 0.5,
    min_share: float = 0.1,
    items_per_interest: int = 3,
) -> list[tuple[Interest, ...]]:
    """Up to ``k`` interests of each sequence (heaviest first), in input order; ``()`` for an empty one."""
    count = len(sequences)
    if count == 0 or k <= 0:
        return [() for _ in range(count)]
    seqs = [list(s)[-window:] for s in sequences]
    width = max((len(s) for s in seqs), default=0)
    if width == 0:
        return [() for _ in range(count)]
    distinct = list(dict.fromkeys(e.item_id for s in seqs for e in s))
    table = np.asarray(item_vectors(distinct), dtype=np.float32)
    table /= np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    position = {item: i for i, item in enumerate(distinct)}
    index = np.zeros((count, width), dtype=np.int64)
    weight = np.zeros((count, width), dtype=np.float32)
    for b, seq in enumerate(seqs):
        n = len(seq)
        index[b, :n] = [position[e.item_id] for e in seq]
        ages = np.arange(n - 1, -1, -1, dtype=np.float32)
        actions = np.fromiter((ACTION_WEIGHTS.get(e.action, 1.0) * e.weight for e in seq), np.float32, n)
        weight[b, :n] = actions * np.power(0.5, ages / half_life)
    points = table[index]  # [B, L, D]
    mask = weight > 0
    centres = _seed(points, mask, [len(s) for s in seqs], min(k, width))
    for _ in range(iterations):
        member = np.argmax(np.einsum("bld,bkd->blk", points, centres), axis=2)
        mass = np.eye(centres.shape[1], dtype=np.float32)[member] * weight[:, :, None]  # [B, L, K]
        moved = np.einsum("blk,bld->bkd", mass, points)
        norms = np.linalg.norm(moved, axis=2, keepdims=True)
        centres = np.where(norms > 1e-9, moved / np.maximum(norms, 1e-12), centres)
    sims = np.einsum("bld,bkd->blk", points, centres)
    member = np.argmax(sims, axis=2)
    out: list[tuple[Interest, ...]] = []
    for b, seq in enumerate(seqs):
        n = len(seq)
        if n == 0:
            out.append(())
            continue
        out.append(_finish(seq, member[b, :n], sims[b, :n], weight[b, :n], points[b, :n],
                           merge_cos, min_share, items_per_interest))
    return out


def _seed(points: np.ndarray, mask: np.ndarray, lengths: list[int], k: int) -> np.ndarray:
    """Deterministic farthest-point seeds: the newest item, then the worst-covered events."""
    count, _, dim = points.shape
    rows = np.arange(count)
    last = np.maximum(np.asarray(lengths) - 1, 0)
    centres = np.zeros((count, k, dim), dtype=np.float32)
    centres[:, 0] = points[rows, last]
    best = np.einsum("bld,bd->bl", points, centres[:, 0])
    for j in range(1, k):
        # padding never wins; among equally far events the newest (highest position) is taken
        score = np.where(mask, best, np.inf) - 1e-6 * np.arange(points.shape[1])[None, :]
        pick = np.argmin(score, axis=1)
        centres[:, j] = points[rows, pick]
        best = np.maximum(best, np.einsum("bld,bd->bl", points, centres[:, j]))
    return centres


def _finish(seq: Sequence[SeqEvent], member: np.ndarray, sims: np.ndarray, weight: np.ndarray,
            points: np.ndarray, merge_cos: float, min_share: float, per: int) -> tuple[Interest, ...]:
    groups: list[list[int]] = [list(np.flatnonzero(member == c)) for c in range(sims.shape[1])]
    groups = [g for g in groups if g]
    centre = [_centre(points, weight, g) for g in groups]
    merged = True
    while merged and len(groups) > 1:
        # Merge the closest pair while their centres are closer to each other than their own members are
        # to them (the split found no real gap) or closer than merge_cos: a split must separate something.
        merged = False
        pairs = [(float(centre[i] @ centre[j]), i, j) for i in range(len(groups)) for j in range(i + 1, len(groups))]
        cos, i, j = max(pairs)
        tight = min(_cohesion(points, weight, groups[i], centre[i]), _cohesion(points, weight, groups[j], centre[j]))
        if cos >= min(tight, merge_cos):
            groups[i] = groups[i] + groups.pop(j)
            centre.pop(j)
            centre[i] = _centre(points, weight, groups[i])
            merged = True
    total = float(weight.sum()) or 1.0
    shares = [float(weight[g].sum()) / total for g in groups]
    keep = [i for i, s in enumerate(shares) if s >= min_share] or [int(np.argmax(shares))]
    kept_total = sum(shares[i] for i in keep)
    interests = []
    for i in keep:
        closeness = points[groups[i]] @ centre[i]
        order = sorted(range(len(groups[i])), key=lambda m: (-float(closeness[m]), -groups[i][m]))
        items = list(dict.fromkeys(seq[groups[i][m]].item_id for m in order))[:per]
        interests.append(Interest(centre[i], shares[i] / kept_total, tuple(items)))
    return tuple(sorted(interests, key=lambda it: (-it.weight, it.items)))


def _cohesion(points: np.ndarray, weight: np.ndarray, group: list[int], centre: np.ndarray) -> float:
    w = weight[group]
    return float((w * (points[group] @ centre)).sum() / max(float(w.sum()), 1e-12))


def _centre(points: np.ndarray, weight: np.ndarray, group: list[int]) -> np.ndarray:
    moved = (weight[group, None] * points[group]).sum(axis=0)
    return (moved / max(float(np.linalg.norm(moved)), 1e-12)).astype(np.float32)


def mix_ranked(ranked: Sequence[Sequence[tuple[str, float]]], weights: Sequence[float],
               k: int) -> list[tuple[str, float, int]]:
    """One list of ``k`` items from one ranked list per interest: ``(item, score, interest index)``.

    Each interest gets slots in proportion to its weight (largest remainder,
    at least one while ``k`` allows); slots are filled in turns, heaviest
    interest first, skipping items an earlier interest already placed.
    """
    if k <= 0 or not ranked:
        return []
    total = sum(weights) or 1.0
    exact = [k * w / total for w in weights]
    quota = [max(1, int(q)) if k >= len(ranked) else int(q) for q in exact]
    while sum(quota) > k:
        quota[int(np.argmax(quota))] -= 1
    for i in sorted(range(len(exact)), key=lambda i: -(exact[i] - int(exact[i]))):
        if sum(quota) >= k:
            break
        quota[i] += 1
    cursor, taken = [0] * len(ranked), [0] * len(ranked)
    out: list[tuple[str, float, int]] = []
    seen: set[str] = set()
    while len(out) < k and any(cursor[i] < len(ranked[i]) for i in range(len(ranked))):
        progressed = False
        for i in sorted(range(len(ranked)), key=lambda i: -weights[i]):
            if taken[i] >= quota[i] and any(taken[j] < quota[j] and cursor[j] < len(ranked[j])
                                            for j in range(len(ranked))):
                continue
            while cursor[i] < len(ranked[i]) and ranked[i][cursor[i]][0] in seen:
                cursor[i] += 1
            if cursor[i] < len(ranked[i]) and len(out) < k:
                item, score = ranked[i][cursor[i]]
                out.append((item, score, i))
                seen.add(item)
                taken[i] += 1
                cursor[i] += 1
                progressed = True
        if not progressed:
            break
    return out
