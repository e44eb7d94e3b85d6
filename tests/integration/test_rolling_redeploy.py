"""Rolling redeploy under continuous load loses nothing and applies nothing twice.

Real worker processes share one consumer group on the embedded broker and a
SQLite store while a producer thread keeps sending multi-platform traffic.
Each worker in turn gets SIGTERM, a successor is started and must be ready
before the next one goes (what a Kubernetes rollout does, one pod at a time),
with one-process workers and with ``--split`` ones. The first one gets its
SIGTERM while the store is locked for 3 s (it must wait, write and commit its
batch in flight, not abandon it), the last one is SIGKILLed (its uncommitted
batches are redelivered and must be dropped as duplicates). After the load
stops and the group caught up, the store must equal the oracle computed from
the produced events alone. The harness is ``testkit/rolling.py``;
``python -m bench.rolling`` runs it at a larger scale.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from schemas.settings import Settings
from testkit.rolling import RollingConfig, public_report, run_rolling


@pytest.mark.parametrize("split", [False, True], ids=["one-process", "split"])
def test_replacing_every_worker_under_load_loses_and_duplicates_nothing(
    split: bool,
    make_settings: Callable[..., Settings],
    model_registry: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry, version = model_registry
    # The default window (50): people with longer histories evict, as in production; the
    # comparison is exact on the kept window and bounded on the counts (testkit.chaos.window_problems).
    settings = make_settings(registry=registry, person_partitions=4)
    # --split: two pods of three processes each (the parent and one per stage) on the same 2 cores; a pod's
    # SIGKILL kills all three, its SIGTERM goes to the parent, which forwards it.
    cfg = RollingConfig(workers=2 if split else 3, split=split, rate=120.0, users=80, items=300, seed=3,
                        warmup_s=2.0, settle_s=1.0, catch_up_s=90.0, ready_timeout_s=60.0, stop_timeout_s=40.0,
                        hold_store_s=3.0, sigkill_last=1)
    report = run_rolling(settings, version, cfg, tmp_path / "logs")
    counts = public_report(report)
    with capsys.disabled():
        print("\nrolling redeploy:", json.dumps({k: v for k, v in counts.items() if k != "replacement_details"}))
        print("replacements:", "; ".join(
            f"{r['how']}: exit {r['exit_code']}, max backlog {r['max_backlog']} events, freshness p99 <= "
            f"{r['freshness_p99_s']} s" for r in counts["replacement_details"]))

    detail = json.dumps(counts, indent=1)
    assert report["replacements"] == cfg.workers
    assert report["broker_messages"] == report["produced_events"] + report["produced_links"], detail
    assert report["people"] > 0 and report["produced_links"] > 0, "load must include identity links"
    first, *_, last = report["replacement_details"]
    assert report["killed_workers"] == 0, f"a worker did not finish its batch and exit on SIGTERM: {detail}"
    assert first["exit_code"] == 0, detail
    assert first["exited_while_store_locked"] is False, f"the worker abandoned its batch in flight: {detail}"
    assert last["how"] == "SIGKILL"
    assert report["caught_up"], detail
    assert report["lost"] == 0, detail
    assert report["mismatched"] == 0, detail
    assert report["extra"] == 0, detail
    assert report["duplicates_applied"] == 0, detail
    # At the default window an event older than a full window is dropped uncounted: the counts are
    # bounded, the windows (``matched``) exact.
    assert report["events_stored"] <= report["events_expected"], detail
    assert report["matched"] == report["people"]

