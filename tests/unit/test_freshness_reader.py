"""The freshness bench's store reader: an event counts as readable at the first poll after its commit, never before.

A real SQLite store written by the store's own code; the reader polls it from its thread as in the bench.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.freshness import Tracker
from schemas.sequence import TS_SHIFT
from streams.stores.base import StoreBatch
from tests.unit.stores.conftest import StoreEnv, make_settings, running_store
from tests.unit.stores.records import profile, state


def write(env: StoreEnv, person: str, write_ts: int) -> None:
    batch = StoreBatch(states=[state(person, write_ts)], profiles=[profile(person, "v1", write_ts)])
    env.run(env.store.write_batch(batch))


def wait_outstanding(tracker: Tracker, phase: str, expected: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with tracker.lock:
            left = tracker.outstanding[phase]
        if left == expected:
            return left
        time.sleep(0.01)
    return left


def test_events_become_readable_at_their_commit_and_only_then(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    first, second = 1_000 << TS_SHIFT, 2_000 << TS_SHIFT
    with running_store("sqlite", make_settings(store_url=f"sqlite:///{path}")) as env:
        write(env, "ann", first)
        tracker = Tracker(str(path), poll_s=0.005, seq_len=50)
        now = time.time() * 1000
        # One event already stored, one stored only later, one older than anything ann's window will hold.
        tracker.produced("ann", f"ann-e{first}-1", 1_001, now, "x")
        tracker.produced("ann", f"ann-e{second}-0", 2_000, now, "x")
        tracker.produced("ann", "ann-long-gone", 10, now, "x")
        tracker.produced("bob", f"bob-e{first}-0", 1_000, now, "x")  # bob's row is never written
        tracker.thread.start()
        try:
            # The stored event and the one older than the window resolve; ann's later event and bob's wait.
            assert wait_outstanding(tracker, "x", 2) == 2
            time.sleep(0.1)  # many polls: nothing that is not in the store resolves meanwhile
            with tracker.lock:
                assert tracker.outstanding["x"] == 2 and tracker.superseded["x"] == 1
                assert set(tracker.pending["ann"]) == {f"ann-e{second}-0"}
            written_at = time.time() * 1000
            write(env, "ann", second)  # a profile stamped with an old updated_ms: found by key all the same
            assert wait_outstanding(tracker, "x", 1) == 1
            with tracker.lock:
                latencies = sorted(tracker.latencies["x"])
                assert "ann" not in tracker.pending  # a person with nothing outstanding costs the reader nothing
            assert len(latencies) == 3 and latencies[-1] >= written_at - now
        finally:
            tracker.stop.set()
            tracker.thread.join(5)
        assert not tracker.wait_drained("x", timeout=0.2, idle_s=0.1)  # bob's event never became readable
        assert not tracker.pending
