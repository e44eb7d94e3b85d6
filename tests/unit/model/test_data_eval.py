"""Event loading and the fixed evaluation protocol (split, masking, full ranking)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.data import detect_time_unit, leave_two_out, load_events, movielens_path
from model.evaluate import EvalSet, build_eval_set, catalogue_of, popularity_metrics, vector_metrics


def test_csv_jsonl_and_inter_files_load_alike(tmp_path: Path) -> None:
    rows = [("u1", "a", 100), ("u1", "b", 50), ("u2", "a", 70), ("u1", "c", 100)]
    csv_path = tmp_path / "e.csv"
    csv_path.write_text(
        "user_id,item_id,timestamp,action\n" + "".join(f"{u},{i},{t},purchase\n" for u, i, t in rows)
    )
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"person_id": u, "item_id": i, "ts_ms": t * 1000}) + "\n" for u, i, t in rows)
    )
    inter = tmp_path / "e.inter"
    inter.write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t3\t{t}\n" for u, i, t in rows)
    )
    for path, unit in ((csv_path, "s"), (jsonl, "ms"), (inter, "s")):
        people = load_events(path, unit)
        # time order, ties (a@100 / c@100) kept in file order
        assert [e.item_id for e in people["u1"]] == ["b", "a", "c"], path
        assert [e.ts_ms for e in people["u1"]] == [50_000, 100_000, 100_000]
    assert load_events(csv_path)["u1"][0].action == "purchase"
    assert load_events(inter)["u1"][0].action == "click"  # default when the file has none


def test_time_units_and_iso_strings() -> None:
    assert detect_time_unit([1_700_000_000]) == "s"
    assert detect_time_unit([1_700_000_000_000]) == "ms"
    assert detect_time_unit([1_700_000_000_000_000]) == "us"
    people = load_events(
        [
            {"user_id": "p", "item_id": "x", "timestamp": "2024-01-01T00:00:01Z"},
            {"user_id": "p", "item_id": "y", "timestamp": "2024-01-01T00:00:00+00:00"},
        ]
    )
    assert [e.item_id for e in people["p"]] == ["y", "x"]
    assert people["p"][0].ts_ms == 1_704_067_200_000
    with pytest.raises(ValueError, match="item_id"):
        load_events([{"user_id": "p", "timestamp": 1}])


def test_movielens_is_found_without_importing_recbole() -> None:
    """In a fresh interpreter: another test of the session may have imported recbole itself."""
    import subprocess
    import sys

    path = movielens_path()
    assert path.name == "ml-100k.inter" and path.is_file()
    code = "import sys; from model.data import movielens_path; movielens_path(); print('recbole' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_split_leaves_out_people_with_fewer_than_three_events() -> None:
    people = load_events(
        [
            {"user_id": u, "item_id": f"i{k}", "timestamp": 1_000 + k}
            for u, n in (("short", 2), ("long", 5))
            for k in range(n)
        ]
    )
    split = leave_two_out(people)
    assert set(split.test) == {"long"} and "short" in split.train
    assert split.test["long"].item_id == "i4" and split.valid["long"].item_id == "i3"
    assert [e.item_id for e in split.history("long", "test")] == ["i0", "i1", "i2", "i3"]
    assert [e.item_id for e in split.history("long", "valid")] == ["i0", "i1", "i2"]


def _eval_set(history: list[list[int]], targets: list[int]) -> EvalSet:
    return EvalSet(
        [f"p{i}" for i in range(len(targets))],
        [[] for _ in targets],
        [np.asarray(h, dtype=np.int64) for h in history],
        np.asarray(targets),
    )


def test_full_ranking_masks_history_but_not_the_target() -> None:
    items = np.eye(4, dtype=np.float32)
    person = np.array([[0.9, 0.8, 0.7, 0.1]], dtype=np.float32)  # prefers 0 > 1 > 2 > 3
    # target 2 ranks third; masking item 0 (history) moves it to second place
    assert vector_metrics(person, items, _eval_set([[]], [2]))["hr@10"] == 1.0
    plain = vector_metrics(person, items, _eval_set([[]], [2]), k=2)
    masked = vector_metrics(person, items, _eval_set([[0]], [2]), k=2)
    assert plain["hr@2"] == 0.0 and masked["hr@2"] == 1.0
    assert masked["ndcg@2"] == pytest.approx(1 / np.log2(3))
    # a target that is also in the history (re-consumption) stays rankable
    again = vector_metrics(person, items, _eval_set([[0, 2]], [0]), k=1)
    assert again["ndcg@1"] == 1.0


def test_ties_never_help_a_model() -> None:
    items = np.ones((50, 2), dtype=np.float32)
    person = np.ones((1, 2), dtype=np.float32)
    assert vector_metrics(person, items, _eval_set([[]], [49]))["hr@10"] == 0.0  # a constant scorer
    items[49, 0] = 1.5
    assert vector_metrics(person, items, _eval_set([[]], [49]))["ndcg@10"] == 1.0
    items[49, 0] = np.nan
    assert vector_metrics(person, items, _eval_set([[]], [49]))["hr@10"] == 0.0


def test_popularity_baseline_counts_only_events_before_the_targets() -> None:
    rows = [
        {"user_id": f"u{u}", "item_id": item, "timestamp": t}
        for u in range(3)
        for t, item in enumerate(["pop", "pop2", f"own{u}", "hidden"])
    ]
    people = load_events(rows, "s")
    split = leave_two_out(people)
    cat = catalogue_of(people)
    test = build_eval_set(split, cat, "test")
    # "hidden" is every test target but never seen before, so popularity cannot rank it first.
    assert popularity_metrics(split, cat, test, "test", k=1)["hr@1"] == 0.0
