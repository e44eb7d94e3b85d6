"""``interest worker --split``: one process per stage keeps every guarantee of the one-process worker.

Real embedded broker, real SQLite, real onnxruntime: the same synthetic traffic (anonymous devices,
identity links, four platforms) must end in exactly the profiles the oracle expects, each stage must
run in its own process (the ingest one without the person topic, the update one without the raw
topics), and the pair must stop as one: on SIGTERM, and when either child dies.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from interest.produce import produce_events
from interest.synthetic import SyntheticTraffic
from schemas.adapters import load_adapters
from testkit.chaos import wait_for_oracle, window_problems
from testkit.helpers import WorkerProcess, metric_value, scan, wait_until
from testkit.oracle import expected_profiles


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _stage_of(pid: int) -> str:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"INTEREST_WORKER_STAGES="))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _stages(worker: WorkerProcess) -> dict[str, int]:
    """The running split worker's two children by stage, once both are up."""
    assert worker.proc is not None
    parent = worker.proc.pid
    pids = wait_until(lambda: len(_children(parent)) == 2 and _children(parent), 30, what="two child processes")
    return {_stage_of(pid): pid for pid in pids}


def test_split_worker_matches_the_oracle_and_stops_as_one(
    make_settings: Any, model_registry: tuple[str, str], tmp_path: Path
) -> None:
    registry, version = model_registry
    settings = make_settings(registry=registry)
    traffic = SyntheticTraffic(load_adapters(), users=40, items=300, seed=5)
    produced = list(traffic.events(800, int(time.time() * 1000) - 3_600_000, step_ms=100))
    oracle = expected_profiles(produced)

    worker = WorkerProcess(settings, tmp_path, "split", "--split").start()
    try:
        worker.wait_ready()
        ingest_port = worker.port + 1
        worker.wait_ready(port=ingest_port)
        stages = _stages(worker)
        children = list(stages.values())
        produce_events(settings, produced)
        wait_for_oracle(settings, version, oracle, timeout=90)
        snap = scan(settings, version)
        # Each process runs its own stage only: ingest counts raw events and owns no person partition,
        # update applies them and owns every person partition (the lag gauge names what each owns).
        wait_until(lambda: "interest_consumer_lag{" in (worker.get("/metrics")[1] or ""), 15, what="lag gauge")
        update_page, ingest_page = worker.get("/metrics")[1], worker.get("/metrics", ingest_port)[1]
        assert sorted(stages) == ["ingest", "update"]
        assert metric_value(ingest_page, "interest_events_in_total") > 0
        assert metric_value(update_page, "interest_events_in_total") == 0
        assert metric_value(ingest_page, "interest_events_applied_total") == 0
        assert metric_value(update_page, "interest_events_applied_total") > 0
        assert settings.person_topic not in ingest_page.split("interest_consumer_lag", 1)[-1]
        assert f'topic="{settings.person_topic}"' in update_page
    finally:
        code = worker.stop()
    assert code == 0, worker.logs()[-3000:]
    assert not any(_alive(pid) for pid in children), "SIGTERM to the parent stops both stages"
    assert set(snap["profiles"]) == set(oracle)
    for person, exp in oracle.items():
        assert window_problems(snap["profiles"][person], snap["states"][person], exp, settings.seq_len) == [], person


def test_when_one_stage_dies_the_other_stops_and_the_pair_exits_with_its_status(
    make_settings: Any, model_registry: tuple[str, str], tmp_path: Path
) -> None:
    registry, _ = model_registry
    settings = make_settings(registry=registry)
    worker = WorkerProcess(settings, tmp_path, "split-kill", "--split").start()
    try:
        worker.wait_ready()
        stage = _stages(worker)
        update_child, ingest_child = stage["update"], stage["ingest"]
        os.kill(update_child, signal.SIGKILL)
        assert worker.proc is not None
        code = worker.proc.wait(timeout=60)
    finally:
        worker.stop()
    assert code == 128 + signal.SIGKILL, worker.logs()[-2000:]
    assert "the update process exited" in worker.logs()
    assert wait_until(lambda: not _alive(ingest_child), 30, what="the ingest process stopped")


def test_switching_to_split_continues_from_the_one_process_offsets(
    make_settings: Any, model_registry: tuple[str, str], tmp_path: Path
) -> None:
    registry, version = model_registry
    # The one-process worker of an earlier release: raw topics read by a Faust agent in the app's group.
    # (With the batch reader it already commits them in the ingest group, which the split one goes on with.)
    first = make_settings(registry=registry, ingest_reader="faust")
    settings = first.model_copy(update={"ingest_reader": "batch"})
    traffic = SyntheticTraffic(load_adapters(), users=30, items=300, seed=9)
    start = int(time.time() * 1000) - 3_600_000
    before = list(traffic.events(400, start, step_ms=100))
    after = list(traffic.events(200, start + 400 * 100, step_ms=100))
    with WorkerProcess(first, tmp_path, "one") as worker:
        produce_events(settings, before)
        wait_for_oracle(settings, version, expected_profiles(before), timeout=90)
        wait_until(lambda: metric_value(worker.get("/metrics")[1] or "", "interest_events_in_total") > 0, 10)
        time.sleep(2.5)  # past Faust's 1 s commit interval: the raw offsets are committed
    with WorkerProcess(settings, tmp_path, "split", "--split") as worker:
        assert "starts from" in worker.logs() and "raw partitions" in worker.logs()
        produce_events(settings, after)
        wait_for_oracle(settings, version, expected_profiles([*before, *after]), timeout=90)
        ingest_page = worker.get("/metrics", worker.port + 1)[1]
        # Only the new events went through the ingest process: nothing of the first run was replayed.
        assert 0 < metric_value(ingest_page, "interest_events_in_total") <= len(after)


def test_when_the_parent_alone_is_killed_its_children_stop_and_leave_no_orphan(
    make_settings: Any, model_registry: tuple[str, str], tmp_path: Path
) -> None:
    """The OOM killer (or a ``kill -9`` of the wrong pid) takes the parent only: it cannot forward anything.

    Its children get SIGTERM from the kernel (``PR_SET_PDEATHSIG``) and stop as on any stop, instead of
    running on as orphans that hold the group's partitions next to the pod that replaces them.
    """
    registry, _ = model_registry
    settings = make_settings(registry=registry)
    worker = WorkerProcess(settings, tmp_path, "split-orphan", "--split").start()
    try:
        worker.wait_ready()
        children = _stages(worker)
        assert worker.proc is not None
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)
        for stage, pid in children.items():
            wait_until(lambda pid=pid: not _alive(pid), 30, what=f"the orphaned {stage} process stopped")
    finally:
        worker.stop(signal.SIGKILL)  # the group: nothing is left if the assertion failed
    logs = worker.logs()
    assert "ingest batch still in flight" not in logs, logs[-3000:]
