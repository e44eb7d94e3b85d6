"""Model lifecycle with a running worker: hot-swap, refusal, re-encode, rollback, periodic trainer.

Real embedded broker, real worker process, real SQLite, real registry and
onnxruntime; the new versions are real trained models.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from interest.produce import produce_events
from interest.synthetic import RawEvent, SyntheticTraffic
from model.registry import MANIFEST, Registry
from schemas.adapters import load_adapters
from streams.model_watch import announce
from testkit.helpers import WorkerProcess, events_seen, metric_value, run_cli, scan, wait_until
from testkit.models import train_tiny_model
from testkit.oracle import Expected, expected_profiles


@pytest.fixture(scope="session")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Another real model (other seed, other weights) in its own registry."""
    root = tmp_path_factory.mktemp("registry-b")
    return str(root), train_tiny_model(root, seed=1)


@pytest.fixture
def registry_with_two(tmp_path: Path, model_registry: tuple[str, str],
                      second_model: tuple[str, str]) -> tuple[Registry, str, str]:
    """A registry holding v1 (promoted) and v2 (published, not promoted)."""
    root, v1 = model_registry
    shutil.copytree(root, tmp_path / "registry")
    registry = Registry(tmp_path / "registry")
    v2 = registry.import_version(Registry(second_model[0]), second_model[1], promote=False, force=True)
    assert registry.promoted() == v1 and v2 != v1
    return registry, v1, v2


def applied_total(settings: Any) -> int:
    return sum(s.event_count for s in scan(settings, "-")["states"].values())


def wait_applied(settings: Any, total: int, what: str) -> None:
    wait_until(lambda: applied_total(settings) >= total, 90, interval=0.5, what=what)


def assert_exactly_once(settings: Any, oracle: dict[str, Expected], worker: WorkerProcess) -> None:
    states = scan(settings, "-")["states"]
    assert {p: s.event_count for p, s in states.items()} == {p: e.count for p, e in oracle.items()}
    for person, exp in oracle.items():
        assert [e.event_id for e in states[person].events] == exp.window(settings.seq_len), person
    text = worker.get("/metrics")[1]
    produced = sum(e.count for e in oracle.values())
    applied = metric_value(text, "interest_events_applied_total")
    dups = metric_value(text, "interest_events_duplicate_total")
    print(f"events produced {produced}, applied {applied:.0f}, duplicates {dups:.0f}")
    assert dups == 0, "a swap made the worker process an event twice"


def test_hot_swap_mid_stream_reencode_and_rollback(
    make_settings: Any, registry_with_two: tuple[Registry, str, str], tmp_path: Path
) -> None:
    registry, v1, v2 = registry_with_two
    settings = make_settings(registry=str(registry.root), model_check_interval_s=3600)
    traffic = SyntheticTraffic(load_adapters(), users=30, items=300, seed=31)
    events = list(traffic.events(900, int(time.time() * 1000) - 3_600_000, step_ms=100))
    quiet = {f"u{i}" for i in range(5)}  # people who act only before the swap

    def loud(e: Any) -> bool:
        return (e.person_id if isinstance(e, RawEvent) else str(e[1]["person_id"])) not in quiet

    before = events[:300]
    during, after = [e for e in events[300:600] if loud(e)], [e for e in events[600:] if loud(e)]
    events = before + during + after

    with WorkerProcess(settings, tmp_path) as worker:
        produce_events(settings, before)
        first = expected_profiles(before)
        wait_applied(settings, sum(e.count for e in first.values()), "phase 1 applied")
        assert not scan(settings, v2)["profiles"], "nothing written with v2 before it was promoted"

        # Promote v2 while events keep flowing; the worker hears the announcement (the periodic
        # registry check is an hour away here) and swaps between two batches.
        producer = threading.Thread(target=produce_events, args=(settings, during), kwargs={"rate": 300})
        producer.start()
        promoted = run_cli(settings, "models", "promote", v2, "--registry", str(registry.root))
        assert promoted == {"promoted": v2, "announced": True}
        wait_until(lambda: worker.get("/ready")[1]["model_version"] == v2, 60, what="worker swapped to v2")
        producer.join()
        produce_events(settings, after)
        oracle = expected_profiles(events)
        wait_applied(settings, sum(e.count for e in oracle.values()), "all phases applied")
        assert_exactly_once(settings, oracle, worker)

        old_rows, new_rows = scan(settings, v1)["profiles"], scan(settings, v2)["profiles"]
        upto_during = expected_profiles(before + during)
        touched_after = {p for p, e in oracle.items() if e.count > upto_during.get(p, Expected()).count}
        untouched = {p for p, e in oracle.items() if p in first and e.count == first[p].count}
        print(f"people {len(oracle)}: {len(touched_after)} acted after the swap, {len(untouched)} only before; "
              f"rows v1 {len(old_rows)}, v2 {len(new_rows)}")
        assert touched_after and untouched
        for person in touched_after:  # their next event wrote a row of the new version, complete
            assert new_rows[person].event_count == oracle[person].count, person
        for person in untouched:  # nobody rewrote them: old version only, complete
            assert person not in new_rows and old_rows[person].event_count == oracle[person].count
        assert all(row.event_count <= oracle[p].count for p, row in old_rows.items())

        # Re-encode: interrupted after 5 people, resumed, then every stored person has a v2 row.
        part = run_cli(settings, "reencode", "--version", v2, "--max-people", "5", "--page", "2")
        assert part["complete"] is False and part["reencoded"] == 5 and part["coverage"] < 1.0
        full = run_cli(settings, "reencode", "--version", v2, "--page", "4")
        print(f"reencode: {part['reencoded']} then {full['reencoded']} people, coverage {full['coverage']}")
        assert full["complete"] is True and full["resumed_after"] is not None and full["coverage"] == 1.0
        shown = run_cli(settings, "models", "show", v2, "--registry", str(registry.root))
        assert shown["coverage"] == {"version": v2, "people": len(oracle), "profiles": len(oracle), "coverage": 1.0}
        rows = scan(settings, v2)
        from model.runtime import EncoderRuntime

        runtime = EncoderRuntime.load(registry.root, v2, use_gpu="no")
        some = sorted(untouched)[:5]
        expected = runtime.encode([rows["states"][p].events for p in some])
        got = np.stack([rows["profiles"][p].vector for p in some])
        assert np.allclose(got, expected, atol=1e-5), "re-encoded rows are the v2 encoding of the stored sequence"
        from model.interests import encode_with_interests

        _, want = encode_with_interests(runtime, [rows["states"][p].events for p in some], settings.interests_max,
                                        settings.seq_len)
        assert all(rows["profiles"][p].interests for p in some), "a re-encoded row carries its interests"
        assert [[(i.items, round(i.weight, 5)) for i in rows["profiles"][p].interests] for p in some] == [
            [(i.items, round(i.weight, 5)) for i in w] for w in want], "re-encode writes the worker's interests"

        # Roll back: the worker swaps back to v1 the same way.
        rolled = run_cli(settings, "models", "rollback", "--registry", str(registry.root))
        assert rolled["promoted"] == v1 and rolled["announced"] is True
        wait_until(lambda: worker.get("/ready")[1]["model_version"] == v1, 60, what="worker rolled back to v1")
        assert metric_value(worker.get("/metrics")[1], "interest_model_swaps_total") == 3  # start, v2, v1


def _corrupt(registry: Registry, version: str) -> None:
    path = registry.path(version) / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _wrong_dimension(registry: Registry, version: str) -> None:
    path = registry.path(version) / MANIFEST
    import json

    manifest = json.loads(path.read_text())
    manifest["dimension"] = manifest["dimension"] // 2
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", [_corrupt, _wrong_dimension], ids=["corrupted-file", "wrong-dimension"])
def test_damaged_version_is_refused_and_the_worker_keeps_serving(
    make_settings: Any, registry_with_two: tuple[Registry, str, str], tmp_path: Path, damage: Any
) -> None:
    registry, v1, v2 = registry_with_two
    settings = make_settings(registry=str(registry.root), model_check_interval_s=3600)
    traffic = SyntheticTraffic(load_adapters(), users=20, items=200, seed=41)
    events = list(traffic.events(400, int(time.time() * 1000) - 3_600_000, step_ms=100))
    with WorkerProcess(settings, tmp_path) as worker:
        produce_events(settings, events[:200])
        # Damage after promotion (a bad disk, a half-synced copy): promote checks, the worker must too.
        registry.promote(v2)
        damage(registry, v2)
        announce(settings, v2, "promote")
        wait_until(lambda: metric_value(worker.get("/metrics")[1], "interest_model_refused_total") >= 1, 60,
                   what="refusal counted")
        produce_events(settings, events[200:])
        oracle = expected_profiles(events)
        wait_applied(settings, sum(e.count for e in oracle.values()), "events applied after the refusal")
        assert worker.get("/ready") == (200, {"ready": True, "model_version": v1})
        rows = scan(settings, v1)["profiles"]
        assert {p: r.event_count for p, r in rows.items()} == {p: e.count for p, e in oracle.items()}
        assert not scan(settings, v2)["profiles"]
        refusal = [line for line in worker.logs().splitlines() if "REFUSED" in line]
        print(f"{damage.__name__}: refused with: {refusal[0] if refusal else None}")
        assert refusal and v2 in refusal[0] and f"still serving {v1}" in refusal[0]


def test_trainer_round_publishes_a_warm_started_version_that_workers_adopt(
    make_settings: Any, model_registry: tuple[str, str], tmp_path: Path
) -> None:
    root, v1 = model_registry
    shutil.copytree(root, tmp_path / "registry")
    registry = Registry(tmp_path / "registry")
    settings = make_settings(registry=str(registry.root), model_check_interval_s=3600)
    traffic = SyntheticTraffic(load_adapters(), users=40, items=200, seed=51)
    events = list(traffic.events(800, int(time.time() * 1000) - 3_600_000, step_ms=100))
    with WorkerProcess(settings, tmp_path) as worker:
        produce_events(settings, events)
        oracle = expected_profiles(events)
        total = sum(e.count for e in oracle.values())

        wait_until(lambda: events_seen(worker) >= total, 90, interval=0.5, what="every event seen by the update stage")
        skipped = run_cli(settings, "trainer", "--once", "--min-people", "1000", "--registry", str(registry.root))
        assert skipped["published"] is False and skipped["reason"].startswith("not enough data")
        summary = run_cli(settings, "trainer", "--once", "--epochs", "1", "--min-people", "10", "--force",
                          "--registry", str(registry.root))
        print(f"trainer round: {summary['people']} people, {summary['events']} events, "
              f"version {summary.get('version')}, {summary.get('seconds')}s")
        assert summary["published"] is True and summary["warm_start"] is True and summary["parent"] == v1
        assert summary["announced"] is True and summary["people"] == len(oracle)
        v3 = summary["version"]
        assert registry.promoted() == v3 and registry.manifest(v3)["parent"] == v1
        wait_until(lambda: worker.get("/ready")[1]["model_version"] == v3, 60, what="worker adopted the new version")


def test_version_whose_vectors_the_store_cannot_hold_is_refused(
    make_settings: Any, registry_with_two: tuple[Registry, str, str]
) -> None:
    """A store initialised for 64-dim vectors must not get a model it cannot write (every batch would fail)."""
    import asyncio

    from streams.model_holder import ModelHolder

    registry, v1, v2 = registry_with_two
    settings = make_settings(registry=str(registry.root))
    store_dim: list[int | None] = [None]
    holder = ModelHolder(settings, lambda: store_dim[0])
    assert asyncio.run(holder.load()) and holder.version == v1
    store_dim[0] = holder.current().dim // 2  # as if the store had been initialised for another model
    registry.promote(v2)
    assert asyncio.run(holder.refresh()) is False
    assert holder.version == v1 and "holds" in holder.refused[v2][0]
    store_dim[0] = holder.current().dim
    holder.refused.clear()
    assert asyncio.run(holder.refresh()) is True and holder.version == v2
