"""A trained PyTorch encoder and the vectors it gives, shared by the trainer and publishing.

Why a module of its own: ``trainer`` publishes what it trains and ``publish``
reads what was trained; with the result type here neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.encoder import EncoderConfig, InterestEncoder
from model.features import FeatureSpec, featurize, hash_items


@dataclass
class EpochLog:
    epoch: int
    loss: float
    valid: dict[str, float]
    seconds: float


@dataclass
class Trained:
    """A trained PyTorch model plus what the run learned about itself."""

    model: InterestEncoder
    spec: FeatureSpec
    enc_cfg: EncoderConfig
    history: list[EpochLog]
    best_epoch: int
    best_valid: dict[str, float]
    seconds: float
    stopped: str
    refit_epochs: int = 0  # > 0: trained again for this many epochs with the validation targets (see TrainConfig)


def person_vectors(
    model: InterestEncoder, sequences: list, spec: FeatureSpec, batch: int = 256
) -> np.ndarray:
    """Person vectors from the PyTorch model (eval mode), featurised like the runtime."""
    model.eval()
    order = np.argsort([min(len(s), spec.max_len) for s in sequences], kind="stable")
    out = np.zeros((len(sequences), model.cfg.dim), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            feats = featurize([sequences[i] for i in rows], spec)
            vecs = model(*(torch.from_numpy(feats[n]) for n in spec.input_names()))
            out[rows] = vecs.numpy()
    return out


def item_vectors(model: InterestEncoder, item_ids: list[str], spec: FeatureSpec) -> np.ndarray:
    """Unit item vectors from the PyTorch model for any item ids."""
    model.eval()
    hashed = torch.from_numpy(hash_items(item_ids, spec))
    with torch.no_grad():
        vecs = model.item_vectors(*(hashed[:, k] for k in range(spec.n_hashes)))
    return vecs.numpy()
