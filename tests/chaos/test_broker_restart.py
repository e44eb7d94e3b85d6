"""Broker restart under load: the worker reconnects and processes what is produced afterwards.

What a user relies on: a broker restart (rolling upgrade, crash) needs no
worker restart.  The embedded broker keeps everything in memory, so a
restart loses every topic, message and committed offset it held: the test
can only demand that everything produced *after* the restart is processed
(what was produced before and already stored stays stored).  A real Kafka
cluster keeps its log, so there the guarantee is the full one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from interest.embedded import EmbeddedBroker
from interest.produce import produce_events
from schemas.settings import Settings
from testkit.chaos import report, stored_counts, synthetic
from testkit.helpers import WorkerProcess, scan, wait_until
from testkit.oracle import Expected


def test_worker_survives_a_broker_restart(
    chaos_settings: Callable[..., Settings], model_registry: tuple[str, str], tmp_path: Path
) -> None:
    _, version = model_registry
    with EmbeddedBroker(log_file=tmp_path / "own-broker.log") as own:
        settings = chaos_settings(broker_url=own.url)
        before = synthetic(users=30, events=300, seed=67)
        after = synthetic(users=30, events=300, seed=68, start_ms=int(time.time() * 1000) - 1_200_000)
        with WorkerProcess(settings, tmp_path, name="broker-restart") as worker:
            load = threading.Thread(target=produce_events, args=(settings, before.produced), kwargs={"rate": 200})
            load.start()
            time.sleep(0.8)  # restart while the first load is still being produced and processed
            own.restart()
            load.join(timeout=60)
            produce_events(settings, after.produced)
            missing: list[str] = []

            def after_load_stored() -> bool:
                missing[:] = missing_events(settings, version, after.oracle)
                return not missing

            wait_until(after_load_stored, 150, interval=1.0, what="every event produced after the restart stored")
            alive = worker.proc is not None and worker.proc.poll() is None
        stored = set(scan(settings, version)["profiles"])
    lost_before = {p for p in before.oracle if p not in stored}
    report("broker restart", restarted_at="0.8 s into a 200 events/s load", produced_before=before.events,
           produced_after=after.events, after_restart_all_stored=True, worker_alive=alive,
           people_of_before_load_missing=len(lost_before), profiles=stored_counts(settings, version)[0],
           note="memory storage: messages the broker held at the restart are gone")
    assert alive, "the worker reconnected instead of exiting"


def missing_events(settings: Settings, version: str, oracle: dict[str, Expected]) -> list[str]:
    """Event ids of ``oracle`` that belong in the kept window but are not stored.

    The second load is newer than the first, so each person's newest ``seq_len``
    events of it must all be in their window (older ones may be evicted).
    """
    states = scan(settings, version)["states"]
    out = []
    for person, exp in oracle.items():
        held = {e.event_id for e in states[person].events} if person in states else set()
        out.extend(sorted(set(exp.window(settings.seq_len)) - held))
    return out
