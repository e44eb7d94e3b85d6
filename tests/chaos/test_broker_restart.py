"""A broker restart under load: the worker rides it out and nothing acknowledged is lost.

What a user relies on: a broker restart (rolling upgrade, crash) needs no
worker restart, and every event whose produce the broker acknowledged, before
or after the restart, ends up in its person's window exactly once.

How the restart is played: a forwarder in front of the embedded broker drops
every connection and refuses new ones for longer than the session timeout
(what clients see while a real broker restarts), mid-load, while the worker
holds batches in flight and the producer has sends in flight.  The broker
behind it keeps its log and offsets, as a real Kafka broker does.  (Tansu
does not expire a silent member, so the worker keeps its membership here; the
rebalance paths are exercised by the rolling-redeploy and crash tests.)

Restarting the embedded broker itself would test Tansu's memory storage
instead: it forgets every message and offset, and it answers a fetch past the
new log's end with an empty batch rather than OFFSET_OUT_OF_RANGE, so a
consumer holding an old offset waits there forever (an earlier version of this
test failed that way; ``testkit/tcp_outage.py`` says more).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from interest.embedded import EmbeddedBroker, free_port
from interest.produce import produce_events
from schemas.settings import Settings
from testkit.chaos import report, stored_counts, synthetic, wait_for_oracle
from testkit.helpers import WorkerProcess
from testkit.oracle import expected_profiles
from testkit.tcp_outage import OutageProxy


def test_worker_rides_out_a_broker_restart_under_load(
    chaos_settings: Callable[..., Settings], model_registry: tuple[str, str], tmp_path: Path
) -> None:
    _, version = model_registry
    port = free_port()
    with EmbeddedBroker(log_file=tmp_path / "own-broker.log", advertised_url=f"tcp://127.0.0.1:{port}") as own, \
            OutageProxy(port, ("127.0.0.1", own.port)) as proxy:
        settings = chaos_settings(broker_url=f"kafka://127.0.0.1:{port}")
        before = synthetic(users=30, events=600, seed=67)
        after = synthetic(users=30, events=300, seed=68, start_ms=int(time.time() * 1000) - 1_200_000)
        outage_s = settings.session_timeout_s + 2  # longer than a session: heartbeats and commits fail
        with WorkerProcess(settings, tmp_path, name="broker-restart") as worker:
            failures: list[BaseException] = []

            def load() -> None:
                try:  # the producer must ride out the outage too: its sends are retried, not lost
                    produce_events(settings, before.produced, rate=200)
                except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                    failures.append(exc)

            producer = threading.Thread(target=load)
            producer.start()
            time.sleep(1.0)  # mid-load: produced, partly processed, partly still to be produced
            proxy.outage(outage_s)
            producer.join(timeout=180)
            assert not producer.is_alive() and not failures, f"the load did not survive the restart: {failures}"
            produce_events(settings, after.produced)
            wait_for_oracle(settings, version, expected_profiles([*before.produced, *after.produced]), timeout=150)
            alive = worker.proc is not None and worker.proc.poll() is None
            stats: dict[str, Any] = worker.get("/stats")[1] or {}
    report("broker restart", outage_s=outage_s, at="1.0 s into a 200 events/s load", produced_before=before.events,
           produced_after=after.events, all_stored_exactly=True, worker_alive=alive,
           reconnections=proxy.connections, profiles=stored_counts(settings, version)[0],
           people_updated=stats.get("people_updated"))
    assert alive, "the worker reconnected instead of exiting"
