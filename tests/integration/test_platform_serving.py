"""Platform versions with a live worker: served beside the shared version, hot-swapped, queried,
re-encoded and rolled back per platform; refused (gate or checks) while the shared one keeps serving.

Real embedded broker, real worker process, real SQLite, real registry and onnxruntime; every version
is a real trained model (the platform ones fine-tuned from the shared one on its ``tv`` events).
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from interest.produce import produce_events
from interest.synthetic import SyntheticTraffic
from model.registry import Registry
from model.runtime import EncoderRuntime
from schemas.adapters import load_adapters
from streams.model_watch import announce
from testkit.helpers import WorkerProcess, events_seen, metric_value, run_cli, scan, settings_env, wait_until
from testkit.models import tiny_rows, train_tiny_platform_model
from testkit.oracle import expected_profiles


@pytest.fixture(scope="module")
def platform_registry(tmp_path_factory: pytest.TempPathFactory, model_registry: tuple[str, str]) -> tuple[
        Path, str, str, str]:
    """The shared v1 (promoted), tv1 fine-tuned from it (promoted for tv), tv2 (published, not promoted)."""
    root = tmp_path_factory.mktemp("platform-registry") / "registry"
    shutil.copytree(model_registry[0], root)
    v1 = model_registry[1]
    tv1 = train_tiny_platform_model(root, v1, "tv", lr=1e-2, epochs=3)
    tv2 = train_tiny_platform_model(root, v1, "tv", seed=1, promote=False, epochs=1)
    return root, v1, tv1, tv2


@pytest.fixture
def registry(platform_registry: tuple[Path, str, str, str], tmp_path: Path) -> tuple[Registry, str, str, str]:
    root, v1, tv1, tv2 = platform_registry
    shutil.copytree(root, tmp_path / "registry")
    reg = Registry(tmp_path / "registry")
    assert reg.promoted() == v1 and reg.promoted("tv") == tv1
    return reg, v1, tv1, tv2


def applied(settings: Any) -> int:
    return sum(s.event_count for s in scan(settings, "-")["states"].values())


def counts(settings: Any, version: str) -> dict[str, int]:
    return {p: r.event_count for p, r in scan(settings, version)["profiles"].items()}


def platform_version(worker: WorkerProcess) -> Any:
    return (worker.get("/stats")[1] or {}).get("platform_versions", {}).get("tv")


def test_platform_version_served_beside_shared_swapped_queried_reencoded_rolled_back(
    make_settings: Any, registry: tuple[Registry, str, str, str], tmp_path: Path
) -> None:
    reg, v1, tv1, tv2 = registry
    settings = make_settings(registry=str(reg.root), model_check_interval_s=3600, platforms_served=["tv"])
    traffic = SyntheticTraffic(load_adapters(), users=25, items=300, seed=61)
    events = list(traffic.events(600, int(time.time() * 1000) - 3_600_000, step_ms=100))
    first, second = events[:350], events[350:]
    with WorkerProcess(settings, tmp_path) as worker:
        assert worker.get("/stats")[1]["platform_versions"] == {"tv": tv1}
        produce_events(settings, first)
        oracle = expected_profiles(first)
        wait_until(lambda: applied(settings) >= sum(e.count for e in oracle.values()), 90, what="phase 1")
        want = {p: e.count for p, e in oracle.items()}
        assert counts(settings, v1) == want
        wait_until(lambda: counts(settings, tv1) == want, 10, what="a tv1 row for every changed person")
        # The platform rows are the platform model's encoding of the same stored sequence.
        rows = scan(settings, tv1)
        some = sorted(rows["profiles"])[:6]
        runtime = EncoderRuntime.load(reg.root, tv1, use_gpu="no")
        expected = runtime.encode([rows["states"][p].events for p in some])
        assert np.allclose(np.stack([rows["profiles"][p].vector for p in some]), expected, atol=1e-5)
        shared_rows = scan(settings, v1)["profiles"]
        assert not np.allclose(shared_rows[some[0]].vector, rows["profiles"][some[0]].vector), "two spaces"

        # Queries per platform: the platform's vector and item index; without --platform the shared ones.
        person = some[0]
        assert run_cli(settings, "profile", person, "--json")["model_version"] == v1
        assert run_cli(settings, "profile", person, "--platform", "tv", "--json")["model_version"] == tv1
        rec = run_cli(settings, "recommend", person, "--platform", "tv", "--json", "-k", "5")
        tv_items = set(reg.item_index(tv1)[0])
        assert rec["model_version"] == tv1 and rec["platform"] == "tv" and len(rec["items"]) == 5
        assert {i["item_id"] for i in rec["items"]} <= tv_items
        shared = run_cli(settings, "recommend", person, "--json", "-k", "5")
        assert shared["model_version"] == v1 and "platform" not in shared

        # Hot-swap the platform version only: the shared one stays.
        promoted = run_cli(settings, "models", "promote", tv2, "--registry", str(reg.root))
        assert promoted == {"promoted": tv2, "platform": "tv", "announced": True}
        wait_until(lambda: platform_version(worker) == tv2, 60, what="worker swapped tv to tv2")
        assert worker.get("/ready")[1]["model_version"] == v1
        produce_events(settings, second)
        oracle = expected_profiles(events)
        wait_until(lambda: applied(settings) >= sum(e.count for e in oracle.values()), 90, what="phase 2")
        touched = {p for p, e in oracle.items() if e.count > want.get(p, 0)}
        tv2_rows = counts(settings, tv2)
        assert touched and all(tv2_rows[p] == oracle[p].count for p in touched)
        assert counts(settings, v1) == {p: e.count for p, e in oracle.items()}

        # Re-encode and coverage of the platform version.
        full = run_cli(settings, "reencode", "--platform", "tv", "--page", "7")
        assert full["version"] == tv2 and full["complete"] is True and full["coverage"] == 1.0
        shown = run_cli(settings, "models", "show", "--platform", "tv", "--registry", str(reg.root))
        assert shown["version"] == tv2 and shown["platform"] == "tv" and shown["parent"] == v1
        assert shown["coverage"]["coverage"] == 1.0 and shown["coverage"]["people"] == len(oracle)

        # Roll the platform back: the worker follows, the shared pointer never moved.
        rolled = run_cli(settings, "models", "rollback", "--platform", "tv", "--registry", str(reg.root))
        assert rolled["promoted"] == tv1 and rolled["platform"] == "tv" and rolled["announced"] is True
        wait_until(lambda: platform_version(worker) == tv1, 60, what="worker rolled tv back to tv1")
        assert reg.promoted() == v1 and worker.get("/ready")[1]["model_version"] == v1


def test_platform_candidate_refused_while_shared_keeps_serving(
    make_settings: Any, registry: tuple[Registry, str, str, str], tmp_path: Path
) -> None:
    reg, v1, tv1, tv2 = registry
    settings = make_settings(registry=str(reg.root), model_check_interval_s=3600, platforms_served=["tv"])
    traffic = SyntheticTraffic(load_adapters(), users=20, items=300, seed=71)
    events = list(traffic.events(400, int(time.time() * 1000) - 3_600_000, step_ms=100))
    path = tmp_path / "history.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["user_id", "item_id", "ts_ms", "action", "platform"])
        writer.writeheader()
        writer.writerows({k: r[k if k != "ts_ms" else "timestamp"] for k in writer.fieldnames} for r in tiny_rows(0))
    with WorkerProcess(settings, tmp_path) as worker:
        produce_events(settings, events[:200])
        # 1. The gate: a fine-tune that learned nothing (lr 0: the parent's weights) is worse than the promoted
        #    tv1 on tv's held-out events and is refused; nothing is published, no pointer moves.
        before = reg.versions()
        proc = subprocess.run(
            [sys.executable, "-m", "interest.cli", "train", "--events", str(path), "--registry", str(reg.root),
             "--platform", "tv", "--from", v1, "--lr", "0", "--epochs", "1", "--threads", "1"],
            env=settings_env(settings), capture_output=True, text=True, timeout=300)
        print("gate:", proc.stderr.strip().splitlines()[-1])
        assert proc.returncode == 2 and "worse than the baseline's for platform tv" in proc.stderr
        assert reg.versions() == before and reg.promoted("tv") == tv1 and reg.promoted() == v1
        # 2. The checks: a promoted platform version damaged on disk is refused by the worker, which keeps
        #    serving tv1 and the shared v1.
        reg.promote(tv2)
        model = reg.path(tv2) / "model.onnx"
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
        announce(settings, tv2, "promote", {"platform": "tv"})
        wait_until(lambda: metric_value(worker.get("/metrics")[1], "interest_model_refused_total") >= 1, 60,
                   what="refusal counted")
        produce_events(settings, events[200:])
        oracle = expected_profiles(events)
        want = {p: e.count for p, e in oracle.items()}
        wait_until(lambda: applied(settings) >= sum(want.values()), 90, what="events applied after the refusal")
        assert worker.get("/ready") == (200, {"ready": True, "model_version": v1})
        assert platform_version(worker) == tv1
        assert counts(settings, v1) == want and counts(settings, tv1) == want
        assert not scan(settings, tv2)["profiles"]
        refusal = [line for line in worker.logs().splitlines() if "REFUSED" in line]
        print("refused:", refusal[0] if refusal else None)
        assert refusal and f"platform tv model version {tv2} REFUSED, still serving {tv1}" in refusal[0]


def test_trainer_refreshes_the_shared_model_then_each_platform(
    make_settings: Any, registry: tuple[Registry, str, str, str], tmp_path: Path
) -> None:
    reg, v1, tv1, _ = registry
    settings = make_settings(registry=str(reg.root), model_check_interval_s=3600, platforms_served=["tv"])
    traffic = SyntheticTraffic(load_adapters(), users=40, items=200, seed=51)
    events = list(traffic.events(800, int(time.time() * 1000) - 3_600_000, step_ms=100))
    with WorkerProcess(settings, tmp_path) as worker:
        produce_events(settings, events)
        oracle = expected_profiles(events)
        total = sum(e.count for e in oracle.values())

        wait_until(lambda: events_seen(worker) >= total, 90, interval=0.5, what="every event seen by the update stage")
        summary = run_cli(settings, "trainer", "--once", "--epochs", "1", "--min-people", "3", "--force",
                          "--registry", str(reg.root))
        tv = summary["platforms"]["tv"]
        print(f"trainer round: shared {summary.get('version')} ({summary.get('seconds')}s), "
              f"tv {tv.get('version')} ({tv.get('seconds')}s, {tv['people']} people)")
        assert summary["published"] is True and summary["parent"] == v1
        v2 = summary["version"]
        assert tv["published"] is True and tv["parent"] == v2 and tv["previous"] == tv1 and tv["announced"]
        assert reg.promoted() == v2 and reg.promoted("tv") == tv["version"]
        manifest = reg.manifest(tv["version"])
        assert manifest["parent"] == v2 and manifest["platform"] == "tv"
        wait_until(lambda: worker.get("/ready")[1]["model_version"] == v2
                   and platform_version(worker) == tv["version"], 60, what="worker adopted both versions")
