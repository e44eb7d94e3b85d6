"""Training windows and the loss: what the trainer optimises, kept apart from the loop.

* :class:`TrainWindows` cuts each person's training events into windows of
  ``max_len`` inputs with their next-item targets (and optionally the few
  items after, with decaying weight), weighted by action (purchase > click >
  browse) times the event weight.  Events sharing a timestamp can be
  re-shuffled every epoch: their recorded order is arbitrary (batch uploads,
  same-second logs) and learning it would be learning noise.
* :func:`loss` is a weighted softmax cross-entropy over the whole catalogue
  (or the batch's targets plus sampled items for very large catalogues),
  computed by :class:`SoftmaxCE`, a lean custom autograd function: the
  ``[N, C]`` logits dominate the cost of a step on CPU.
* :class:`Ema` keeps an exponential moving average of the weights and
  :func:`drop_items` hides random input items: both regularise a model that
  would otherwise memorise the (few) training sequences.
* :func:`cooccurrence_vectors` / :func:`init_item_tables` start the hashed
  item tables from the training sequences' windowed co-occurrence, so the
  transformer refines "items used together are alike" instead of learning
  it from noise (faster, and less dependent on the seed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from model.data import Split
from model.encoder import InterestEncoder
from model.features import FeatureSpec, featurize


def session_order(
    stamps_ms: np.ndarray, person: np.ndarray, window_s: float, rng: np.random.Generator
) -> np.ndarray:
    """A permutation that shuffles events within each session, for flat per-event arrays.

    A session is a run of one person's consecutive events whose gaps are at
    most ``window_s`` (0: only events sharing a timestamp).  ``payload[order]``
    moves items, actions and platforms between the time slots of a session
    while timestamps (and so time-gap features) stay in place.  The recorded
    order inside a burst of activity is mostly arbitrary (batch uploads,
    same-second logs), and a model that learns it memorises noise.
    """
    breaks = np.ones(len(stamps_ms), dtype=bool)
    breaks[1:] = (np.diff(stamps_ms) > window_s * 1000.0) | (person[1:] != person[:-1])
    return np.lexsort((rng.random(len(stamps_ms)), np.cumsum(breaks)))


class TrainWindows:
    """Training windows: inputs, next-``future`` targets and their weights.

    Every person's training events are featurised once with
    :func:`model.features.featurize` (the same code the runtime uses), kept as
    flat per-event columns, and cut into windows of ``max_len`` inputs by
    index arithmetic each epoch, so re-cutting and re-shuffling cost
    milliseconds.  Target ``k`` of an input is the ``k``-th event after it
    (k = 1: the next item), weighted by its action weight times the event
    weight times ``decay ** (k - 1)``.  The latest window of each person is
    always used; ``all_windows`` adds the earlier ones (long histories are not
    wasted) and ``random_offsets`` moves their boundaries every epoch so each
    target is seen with varying amounts of context.  ``shuffle_window_s``
    re-draws the order inside sessions every epoch (:func:`session_order`).
    """

    PAYLOAD = ("action", "platform")

    def __init__(
        self,
        split: Split,
        spec: FeatureSpec,
        catalogue: list[str],
        weights: dict[str, float],
        future: int = 1,
        decay: float = 0.5,
        shuffle_window_s: float | None = None,
        all_windows: bool = False,
        random_offsets: bool = False,
        target_platform: str | None = None,
    ) -> None:
        self.spec, self.future, self.decay, self.shuffle = spec, max(1, future), decay, shuffle_window_s
        self.all_windows, self.random_offsets = all_windows, random_offsets
        self.names = spec.input_names()
        seqs = [split.train[p] for p in sorted(split.train) if len(split.train[p]) >= 2]
        self.lens = np.array([len(q) for q in seqs], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lens)[:-1]]).astype(np.int64)
        self.person = np.repeat(np.arange(len(seqs)), self.lens)
        index = {item: i for i, item in enumerate(catalogue)}
        events = [e for q in seqs for e in q]
        self.stamps = np.fromiter((e.ts_ms for e in events), np.int64, len(events))
        # A platform fine-tune keeps every event as input but learns only its platform's events as
        # targets (-1, weight 0: ``loss`` skips them), over that platform's own catalogue.
        here = target_platform
        self.cols: dict[str, np.ndarray] = {
            "target": np.fromiter(
                (index[e.item_id] if here is None or e.platform == here else -1 for e in events),
                np.int64, len(events),
            ),
            "weight": np.fromiter(
                (weights.get(e.action, 1.0) * e.weight if here is None or e.platform == here else 0.0
                 for e in events), np.float32, len(events)
            ),
        }
        per_event: dict[str, list[np.ndarray]] = {
            n: [] for n in (*spec.item_input_names(), *self.PAYLOAD, "time_gap")
        }
        for lo in range(0, len(seqs), 512):  # featurize each whole history, 512 people at a time
            part = seqs[lo : lo + 512]
            feats = featurize(part, spec, max_len=max(len(q) for q in part))
            real = feats["mask"] > 0  # left-padded rows: row-major order is event order
            for name, chunks in per_event.items():
                chunks.append(feats[name][real])
        self.cols.update({name: np.concatenate(chunks) for name, chunks in per_event.items()})
        self.moving = [*spec.item_input_names(), *self.PAYLOAD, "target", "weight"]
        self.build(None)

    def _windows(self, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """(first input event, number of inputs) of every window this epoch."""
        size = self.spec.max_len
        firsts, counts = [], []
        for start, n in zip(self.starts.tolist(), self.lens.tolist(), strict=True):
            ends = [n]
            if self.all_windows:
                offset = int(rng.integers(size)) if rng is not None and self.random_offsets else 0
                ends += [e for e in range(n - offset, 1, -size) if e != n]
            for end in ends:
                first = max(0, end - size - 1)
                firsts.append(start + first)
                counts.append(end - first - 1)
        return np.asarray(firsts, dtype=np.int64), np.asarray(counts, dtype=np.int64)

    def build(self, rng: np.random.Generator | None) -> None:
        """(Re)cut the windows and gather their tensors; with ``rng``, draw offsets and shuffles."""
        cols = self.cols
        if self.shuffle is not None and rng is not None:
            order = session_order(self.stamps, self.person, self.shuffle, rng)
            cols = {**cols, **{name: cols[name][order] for name in self.moving}}
        firsts, counts = self._windows(rng)
        width = self.spec.max_len
        rel = np.arange(width)[None, :] - (width - counts)[:, None]  # input index inside the window
        real = rel >= 0
        event = np.where(real, firsts[:, None] + rel, 0)
        self.lengths = counts
        self.feats = {name: np.where(real, cols[name][event], 0) for name in self.names[:-2]}
        self.feats["position"] = np.where(real, rel, 0)
        self.feats["mask"] = real.astype(np.int64)
        self.targets = np.full((len(counts), width, self.future), -1, dtype=np.int64)
        self.weights = np.zeros((len(counts), width, self.future), dtype=np.float32)
        for k in range(1, self.future + 1):
            has = real & (rel + k <= counts[:, None])
            nxt = np.where(has, event + k, 0)
            self.targets[..., k - 1] = np.where(has, cols["target"][nxt], -1)
            self.weights[..., k - 1] = np.where(has, cols["weight"][nxt] * self.decay ** (k - 1), 0.0)

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self, rng: np.random.Generator, batch_size: int) -> list[np.ndarray]:
        """Shuffled batches of similar length (less padding), in shuffled order."""
        order = rng.permutation(len(self))
        chunk = batch_size * 16
        out: list[np.ndarray] = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(-self.lengths[part], kind="stable")]
            out.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
        return [out[i] for i in rng.permutation(len(out))]

    def batch(self, rows: np.ndarray) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        width = int(self.lengths[rows].max())
        inputs = [torch.from_numpy(self.feats[name][rows, -width:]) for name in self.names]
        return (
            inputs,
            torch.from_numpy(self.targets[rows, -width:]),
            torch.from_numpy(self.weights[rows, -width:]),
        )


class SoftmaxCE(torch.autograd.Function):
    """Weighted multi-target cross-entropy of ``a @ b.T``, per row, with a lean backward.

    ``loss_r = sum_k w_rk * (logsumexp(logits_r) - logits_r[t_rk])``.  The
    full-catalogue softmax dominates a training step on CPU; autograd's
    version keeps the logits, zero-fills an ``[N, C]`` gradient and runs a
    separate log-softmax backward.  Here the log-probabilities are kept and
    turned into ``softmax * sum(w) - w_onehot`` in place, halving the
    ``[N, C]`` memory passes; one softmax serves all ``k`` targets.
    """

    @staticmethod
    def forward(
        ctx: Any, a: torch.Tensor, b: torch.Tensor, target: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        logp = torch.log_softmax(a @ b.T, dim=1)
        ctx.save_for_backward(a, b, target, w, logp)
        return -(logp.gather(1, target) * w).sum(dim=1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        # Reuses the saved log-probabilities in place: backward runs once per step (no retain_graph).
        a, b, target, w, logp = ctx.saved_tensors
        probs = logp.exp_()
        probs.mul_((w.sum(dim=1) * grad).unsqueeze(1))
        probs.scatter_add_(1, target, -(w * grad.unsqueeze(1)))
        return probs @ b, probs.T @ a, None, None


class Ema:
    """Exponential moving average of the weights; evaluated and published instead of the raw ones.

    Averaging over the last few epochs smooths the noise of small-batch
    training and generalises better than any single step's weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.state[key].mul_(self.decay).add_(value, alpha=1.0 - self.decay)
            else:
                self.state[key].copy_(value)


def drop_items(
    inputs: list[torch.Tensor], n_hashes: int, rate: float, gen: torch.Generator
) -> list[torch.Tensor]:
    """Hide the item of a random ``rate`` of input events (the event itself stays).

    The model must then rely on context and the other features instead of
    memorising exact item sequences: a cheap, strong regulariser.
    """
    drop = torch.rand(inputs[0].shape, generator=gen) < rate
    return [x.masked_fill(drop, 0) for x in inputs[:n_hashes]] + inputs[n_hashes:]


def loss(
    model: InterestEncoder,
    inputs: list[torch.Tensor],
    targets: torch.Tensor,
    weights: torch.Tensor,
    catalogue_hashes: torch.Tensor,
    negatives: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """Weighted mean cross-entropy of one batch (positions without a next item are skipped)."""
    keep = targets[..., 0] >= 0
    people = model.person_for_scoring(model.hidden(inputs)[keep])
    tgt = targets[keep].clamp(min=0)  # [N, K]; missing targets carry weight 0
    wts = weights[keep]
    if negatives > 0:
        sampled = torch.randint(0, catalogue_hashes.shape[0], (negatives,), generator=gen)
        cand, inverse = torch.unique(torch.cat([tgt.flatten(), sampled]), return_inverse=True)
        tgt = inverse[: tgt.numel()].view_as(tgt)
    else:
        cand = torch.arange(catalogue_hashes.shape[0])
    hashes = catalogue_hashes[cand]
    items = model.item_vectors(*(hashes[:, k] for k in range(hashes.shape[1])))
    per_row = SoftmaxCE.apply(people, items, tgt, wts)
    return per_row.sum() / wts.sum().clamp(min=1e-6)


def _top_eigen(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest-magnitude eigenpairs of a symmetric matrix: exact when small, else randomised.

    The randomised subspace iteration (fixed seed, so deterministic) costs
    ``O(n^2 rank)`` instead of the ``O(n^3)`` of a full decomposition.
    """
    size = len(matrix)
    rank = min(rank, size)
    if size <= 2000:
        values, vectors = np.linalg.eigh(matrix)
    else:
        basis = np.random.default_rng(0).standard_normal((size, min(size, rank + 16)))
        for _ in range(5):
            basis = np.linalg.qr(matrix @ basis)[0]
        values, small = np.linalg.eigh(basis.T @ matrix @ basis)
        vectors = basis @ small
    top = np.argsort(-np.abs(values), kind="stable")[:rank]
    return values[top], vectors[:, top]


def cooccurrence_vectors(
    split: Split, catalogue: list[str], width: int, window: int = 10, max_items: int = 5000
) -> np.ndarray | None:
    """Item vectors from the training sequences' windowed co-occurrence (item2vec-like).

    Items seen within ``window`` positions of each other (either order,
    weight ``1/distance``) get similar vectors: a truncated SVD of the
    cosine-normalised co-occurrence matrix.  Used to initialise the hashed
    item tables so training starts from "items used together are alike"
    instead of noise.  Returns None for catalogues above ``max_items`` (the
    dense matrix would not pay off).
    """
    size = len(catalogue)
    if size > max_items or size < 2:
        return None
    index = {item: i for i, item in enumerate(catalogue)}
    counts = np.zeros((size, size), dtype=np.float64)
    for seq in split.train.values():
        ids = np.fromiter((index[e.item_id] for e in seq), np.int64, len(seq))
        for d in range(1, min(window, len(ids) - 1) + 1):
            np.add.at(counts, (ids[:-d], ids[d:]), 1.0 / d)
    counts += counts.T.copy()
    norm = 1.0 / np.sqrt(counts.sum(axis=1) + 1.0)
    counts *= norm[:, None]  # in place (same values as out of place): 12k items are 1.2 GB a copy
    counts *= norm[None, :]
    values, left = _top_eigen(counts, width)
    rank = len(values)
    vectors = np.zeros((size, width), dtype=np.float64)
    vectors[:, :rank] = left * np.sqrt(np.abs(values))
    vectors /= np.linalg.norm(vectors, axis=1).mean() + 1e-12  # mean row norm 1
    return vectors.astype(np.float32)


@torch.no_grad()
def init_item_tables(model: InterestEncoder, hashes: np.ndarray, vectors: np.ndarray) -> None:
    """Write item vectors into the hashed tables: every table holds ``vector / k`` at the item's bucket."""
    tables: list[nn.Embedding] = list(model.item_tables)  # type: ignore[arg-type]
    for t, table in enumerate(tables):
        table.weight[torch.from_numpy(hashes[:, t])] = torch.from_numpy(vectors) / len(tables)
