"""Trainer: determinism, validation-only epoch selection, weighting, warm starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.data import leave_two_out, load_events
from model.evaluate import build_eval_set, catalogue_of
from model.objective import TrainWindows
from model.registry import Registry
from model.trainer import train, train_model, validate
from tests.model.conftest import tiny_config


@pytest.fixture(scope="module")
def people(events: list[dict[str, Any]]) -> Any:
    return load_events(events, "ms")


def _state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def test_same_seed_same_model_different_seed_different(people: Any) -> None:
    split = leave_two_out(people)
    runs = [train_model(people, split, tiny_config(epochs=2, seed=s)) for s in (3, 3, 4)]
    a, b, c = (_state(r.model) for r in runs)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert [h.loss for h in runs[0].history] == [h.loss for h in runs[1].history]
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_best_epoch_is_chosen_on_validation_only(people: Any) -> None:
    split = leave_two_out(people)
    trained = train_model(people, split, tiny_config(epochs=6))
    scores = [h.valid["ndcg@10"] for h in trained.history]
    assert trained.best_epoch == 1 + int(np.argmax(scores))
    # The returned model is the best epoch's, not the last one's.
    again = validate(trained.model, trained.spec, build_eval_set(split, catalogue_of(people), "valid"),
                     catalogue_of(people))  # fmt: skip
    assert again["ndcg@10"] == pytest.approx(trained.best_valid["ndcg@10"], abs=1e-9)


def test_purchases_weigh_more_than_clicks_more_than_browses(people: Any) -> None:
    split = leave_two_out(people)
    spec = train_model(people, split, tiny_config(epochs=1)).spec
    data = TrainWindows(split, spec, catalogue_of(split.train), {"browse": 1.0, "click": 2.0, "purchase": 4.0})
    trainable = [split.train[p] for p in sorted(split.train) if len(split.train[p]) >= 2]
    seen: dict[str, set[float]] = {}
    for row, seq in enumerate(trainable):
        targets = seq[-(spec.max_len + 1) :][1:]
        assert (data.targets[row, : spec.max_len - len(targets)] == -1).all()  # padding is never a target
        for event, weight in zip(targets, data.weights[row, -len(targets) :, 0], strict=True):
            seen.setdefault(event.action, set()).add(float(weight))
    assert seen == {"purchase": {4.0}, "click": {2.0}, "browse": {1.0}}


def test_learns_more_than_popularity(published: tuple[Path, Any]) -> None:
    metrics = published[1].metrics
    assert metrics["valid"]["ndcg@10"] > metrics["popularity"]["valid"]["ndcg@10"] + 0.05
    assert metrics["test"]["users"] == 80


def test_sampled_softmax_and_time_budget(people: Any) -> None:
    split = leave_two_out(people)
    trained = train_model(people, split, tiny_config(epochs=50, negatives=8, time_budget_s=0.01))
    assert trained.stopped == "time budget" and len(trained.history) == 1
    assert np.isfinite(trained.history[0].loss)


def test_warm_start_records_its_parent(registry_copy: Any, events: list[dict[str, Any]]) -> None:
    root, parent = registry_copy()
    result = train(events, root, tiny_config(epochs=1), from_version=parent, time_unit="ms", force=True)
    manifest = Registry(root).manifest(result.version)
    assert manifest["parent"] == parent and manifest["training"]["from"] == parent
    assert Registry(root).promoted() == result.version
    # Warm-started from a trained model, one epoch already beats a fresh one-epoch model.
    fresh = train_model(load_events(events, "ms"), leave_two_out(load_events(events, "ms")), tiny_config(epochs=1))
    assert result.metrics["valid"]["ndcg@10"] > fresh.best_valid["ndcg@10"]


def test_training_windows_targets_and_tie_shuffling() -> None:
    from model.features import FeatureSpec
    from model.objective import shuffle_ties
    from schemas.sequence import SeqEvent

    seq = [SeqEvent(f"e{i}", ts, f"i{i}", "click", "web") for i, ts in enumerate([1, 2, 2, 2, 2, 3, 4, 5, 6, 7])]
    split = leave_two_out({"p": [*seq, SeqEvent("v", 8, "v", "click", "web"), SeqEvent("t", 9, "t", "click", "web")]})
    spec = FeatureSpec(max_len=4)
    catalogue = [f"i{i}" for i in range(10)]
    data = TrainWindows(split, spec, catalogue, {}, future=2, decay=0.5, all_windows=True)
    # 10 training events, windows of 4 inputs stepping back: every event but the first is a target once.
    assert sorted(int(t) for t in data.targets[..., 0].ravel() if t >= 0) == list(range(1, 10))
    last = data.targets[0]  # the most recent window: inputs i5..i8, next items i6..i9, then i7..i9
    assert last[:, 0].tolist() == [6, 7, 8, 9] and last[:, 1].tolist() == [7, 8, 9, -1]
    assert data.weights[0, :, 1].tolist() == [0.5, 0.5, 0.5, 0.0]
    rng = np.random.default_rng(0)
    shuffled = [shuffle_ties(seq, rng) for _ in range(20)]
    assert all([e.ts_ms for e in s] == [e.ts_ms for e in seq] for s in shuffled)  # still in time order
    assert all(s[0] is seq[0] and s[5:] == seq[5:] for s in shuffled)  # only the tied block moves
    assert len({tuple(e.item_id for e in s[1:5]) for s in shuffled}) > 1
