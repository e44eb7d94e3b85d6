"""kill -9 at the three points of the commit order, and a replay from the earliest offsets.

What a user relies on: a worker that dies at any instant (OOM killer, node
loss, ``kill -9``) loses nothing it acknowledged, and running a group again
from offset 0 (an operator's ``--reset-offsets --to-earliest``) changes no
row.  The oracle says what every profile must be from the produced events
alone, so the comparison does not depend on where the crash landed.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from interest.produce import produce_events
from schemas.settings import Settings
from testkit.chaos import (
    SOAK,
    committed,
    report,
    reset_group_to_earliest,
    stored_counts,
    synthetic,
    wait_for_oracle,
    worker_input_topics,
)
from testkit.helpers import WorkerProcess, checksum, metric_value, scan, wait_until

# The update stage's three points, then the ingest reader's: its envelopes acknowledged, its raw offsets not yet
# committed (the batch comes again: duplicates), and just after that commit.
CRASH_POINTS = ["before_write", "after_write", "after_commit", "ingest_before_commit", "ingest_after_commit"]
FAST = [pytest.param(point, 3, 1200, id=point) for point in CRASH_POINTS]
FULL_HISTORY = 200  # above every person's event count in the 1 200-event traffic (seed 31): nothing is evicted
soak = [pytest.mark.soak, pytest.mark.skipif(not SOAK, reason="soak variant: set INTEREST_TEST_SOAK=1")]
SOAK_RUNS = [pytest.param(point, 25, 12_000, id=f"soak-{point}", marks=soak) for point in CRASH_POINTS]


@pytest.mark.parametrize(("point", "nth", "events"), FAST + SOAK_RUNS)
def test_kill_9_mid_batch_loses_nothing_acknowledged(
    point: str, nth: int, events: int, chaos_settings: Callable[..., Settings], model_registry: tuple[str, str],
    tmp_path: Path,
) -> None:
    _crash_then_restart(point, nth, events, chaos_settings(), model_registry[1], tmp_path)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_9_of_one_split_process_loses_nothing_acknowledged(
    point: str, chaos_settings: Callable[..., Settings], model_registry: tuple[str, str], tmp_path: Path
) -> None:
    """``interest worker --split``: the process whose stage reaches ``point`` dies by SIGKILL mid-batch.

    The update points fire in the update process, the ingest points in the ingest process; the parent then
    stops the other one and exits 128 + 9, so the pod restarts as one.  The pair started again must end at
    the oracle, with everything the dead process had acknowledged kept and nothing applied twice.

    The window holds every person's whole history here (the busiest has 159 events), so the counts are exact
    whatever the arrival order: alone, the ingest process runs a catch-up far ahead of the update one, and a
    raw partition whose fetch returns late can put a busy person's event behind 50 newer ones, which a
    50-event window counts as too late (it could never be in the window) instead of storing it.  The
    one-process runs above keep the default window.
    """
    settings = chaos_settings(seq_len=FULL_HISTORY)
    _crash_then_restart(point, 3, 1200, settings, model_registry[1], tmp_path, "--split")


def _crash_then_restart(point: str, nth: int, events: int, settings: Settings, version: str, tmp_path: Path,
                        *args: str) -> None:
    traffic = synthetic(users=events // 20, events=events, seed=31)
    produce_events(settings, traffic.produced)
    layout = " ".join(args) or "one process"

    victim = WorkerProcess(settings, tmp_path, f"crash-{point}", *args, INTEREST_TEST_CRASH_AT=f"{point}:{nth}")
    victim.start()
    assert victim.proc is not None
    try:
        code = victim.proc.wait(timeout=120)
    finally:
        victim.stop(signal.SIGKILL)  # whatever of the pod is left (nothing, when it died as it should)
    killed = 128 + signal.SIGKILL if args else -signal.SIGKILL  # --split: the parent exits with 128 + signal
    assert code == killed, f"worker ({layout}) did not die at {point}: exit {code}\n{victim.logs()[-3000:]}"
    assert f"SIGKILL at {point}" in victim.logs()
    if args:  # the stage that owns the point died, and the parent said so
        stage = "ingest" if point.startswith("ingest") else "update"
        assert f"the {stage} process exited with -9" in victim.logs()
    person_topic = [settings.person_topic]
    at_crash = stored_counts(settings, version)
    committed_at_crash = committed(settings, person_topic)
    if point == "after_commit":
        assert committed_at_crash > 0, "the forced commit reached the broker before the kill"

    with WorkerProcess(settings, tmp_path, f"restart-{point}", *args) as worker:
        wait_for_oracle(settings, version, traffic.oracle, timeout=120 if nth < 10 else 600)
        _, text = worker.get("/metrics")  # --split: the update process's port, where these counters live
        duplicates = metric_value(text, "interest_events_duplicate_total")
        applied = metric_value(text, "interest_events_applied_total")
        moved = metric_value(text, "interest_history_moved_total")
    final = stored_counts(settings, version)
    report(f"kill -9 at {point} (pass {nth}, {layout})", produced_events=traffic.events, people=len(traffic.oracle),
           profiles_at_crash=at_crash[0], events_stored_at_crash=at_crash[1],
           person_topic_committed_at_crash=committed_at_crash, applied_after_restart=int(applied),
           duplicates_after_restart=int(duplicates), history_moved_after_restart=int(moved),
           final_profiles=final[0], final_events=final[1])
    assert final == (len(traffic.oracle), traffic.events)
    # Whatever the restart re-applied on top of what was stored is either new or recognised as a duplicate.
    # A device's stored events that a first link moves to its person are applied there a second time while
    # the device's row goes: the stored total grows by applied - moved.
    assert at_crash[1] + applied - moved == traffic.events


def test_replay_from_earliest_offsets_changes_no_row(
    chaos_settings: Callable[..., Settings], model_registry: tuple[str, str], tmp_path: Path
) -> None:
    _, version = model_registry
    settings = chaos_settings()
    traffic = synthetic(users=50, events=800, seed=37)
    produce_events(settings, traffic.produced)
    with WorkerProcess(settings, tmp_path, name="first-run"):
        wait_for_oracle(settings, version, traffic.oracle)
        wait_until(lambda: not any(committed_lag(settings)), 60, what="every offset committed")
    before = checksum(scan(settings, version))
    topics = worker_input_topics(settings)
    reset = reset_group_to_earliest(settings, topics)
    assert committed(settings, topics) == 0

    with WorkerProcess(settings, tmp_path, name="replay") as worker:
        wait_until(lambda: worker.get("/stats")[1]["events_in"] >= traffic.events, 90, what="raw topics re-read")
        wait_until(lambda: not any(committed_lag(settings)), 90, what="replay committed to the end")
        _, text = worker.get("/metrics")
    after = checksum(scan(settings, version))
    profiles, events = stored_counts(settings, version)
    report("replay from earliest", partitions_reset=reset, produced_events=traffic.events,
           duplicates_seen=int(metric_value(text, "interest_events_duplicate_total")),
           applied_on_replay=int(metric_value(text, "interest_events_applied_total")),
           profiles=profiles, events=events, checksum_before=before[:12], checksum_after=after[:12])
    assert after == before, "replaying from the earliest offsets changed a row"
    assert metric_value(text, "interest_events_applied_total") == 0


def committed_lag(settings: Settings) -> list[int]:
    from testkit.chaos import group_lag

    return [lag for lag in group_lag(settings, worker_input_topics(settings)).values() if lag]
