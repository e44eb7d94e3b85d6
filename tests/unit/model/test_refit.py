"""Refit: the epoch count is chosen on validation, then training runs again with the validation targets.

What a user relies on: the test target is never a training target, the refit run is exactly the
chosen epoch count on the grown split, the published validation numbers are the honest ones (the
selection run's), and the gate does not refuse a candidate because a promoted refit version is
measured on validation targets it trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.data import leave_two_out, platform_split, refit_split
from model.registry import Registry
from model.trainer import train, train_model
from testkit.models import model_state, tiny_config


def test_refit_split_trains_on_every_event_before_the_test_target_and_never_on_it(people: Any) -> None:
    platform = next(e.platform for seq in people.values() for e in seq)
    for split in (leave_two_out(people), platform_split(people, platform)):
        grown = refit_split(split)
        assert grown.valid == {} and grown.test == split.test
        for person, target in split.test.items():
            assert grown.train[person] == split.history(person, "test")
            assert grown.train[person][-len(split.between.get(person, ())) - 1] == split.valid[person]
            assert target not in grown.train[person]
        untouched = [p for p in split.train if p not in split.test]
        assert all(grown.train[p] == split.train[p] for p in untouched)


def test_refit_is_the_chosen_epoch_count_again_on_the_grown_split(people: Any) -> None:
    split = leave_two_out(people)
    selection = train_model(people, split, tiny_config(epochs=4, seed=2))
    refit = train_model(people, split, tiny_config(epochs=4, seed=2, refit=True))
    # The first run is the selection run itself: same history, epoch and validation numbers.
    assert [h.loss for h in refit.history] == [h.loss for h in selection.history]
    assert refit.best_epoch == selection.best_epoch and refit.best_valid == selection.best_valid
    assert refit.refit_epochs == selection.best_epoch >= 1
    # The weights are those of a plain run of that many epochs on the grown split, bit for bit.
    direct = train_model(people, refit_split(split), tiny_config(epochs=selection.best_epoch, seed=2))
    a, b, c = model_state(refit.model), model_state(direct.model), model_state(selection.model)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_a_refit_version_publishes_selection_validation_and_is_gated_like_with_like(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    cfg = tiny_config(epochs=3, seed=1, refit=True)
    first = train(events, tmp_path, cfg, time_unit="ms")
    manifest = Registry(tmp_path).manifest(first.version)
    metrics, training = manifest["metrics"], manifest["training"]
    assert training["refit_epochs"] == first.best_epoch
    assert metrics["valid"]["ndcg@10"] == pytest.approx(training["best_valid_torch"]["ndcg@10"], abs=1e-6)
    # The refit weights have seen the validation targets: their own validation is higher, which is why
    # it is not what the version reports (a precondition of the gate check below).
    assert metrics["valid_seen_in_training"]["ndcg@10"] > metrics["valid"]["ndcg@10"]
    # The same data and config again (deterministic: the same model) with the strict default gate.
    # Measured on the validation targets it trained on, the promoted version would look better than
    # it is and refuse its own twin; compared like with like, the twin is accepted.
    second = train(events, tmp_path, cfg, time_unit="ms")
    assert second.promoted and second.version != first.version
    compared = second.metrics["promoted_on_same_data"]
    assert compared["valid_ndcg@10"] == pytest.approx(metrics["valid"]["ndcg@10"], abs=1e-6)
    assert compared["measured_on_seen_targets"] > compared["valid_ndcg@10"]  # what would have refused it
