"""Event sequences -> the exact integer tensors the encoder consumes.

This module is the single source of truth for featurisation: the trainer, the
evaluation, the ONNX export parity check and the worker runtime all call
:func:`featurize`, so a model can never see features at serving time that
differ from those it was trained on.  It imports numpy only (workers load it).

Why hashed item ids: a vocabulary would have to be rebuilt (and the model
retrained) whenever a new item appears; with ``k`` independent hash functions
into ``b`` buckets each, any item id string gets a representation at once and
two items share *all* their buckets only with probability about ``1/b**k``.
The hash is keyed BLAKE2b of the UTF-8 id, so it is identical in every
process, machine and Python version (Python's ``hash()`` is salted per run).

Layout: sequences are **left-padded** to a common length ``L`` so the most
recent event is always column ``L-1`` (the encoder reads its person vector
there).  ``position`` counts from the oldest event kept (0, 1, ...), so the
same sequence gets the same features whatever ``L`` it is padded to: the
runtime can bucket short sequences into short batches without changing a
single output.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from schemas.sequence import ACTIONS, SeqEvent

FEATURE_FORMAT = 1
PAD = 0

# Gap to the previous event, in seconds: same moment, within a session,
# within a day, ... up to "more than a year".
DEFAULT_GAP_BOUNDARIES_S: tuple[float, ...] = (
    1,
    10,
    60,
    300,
    1800,
    3600,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    2 * 86400,
    7 * 86400,
    30 * 86400,
    90 * 86400,
    365 * 86400,
)

_HASH_CACHE_MAX = 1 << 20


@dataclass(frozen=True)
class FeatureSpec:
    """Everything needed to turn events into tensors; stored in every manifest.

    Index 0 of every categorical input is padding.  Actions and platforms map
    to ``1..n`` and unknown names to a shared "other" slot ``n+1``, so a new
    platform works immediately (it shares the "other" embedding until a model
    that lists it is trained).  Time gaps use bucket 1 for "no previous event"
    and ``2 + searchsorted(boundaries, gap, 'right')`` otherwise.
    """

    hash_buckets: int = 1 << 15
    hash_seeds: tuple[int, ...] = (0x5EED0001, 0x5EED0002)
    gap_boundaries_s: tuple[float, ...] = DEFAULT_GAP_BOUNDARIES_S
    actions: tuple[str, ...] = ACTIONS
    platforms: tuple[str, ...] = ("web", "app", "mini", "tv")
    max_len: int = 50
    format: int = FEATURE_FORMAT
    _lookup: dict[str, _Vocab] = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        if self.hash_buckets < 2:
            raise ValueError("hash_buckets must be >= 2 (bucket 0 is padding)")
        if len(self.hash_seeds) < 2 or len(set(self.hash_seeds)) != len(self.hash_seeds):
            raise ValueError("need at least two distinct hash seeds")
        if self.max_len < 1:
            raise ValueError("max_len must be >= 1")
        if list(self.gap_boundaries_s) != sorted(self.gap_boundaries_s):
            raise ValueError("gap_boundaries_s must be increasing")
        self._lookup["action"] = _Vocab(self.actions)
        self._lookup["platform"] = _Vocab(self.platforms)

    # -- sizes of the embedding tables ---------------------------------
    @property
    def n_hashes(self) -> int:
        return len(self.hash_seeds)

    @property
    def n_actions(self) -> int:
        """Table size: padding + known actions + "other"."""
        return len(self.actions) + 2

    @property
    def n_platforms(self) -> int:
        return len(self.platforms) + 2

    @property
    def n_gaps(self) -> int:
        """Padding, "first event", and ``len(boundaries) + 1`` ranges."""
        return len(self.gap_boundaries_s) + 3

    def item_input_names(self) -> list[str]:
        return [f"item_hash_{k}" for k in range(self.n_hashes)]

    def input_names(self) -> list[str]:
        """ONNX input names of the sequence encoder, in argument order."""
        return [*self.item_input_names(), "action", "platform", "time_gap", "position", "mask"]

    # -- manifest round trip -------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in fields(self):
            if not f.name.startswith("_"):
                value = getattr(self, f.name)
                data[f.name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        if int(data.get("format", FEATURE_FORMAT)) != FEATURE_FORMAT:
            raise ValueError(f"unsupported feature format {data.get('format')!r}")
        return cls(
            hash_buckets=int(data["hash_buckets"]),
            hash_seeds=tuple(int(s) for s in data["hash_seeds"]),
            gap_boundaries_s=tuple(float(b) for b in data["gap_boundaries_s"]),
            actions=tuple(data["actions"]),
            platforms=tuple(data["platforms"]),
            max_len=int(data["max_len"]),
        )

    def action_id(self, action: str) -> int:
        return self._lookup["action"][action]

    def platform_id(self, platform: str) -> int:
        return self._lookup["platform"][platform]


class _Vocab(dict[str, int]):
    """Name -> id with unknown names mapped to the "other" slot.

    A dict subclass with ``__missing__`` lets featurize map a whole column
    with the C-level ``map(vocab.__getitem__, names)``.
    """

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__((name, i + 1) for i, name in enumerate(names))
        self.other = len(names) + 1

    def __missing__(self, key: str) -> int:
        return self.other


class _HashState:
    """One generation of the memo: item id -> row of ``table`` (rows never change)."""

    def __init__(self, n_hashes: int) -> None:
        self.memo: dict[str, int] = {}
        self.table = np.zeros((1024, n_hashes), dtype=np.int64)


class _HashCache:
    """Bounded item-id -> bucket-ids memo shared by all calls with one spec.

    Hashing is the only per-item Python work in :func:`featurize`; popular
    items recur in every batch, so the memo turns it into one C-level
    ``map(dict.get)`` plus a numpy gather.  The bound keeps memory flat on an
    unbounded stream of new ids: when full, a fresh generation replaces the
    old one (cheaper than LRU book-keeping).  Thread-safe: readers work on a
    snapshot of one generation, and only misses take the lock.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self._keys = [s.to_bytes(8, "little", signed=False) for s in spec.hash_seeds]
        self._mod = spec.hash_buckets - 1
        self._state = _HashState(len(self._keys))
        self._lock = threading.Lock()

    def compute(self, item_id: str) -> tuple[int, ...]:
        raw = item_id.encode("utf-8")
        return tuple(
            1 + int.from_bytes(hashlib.blake2b(raw, digest_size=8, key=key).digest(), "little") % self._mod
            for key in self._keys
        )

    def lookup(self, items: Sequence[str]) -> np.ndarray:
        """Bucket ids for ``items``, int64 ``[len(items), k]``."""
        state = self._state
        rows = list(map(state.memo.get, items))
        if None in rows:
            with self._lock:
                if len(state.memo) + len(items) > _HASH_CACHE_MAX and state is self._state:
                    self._state = _HashState(len(self._keys))
                state = self._state
                for i, item in enumerate(items):
                    row = state.memo.get(item)
                    if row is None:
                        row = len(state.memo)
                        if row >= len(state.table):
                            grown = np.zeros((2 * len(state.table), len(self._keys)), dtype=np.int64)
                            grown[:row] = state.table[:row]
                            state.table = grown
                        state.table[row] = self.compute(item)
                        state.memo[item] = row
                    rows[i] = row
        return state.table[np.asarray(rows, dtype=np.int64)]


_CACHES: dict[tuple[int, tuple[int, ...]], _HashCache] = {}


def _cache_for(spec: FeatureSpec) -> _HashCache:
    key = (spec.hash_buckets, spec.hash_seeds)
    cache = _CACHES.get(key)
    if cache is None:
        cache = _CACHES.setdefault(key, _HashCache(spec))
    return cache


def hash_items(item_ids: Sequence[str], spec: FeatureSpec) -> np.ndarray:
    """Bucket ids of each item id under every hash function: int64 ``[N, k]``, never 0."""
    return _cache_for(spec).lookup(item_ids)


def item_inputs(item_ids: Sequence[str], spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Inputs of the item tower (``item_hash_k`` int64 ``[N]``) for any item ids."""
    hashed = hash_items(item_ids, spec)
    return {name: np.ascontiguousarray(hashed[:, k]) for k, name in enumerate(spec.item_input_names())}


def featurize(
    sequences: Sequence[Sequence[SeqEvent]],
    spec: FeatureSpec,
    max_len: int | None = None,
    *,
    pad_to: int | None = None,
) -> dict[str, np.ndarray]:
    """Encoder inputs for a batch of event sequences (each in event-time order).

    Keeps the last ``max_len`` (default ``spec.max_len``) events of each
    sequence and left-pads to ``pad_to`` (default: the longest kept length,
    at least 1).  Returns int64 ``[B, L]`` arrays named as
    ``spec.input_names()``; ``mask`` is 1 on real events.  The gap of the
    oldest kept event is measured to the event before it when the sequence
    was truncated, so truncation does not invent a "first event".
    """
    window = spec.max_len if max_len is None else max_len
    n_seq = len(sequences)
    lens = np.fromiter((min(len(s), window) for s in sequences), dtype=np.int64, count=n_seq)
    longest = int(lens.max()) if n_seq else 0
    width = max(1, longest) if pad_to is None else pad_to
    if width < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest kept sequence ({longest})")

    items: list[str] = []
    actions: list[str] = []
    platforms: list[str] = []
    stamps: list[int] = []
    prev_ts = np.zeros(n_seq, dtype=np.int64)
    truncated = np.zeros(n_seq, dtype=bool)  # the event before the window is known
    for b, seq in enumerate(sequences):
        tail = seq[-window:] if len(seq) > window else seq
        if len(seq) > window:
            prev_ts[b] = seq[len(seq) - window - 1].ts_ms
            truncated[b] = True
        items += [ev.item_id for ev in tail]
        actions += [ev.action for ev in tail]
        platforms += [ev.platform for ev in tail]
        stamps += [ev.ts_ms for ev in tail]

    total = len(items)
    out = {name: np.zeros((n_seq, width), dtype=np.int64) for name in spec.input_names()}
    if total == 0:
        return out

    starts = np.zeros(n_seq, dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    rows = np.repeat(np.arange(n_seq, dtype=np.int64), lens)
    within = np.arange(total, dtype=np.int64) - np.repeat(starts, lens)
    cols = width - np.repeat(lens, lens) + within

    ts = np.asarray(stamps, dtype=np.int64)
    prev = np.empty_like(ts)
    prev[1:] = ts[:-1]
    has_prev = np.ones(total, dtype=bool)
    firsts = starts[lens > 0]
    prev[firsts] = prev_ts[lens > 0]
    has_prev[firsts] = truncated[lens > 0]
    gap_s = np.maximum(ts - prev, 0).astype(np.float64) / 1000.0
    gap = 2 + np.searchsorted(np.asarray(spec.gap_boundaries_s, dtype=np.float64), gap_s, side="right")
    gap[~has_prev] = 1

    hashed = hash_items(items, spec)
    for k, name in enumerate(spec.item_input_names()):
        out[name][rows, cols] = hashed[:, k]
    out["action"][rows, cols] = np.fromiter(map(spec._lookup["action"].__getitem__, actions), np.int64, total)
    out["platform"][rows, cols] = np.fromiter(
        map(spec._lookup["platform"].__getitem__, platforms), np.int64, total
    )
    out["time_gap"][rows, cols] = gap
    out["position"][rows, cols] = within
    out["mask"][rows, cols] = 1
    return out
