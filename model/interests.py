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

:func:`diverse_ranking` (``interest recommend --diverse``) ranks items by
the person's vector and shares the slots among the interests by weight,
through :func:`mix_ranked`, which turns one ranked list per interest into one
list that gives each interest slots in proportion to its weight.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from itertools import chain
from typing import Protocol, TypeVar

import numpy as np

from schemas.events import ACTION_WEIGHTS
from schemas.sequence import Interest, SeqEvent

DEFAULT_MAX_INTERESTS = 3
T = TypeVar("T", bound=Hashable)
_BUCKET_BASE = 4.0  # people are clustered in groups of lengths (base^(n-1), base^n]: 1, 2-4, 5-16, 17-64


class Encodes(Protocol):  # the slice of an encoder this module needs; ``item_vectors``/``spec`` are optional
    def encode(self, sequences: Sequence[Sequence[SeqEvent]]) -> np.ndarray: ...  # pragma: no cover


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
    if items_per_interest < 0:
        raise ValueError(f"items_per_interest must be >= 0, not {items_per_interest}")
    count = len(sequences)
    if count == 0 or k <= 0:
        return [() for _ in range(count)]
    seqs = [list(s)[-window:] for s in sequences]
    width = max((len(s) for s in seqs), default=0)
    if width == 0:
        return [() for _ in range(count)]
    # The Python part: one list of the batch's events, two attribute sweeps; the rest is arrays.
    lengths = np.fromiter((len(s) for s in seqs), np.int64, count)
    flat = list(chain.from_iterable(seqs))
    ids = [e.item_id for e in flat]
    position = {item: n for n, item in enumerate(dict.fromkeys(ids))}
    codes = np.fromiter(map(position.__getitem__, ids), np.int64, len(ids))
    known = ACTION_WEIGHTS.get
    actions = np.fromiter([known(e.action, 1.0) * e.weight for e in flat], np.float32, len(flat))
    table = np.asarray(item_vectors(list(position)), dtype=np.float32)
    table /= np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    rows = np.repeat(np.arange(count), lengths)
    cols = np.arange(len(codes)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    index = np.zeros((count, width), dtype=np.int64)
    weight = np.zeros((count, width), dtype=np.float32)
    index[rows, cols] = codes
    ages = (lengths[rows] - 1 - cols).astype(np.float32)
    weight[rows, cols] = actions * np.power(np.float32(0.5), ages / np.float32(half_life))
    # Cluster people of similar length together (as the encoder buckets them): a batch of mostly short
    # sequences with one long one would otherwise pay the long one's width for everybody.
    out: list[tuple[Interest, ...]] = [() for _ in range(count)]
    bucket = np.ceil(np.log(np.maximum(lengths, 1)) / np.log(_BUCKET_BASE) - 1e-9).astype(np.int64)
    for b in np.unique(bucket[lengths > 0]):
        group = np.flatnonzero((bucket == b) & (lengths > 0))
        wide = int(lengths[group].max())
        found = _cluster(table[index[group, :wide]], weight[group, :wide], lengths[group],
                         [seqs[i] for i in group], min(k, width), iterations, merge_cos, min_share,
                         items_per_interest)
        for i, interests in zip(group.tolist(), found, strict=True):
            out[i] = interests
    return out


def _cluster(points: np.ndarray, weight: np.ndarray, lengths: np.ndarray, seqs: Sequence[Sequence[SeqEvent]],
             k: int, iterations: int, merge_cos: float, min_share: float,
             items_per_interest: int) -> list[tuple[Interest, ...]]:
    """Weighted spherical k-means of each person's points ``[B, L, D]`` at once, then merge and describe."""
    mask = weight > 0
    centres = _seed(points, mask, lengths, k)
    for _ in range(iterations):
        member = np.argmax(points @ centres.transpose(0, 2, 1), axis=2)
        mass = np.eye(centres.shape[1], dtype=np.float32)[member] * weight[:, :, None]  # [B, L, K]
        moved = mass.transpose(0, 2, 1) @ points
        norms = np.linalg.norm(moved, axis=2, keepdims=True)
        centres = np.where(norms > 1e-9, moved / np.maximum(norms, 1e-12), centres)
    member = np.argmax(points @ centres.transpose(0, 2, 1), axis=2)
    valid = np.arange(points.shape[1])[None, :] < lengths[:, None]
    return _finish(seqs, member, valid, weight, points, merge_cos, min_share, items_per_interest)


def encode_with_interests(
    encoder: Encodes, sequences: Sequence[Sequence[SeqEvent]], k: int, seq_len: int
) -> tuple[np.ndarray, list[tuple[Interest, ...]]]:
    """What a worker and a re-encode write for a batch: the vectors and, when the encoder has an item index
    (``item_vectors``) and ``k > 0``, the interests, over the same recent events the vector sees.

    One function for both so that a re-encoded profile is the profile the worker would have written.
    """
    vectors = encoder.encode(sequences)
    lookup = getattr(encoder, "item_vectors", None)
    if lookup is None or k <= 0:
        return vectors, [() for _ in sequences]
    window = min(seq_len, int(getattr(getattr(encoder, "spec", None), "max_len", seq_len)))
    return vectors, person_interests(lookup, sequences, k=k, window=window)


def _seed(points: np.ndarray, mask: np.ndarray, lengths: np.ndarray, k: int) -> np.ndarray:
    """Deterministic farthest-point seeds: the newest item, then the worst-covered events."""
    count, _, dim = points.shape
    rows = np.arange(count)
    last = np.maximum(np.asarray(lengths) - 1, 0)
    centres = np.zeros((count, k, dim), dtype=np.float32)
    centres[:, 0] = points[rows, last]
    best = (points @ centres[:, 0, :, None])[:, :, 0]
    for j in range(1, k):
        # padding never wins; among equally far events the newest (highest position) is taken
        score = np.where(mask, best, np.inf) - 1e-6 * np.arange(points.shape[1])[None, :]
        pick = np.argmin(score, axis=1)
        centres[:, j] = points[rows, pick]
        best = np.maximum(best, (points @ centres[:, j, :, None])[:, :, 0])
    return centres


def _clusters(member: np.ndarray, valid: np.ndarray, weight: np.ndarray, points: np.ndarray,
              k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per person and cluster: (member mass ``[B, L, K]``, weight ``[B, K]``, centre ``[B, K, D]``, cohesion)."""
    onehot = np.eye(k, dtype=np.float32)[member] * valid[:, :, None]
    mass = onehot * weight[:, :, None]
    total = mass.sum(axis=1)
    moved = mass.transpose(0, 2, 1) @ points
    centre = moved / np.maximum(np.linalg.norm(moved, axis=2, keepdims=True), 1e-12)
    closeness = points @ centre.transpose(0, 2, 1)
    cohesion = (mass * closeness).sum(axis=1) / np.maximum(total, 1e-12)
    present = onehot.sum(axis=1) > 0
    return present, total, centre.astype(np.float32), np.where(present, cohesion, np.nan)


def _finish(seqs: Sequence[Sequence[SeqEvent]], member: np.ndarray, valid: np.ndarray, weight: np.ndarray,
            points: np.ndarray, merge_cos: float, min_share: float, per: int) -> list[tuple[Interest, ...]]:
    """Merge, drop and describe the clusters of every person at once (numpy over the batch)."""
    count, k = member.shape[0], int(member.max(initial=0)) + 1
    rows = np.arange(count)
    upper = np.triu(np.ones((k, k), dtype=bool), 1)
    for _ in range(k - 1):
        # Merge each person's closest pair while their centres are closer to each other than their own
        # members are to them (the split found no real gap) or closer than merge_cos: a split must separate
        # something.  One pair per person per pass; at most k - 1 passes.
        present, _, centre, cohesion = _clusters(member, valid, weight, points, k)
        pair_cos = centre @ centre.transpose(0, 2, 1)
        allowed = upper[None] & present[:, :, None] & present[:, None, :]
        flat = np.where(allowed, pair_cos, -np.inf).reshape(count, k * k)
        best = np.argmax(flat, axis=1)
        cos = flat[rows, best]
        i, j = best // k, best % k
        tight = np.fmin(cohesion[rows, i], cohesion[rows, j])
        merge = np.isfinite(cos) & (cos >= np.minimum(tight, merge_cos))
        if not merge.any():
            break
        member = np.where(merge[:, None] & (member == j[:, None]), i[:, None], member)
    present, total, centre, _ = _clusters(member, valid, weight, points, k)
    shares = total / np.maximum(total.sum(axis=1, keepdims=True), 1e-12)
    keep: np.ndarray = present & (shares >= min_share)
    none = np.flatnonzero(~keep.any(axis=1))
    keep[none, np.argmax(np.where(present, shares, -1.0), axis=1)[none]] = True
    keep = keep & np.asarray(valid.any(axis=1))[:, None]
    weights = np.where(keep, shares, 0.0)
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    closeness = centre @ points.transpose(0, 2, 1)
    mine = (member[:, None, :] == np.arange(k)[None, :, None]) & valid[:, None, :]
    # members closest to the centre first (the medoid), the newest first among equals
    order = np.lexsort((-np.broadcast_to(np.arange(points.shape[1]), mine.shape),
                        -np.where(mine, closeness, -np.inf)), axis=-1)
    members = mine.sum(axis=2).tolist()
    depth = min(points.shape[1], 4 * per)  # enough positions to find ``per`` distinct items in practice
    head = order[:, :, :depth].tolist()
    kept_rows = keep.tolist()
    share = weights.tolist()
    out: list[tuple[Interest, ...]] = []
    for b, seq in enumerate(seqs):
        interests = []
        for c, kept in enumerate(kept_rows[b]):
            if not kept:
                continue
            size = members[b][c]
            items = _distinct_items(seq, head[b][c][:size], per, [])
            if len(items) < per and size > depth:  # the rest of the ranking only for many repeats
                items = _distinct_items(seq, order[b, c, depth:size].tolist(), per, items)
            interests.append(Interest(centre[b, c].copy(), float(share[b][c]), tuple(items)))
        out.append(tuple(sorted(interests, key=lambda it: (-it.weight, it.items))))
    return out


def _distinct_items(seq: Sequence[SeqEvent], positions: Sequence[int], per: int, items: list[str]) -> list[str]:
    """``items`` extended by the item ids at ``positions`` (in order) not already in it, up to ``per``."""
    for pos in positions:
        if len(items) == per:
            break
        if seq[pos].item_id not in items:
            items.append(seq[pos].item_id)
    return items


def diverse_ranking(vector: np.ndarray, interests: Sequence[Interest], item_matrix: np.ndarray,
                    exclude: np.ndarray, k: int) -> list[tuple[int, float, int]]:
    """``k`` item indices ranked by the person's vector, with slots shared among the interests by weight.

    Why not rank by each interest's own vector: those are centres of the
    person's past items, so they find items *like* what was done, not what
    comes next; the encoder's vector is trained for the next item.  So the
    vector ranks a pool of ``k`` x interests candidates, each candidate
    belongs to the interest whose vector scores it highest, and
    :func:`mix_ranked` takes each interest's best candidates in proportion
    to its weight: the relevance of the single vector, the spread of the
    interests.  ``exclude`` is a boolean mask (or indices) of items not to
    recommend.  Returns ``(item index, score, interest index)``.
    """
    scores = np.asarray(item_matrix, dtype=np.float32) @ np.asarray(vector, dtype=np.float32)
    scores[exclude] = -np.inf
    pool_size = min(len(scores), k * max(1, len(interests)))
    if pool_size <= 0:
        return []
    pool = np.argpartition(-scores, pool_size - 1)[:pool_size]
    pool = pool[np.argsort(-scores[pool], kind="stable")]
    pool = pool[np.isfinite(scores[pool])]
    if not interests:
        return [(int(i), float(scores[i]), 0) for i in pool[:k]]
    centres = np.stack([np.asarray(i.vector, dtype=np.float32) for i in interests])
    owner = np.argmax(np.asarray(item_matrix, dtype=np.float32)[pool] @ centres.T, axis=1)
    ranked = [[(int(i), float(scores[i])) for i in pool[owner == c]] for c in range(len(interests))]
    return mix_ranked(ranked, [i.weight for i in interests], k)


def mix_ranked(ranked: Sequence[Sequence[tuple[T, float]]], weights: Sequence[float],
               k: int) -> list[tuple[T, float, int]]:
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
    out: list[tuple[T, float, int]] = []
    seen: set[T] = set()
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
