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
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from model.data import Split
from model.encoder import InterestEncoder
from model.features import FeatureSpec, featurize
from schemas.sequence import SeqEvent


def shuffle_ties(seq: list[SeqEvent], rng: np.random.Generator) -> list[SeqEvent]:
    """Randomly reorder events that share a timestamp (their order carries no signal)."""
    stamps = np.fromiter((e.ts_ms for e in seq), np.int64, len(seq))
    if len(seq) < 2 or not (stamps[1:] == stamps[:-1]).any():
        return seq
    keys = rng.random(len(seq))
    order = np.lexsort((keys, stamps))
    return [seq[i] for i in order]


class TrainWindows:
    """Training windows: inputs, next-``future`` targets and their weights per person.

    Target ``k`` of position ``i`` is the event ``i + k`` (k = 1 is the next
    item), weighted by its action weight times ``decay ** (k - 1)``: besides
    the next item, the model is also asked for the few after it, which makes
    the vector describe the person's near-term interests rather than one item.
    With ``shuffle_ties`` every epoch reorders events that share a timestamp
    (batch uploads, logged-in-the-same-second), so the model does not learn
    an order that does not exist.
    """

    def __init__(self, split: Split, spec: FeatureSpec, catalogue: list[str], weights: dict[str, float],
                 future: int = 1, decay: float = 0.5, shuffle_ties: bool = False,
                 all_windows: bool = False) -> None:  # fmt: skip
        self.spec, self.future, self.decay, self.shuffle = spec, max(1, future), decay, shuffle_ties
        self.index = {item: i for i, item in enumerate(catalogue)}
        self.action_weights = weights
        self.windows = []
        for person in sorted(split.train):
            seq = split.train[person]
            # The latest window, plus (with all_windows) earlier ones so long histories are not wasted.
            for end in range(len(seq), 1, -spec.max_len):
                self.windows.append(seq[max(0, end - spec.max_len - 1) : end])
                if not all_windows:
                    break
        self.lengths = np.array([len(w) - 1 for w in self.windows], dtype=np.int64)
        self.names = spec.input_names()
        self.build(None)

    def build(self, rng: np.random.Generator | None) -> None:
        """(Re)featurise, shuffling tied events first when enabled and ``rng`` is given."""
        windows = self.windows
        if self.shuffle and rng is not None:
            windows = [shuffle_ties(w, rng) for w in windows]
        width, n, k_max = self.spec.max_len, len(windows), self.future
        self.feats = featurize([w[:-1] for w in windows], self.spec, pad_to=width)
        self.targets = np.full((n, width, k_max), -1, dtype=np.int64)
        self.weights = np.zeros((n, width, k_max), dtype=np.float32)
        for row, window in enumerate(windows):
            ids = np.fromiter((self.index[e.item_id] for e in window), np.int64, len(window))
            wts = np.fromiter((self.action_weights.get(e.action, 1.0) * e.weight for e in window),
                              np.float32, len(window))  # fmt: skip
            m = len(window) - 1
            for k in range(1, min(k_max, m) + 1):
                count = m - k + 1
                self.targets[row, width - m : width - m + count, k - 1] = ids[k : k + count]
                self.weights[row, width - m : width - m + count, k - 1] = wts[k : k + count] * self.decay ** (k - 1)

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
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(a @ b.T, dim=1)
        ctx.save_for_backward(a, b, target, w, logp)
        return -(logp.gather(1, target) * w).sum(dim=1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
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


def drop_items(inputs: list[torch.Tensor], n_hashes: int, rate: float, gen: torch.Generator) -> list[torch.Tensor]:
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
