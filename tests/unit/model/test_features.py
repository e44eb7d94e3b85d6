"""featurize: the one definition of the model's inputs (trainer, export, eval and workers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.features import FeatureSpec, featurize, hash_items, item_inputs
from schemas.sequence import SeqEvent
from testkit.models import make_sequences

ROOT = str(Path(__file__).resolve().parents[3])


def ev(i: int, ts_s: float, item: str = "a", action: str = "click", platform: str = "web") -> SeqEvent:
    return SeqEvent(f"e{i}", int(ts_s * 1000), item, action, platform)


def test_hash_values_are_pinned() -> None:
    """Changing the hash silently would scramble every published model's item space."""
    assert hash_items(["item-1", "movie:42", "ü"], FeatureSpec()).tolist() == [
        [11030, 6301],
        [8343, 7968],
        [1294, 3012],
    ]
    spec = FeatureSpec(hash_buckets=1000, hash_seeds=(1, 2, 3))
    assert hash_items(["item-1", "movie:42", "ü"], spec).tolist() == [
        [768, 764, 758],
        [881, 394, 515],
        [216, 403, 773],
    ]


def test_hash_is_the_same_in_another_process() -> None:
    ids = [f"item-{i}" for i in range(50)]
    code = (
        "import json,sys; from model.features import FeatureSpec, hash_items; "
        f"print(json.dumps(hash_items({ids!r}, FeatureSpec()).tolist()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
        cwd=ROOT,
    )
    assert json.loads(out.stdout) == hash_items(ids, FeatureSpec()).tolist()


def test_hash_functions_are_independent_and_never_padding() -> None:
    spec = FeatureSpec(hash_buckets=64)
    hashed = hash_items([f"x{i}" for i in range(2000)], spec)
    assert hashed.min() >= 1 and hashed.max() <= 63
    # Two items colliding in one table rarely collide in the other.
    same0 = hashed[:, 0][:, None] == hashed[:, 0][None, :]
    same1 = hashed[:, 1][:, None] == hashed[:, 1][None, :]
    both = (same0 & same1).sum() - len(hashed)
    assert both < 0.05 * ((same0.sum() - len(hashed)) or 1)


def test_layout_left_padding_mask_gaps_and_vocab() -> None:
    spec = FeatureSpec(hash_buckets=128, platforms=("web", "app"), max_len=5)
    seqs = [
        [
            ev(0, 100.0, "a", "click", "web"),
            ev(1, 100.5, "b", "purchase", "app"),
            ev(2, 200.0, "c", "share", "tv"),
        ],
        [],
    ]
    f = featurize(seqs, spec)
    assert list(f) == spec.input_names()
    assert all(v.dtype == np.int64 and v.shape == (2, 3) for v in f.values())
    assert f["mask"].tolist() == [[1, 1, 1], [0, 0, 0]]
    assert f["action"][0].tolist() == [1, 3, 4]  # click, purchase, unknown -> "other"
    assert f["platform"][0].tolist() == [1, 2, 3]  # web, app, unknown -> "other"
    # first event: bucket 1; 0.5 s: < 1 s -> bucket 2; 99.5 s: in [60, 300) -> 2 + 3
    assert f["time_gap"][0].tolist() == [1, 2, 5]
    assert f["item_hash_0"][0].tolist() == hash_items(["a", "b", "c"], spec)[:, 0].tolist()
    assert not any(f[n][1].any() for n in spec.input_names())


def test_truncation_keeps_latest_events_and_their_true_gaps() -> None:
    spec = FeatureSpec(max_len=3)
    seq = [ev(i, 1000.0 * i, f"i{i}") for i in range(6)]
    f = featurize([seq], spec)
    assert f["item_hash_0"][0].tolist() == hash_items(["i3", "i4", "i5"], spec)[:, 0].tolist()
    assert 1 not in f["time_gap"][0].tolist()  # the event before the window is known
    assert featurize([seq], spec, max_len=6)["mask"].sum() == 6


def test_padding_length_does_not_change_real_columns() -> None:
    spec = FeatureSpec(max_len=40)
    seqs = make_sequences(20, seed=3)
    short = featurize(seqs, spec)
    long = featurize(seqs, spec, pad_to=40)
    width = short["mask"].shape[1]
    for name in spec.input_names():
        assert np.array_equal(long[name][:, -width:], short[name])
        assert not long[name][:, :-width].any()
    with pytest.raises(ValueError):
        featurize(seqs, spec, pad_to=width - 1)


def test_featurize_is_deterministic_and_order_preserving() -> None:
    spec = FeatureSpec(max_len=16)
    seqs = make_sequences(30, seed=5)
    a, b = featurize(seqs, spec), featurize(seqs, spec)
    assert all(np.array_equal(a[n], b[n]) for n in spec.input_names())
    one = featurize([seqs[7]], spec, pad_to=a["mask"].shape[1])
    assert all(np.array_equal(one[n][0], a[n][7]) for n in spec.input_names())


def test_spec_round_trips_through_json_and_validates() -> None:
    spec = FeatureSpec(hash_buckets=999, hash_seeds=(5, 6, 7), max_len=33, platforms=("web", "kiosk"))
    again = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.input_names() == [
        "item_hash_0",
        "item_hash_1",
        "item_hash_2",
        "action",
        "platform",
        "time_gap",
        "position",
        "mask",
    ]
    with pytest.raises(ValueError):
        FeatureSpec(hash_seeds=(1,))
    with pytest.raises(ValueError):
        FeatureSpec(gap_boundaries_s=(10, 1))
    with pytest.raises(ValueError):
        FeatureSpec.from_dict({**spec.to_dict(), "format": 99})


def test_item_inputs_work_for_unseen_ids() -> None:
    spec = FeatureSpec(hash_buckets=300)
    inputs = item_inputs(["never-seen", "x"], spec)
    assert list(inputs) == spec.item_input_names()
    assert all(v.shape == (2,) and v.dtype == np.int64 and (v > 0).all() for v in inputs.values())
