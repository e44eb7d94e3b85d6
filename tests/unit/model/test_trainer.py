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
from model.trainer import TrainConfig, train, train_model, validate
from testkit.models import model_state, tiny_config


def test_same_seed_same_model_different_seed_different(people: Any) -> None:
    split = leave_two_out(people)
    runs = [train_model(people, split, tiny_config(epochs=2, seed=s)) for s in (3, 3, 4)]
    a, b, c = (model_state(r.model) for r in runs)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert [h.loss for h in runs[0].history] == [h.loss for h in runs[1].history]
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_best_epoch_is_chosen_on_validation_only(people: Any) -> None:
    split = leave_two_out(people)
    catalogue = catalogue_of(people)
    valid = build_eval_set(split, catalogue, "valid")
    for smooth in (False, True):
        trained = train_model(people, split, tiny_config(epochs=6, smooth_selection=smooth))
        scores = np.array([h.valid["ndcg@10"] for h in trained.history])
        if smooth:  # each epoch scored with its neighbours
            scores = np.array([scores[max(0, i - 1) : i + 2].mean() for i in range(len(scores))])
        assert trained.best_epoch == len(scores) - int(np.argmax(scores[::-1]))  # ties: the later epoch
        # The returned model is the chosen epoch's, not the last one's.
        again = validate(trained.model, trained.spec, valid, catalogue)
        assert again["ndcg@10"] == pytest.approx(trained.best_valid["ndcg@10"], abs=1e-9)
        assert trained.best_valid == trained.history[trained.best_epoch - 1].valid


def test_purchases_weigh_more_than_clicks_more_than_browses(people: Any) -> None:
    split = leave_two_out(people)
    spec = train_model(people, split, tiny_config(epochs=1)).spec
    data = TrainWindows(
        split, spec, catalogue_of(split.train), {"browse": 1.0, "click": 2.0, "purchase": 4.0}
    )
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
    fresh = train_model(
        load_events(events, "ms"), leave_two_out(load_events(events, "ms")), tiny_config(epochs=1)
    )
    assert result.metrics["valid"]["ndcg@10"] > fresh.best_valid["ndcg@10"]


def test_training_windows_targets_and_tie_shuffling() -> None:
    from model.features import FeatureSpec, featurize
    from model.objective import session_order
    from schemas.sequence import SeqEvent

    stamps = [1, 2, 2, 2, 2, 3, 4, 5, 6, 7]
    seq = [SeqEvent(f"e{i}", ts * 1000, f"i{i}", "click", "web") for i, ts in enumerate(stamps)]
    tail = [SeqEvent("v", 8000, "v", "click", "web"), SeqEvent("t", 9000, "t", "click", "web")]
    split = leave_two_out({"p": [*seq, *tail]})
    spec = FeatureSpec(max_len=4)
    catalogue = [f"i{i}" for i in range(10)]
    data = TrainWindows(split, spec, catalogue, {}, future=2, decay=0.5, all_windows=True)
    # 10 training events, windows of 4 inputs stepping back: every event but the first is a target once.
    assert sorted(int(t) for t in data.targets[..., 0].ravel() if t >= 0) == list(range(1, 10))
    last = data.targets[0]  # the most recent window: inputs i5..i8, next items i6..i9, then i7..i9
    assert last[:, 0].tolist() == [6, 7, 8, 9] and last[:, 1].tolist() == [7, 8, 9, -1]
    assert data.weights[0, :, 1].tolist() == [0.5, 0.5, 0.5, 0.0]
    # A window's inputs are exactly what the runtime would feed for that history prefix.
    for row, end in ((0, 9), (1, 5)):
        expect = featurize([seq[:end]], spec, pad_to=4)
        assert all(data.feats[n][row].tolist() == expect[n][0].tolist() for n in spec.input_names())

    rng = np.random.default_rng(0)
    ts = np.array(stamps) * 1000
    person = np.zeros(len(ts), dtype=np.int64)
    orders = [session_order(ts, person, 0, rng) for _ in range(20)]
    for order in orders:  # only the tied block (indices 1..4, ts=2 s) moves
        assert sorted(order.tolist()) == list(range(10))
        assert order[0] == 0 and order[5:].tolist() == list(range(5, 10))
    assert len({tuple(o[1:5].tolist()) for o in orders}) > 1
    # Events of different people never mix, and a 1.5 s window joins one person's 1 s gaps.
    person[5:] = 1
    for _ in range(20):
        order = session_order(ts, person, 1.5, rng)
        assert set(order[:5].tolist()) == set(range(5)) and set(order[5:].tolist()) == set(range(5, 10))


def test_lean_softmax_cross_entropy_matches_autograd() -> None:
    """The hand-written backward must give autograd's gradients (multi-target, weighted)."""
    from model.objective import SoftmaxCE

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 9, (6, 3), generator=gen)
    w = torch.rand(6, 3, generator=gen, dtype=torch.float64)
    upstream = torch.rand(6, generator=gen, dtype=torch.float64)
    (SoftmaxCE.apply(a, b, target, w) * upstream).sum().backward()
    ga, gb = a.grad.clone(), b.grad.clone()  # type: ignore[union-attr]
    a.grad = b.grad = None
    ref = -(torch.log_softmax(a @ b.T, dim=1).gather(1, target) * w).sum(dim=1)
    (ref * upstream).sum().backward()
    assert torch.allclose(ga, a.grad) and torch.allclose(gb, b.grad)  # type: ignore[arg-type]
    assert torch.allclose(SoftmaxCE.apply(a, b, target, w), ref)


def test_cooccurrence_init_puts_items_used_together_close(people: Any) -> None:
    from model.objective import cooccurrence_vectors

    split = leave_two_out(people)
    items = catalogue_of(split.train)
    vecs = cooccurrence_vectors(split, items, width=8)
    assert vecs is not None and vecs.shape == (len(items), 8) and np.isfinite(vecs).all()
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    pos = {item: i for i, item in enumerate(items)}
    # Synthetic people walk one genre's items in order: neighbours in a genre vs across genres.
    same = float(unit[pos["g1-i3"]] @ unit[pos["g1-i4"]])
    other = float(unit[pos["g1-i3"]] @ unit[pos["g4-i4"]])
    assert same > other + 0.3
    assert cooccurrence_vectors(split, items, width=8, max_items=10) is None


def test_pretrain_max_items_bounds_the_cooccurrence_start(people: Any) -> None:
    """Catalogues above ``pretrain_max_items`` start from noise; at or below, from co-occurrence."""
    split = leave_two_out(people)
    items = len(catalogue_of(split.train))
    runs = [train_model(people, split, tiny_config(epochs=1, pretrain_max_items=n)) for n in (items, items - 1)]
    with_init, without = (model_state(r.model) for r in runs)
    assert not np.array_equal(with_init["item_tables.0.weight"], without["item_tables.0.weight"])
    assert TrainConfig().pretrain_max_items == 5000  # the default (MovieLens) behaviour is unchanged
