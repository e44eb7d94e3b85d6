"""The data path's promises under the faults production meets, on the real updater and the real SQLite store.

Each test is one finding of the guarantees review: an erasure undone by a cached
state or a cached link, a receipt that says less than it did, a relink the cache
and the store disagree on, an infrastructure failure treated as bad data, and a
state written without its vector while a model should be serving.  Window 50, the
default, everywhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from interest.embedded import free_port
from interest.produce import produce_events
from model.runtime import EncoderRuntime
from schemas.events import CanonicalEvent, IdentityLink
from schemas.records import OutMessage, decode_envelope, encode_envelope
from schemas.settings import Settings
from streams.backoff import EXIT_ABANDONED
from streams.stages import RawMessage, Source, UpdateStage
from streams.stores.base import StoreUnavailable
from streams.stores.sqlite import SqliteStore
from streams.updater import ModelUnavailable, ProfileUpdater
from streams.worker_stats import WorkerStats

T0 = 1_700_000_000_000
SETTINGS = Settings(person_partitions=1, seq_len=50, retry_backoff_ms=10, retry_backoff_max_ms=20)


def ev(i: int, person: str = "p1", ts: int | None = None, platform: str = "web", device: str = "u") -> CanonicalEvent:
    return CanonicalEvent(f"e{i}", person, platform, device, "click", f"i{i % 7}", T0 + 1000 * i if ts is None else ts)


class Sent:
    """The updater's ``send``: keeps what it was asked to forward, fails while ``down``."""

    def __init__(self) -> None:
        self.messages: list[OutMessage] = []
        self.down = 0

    async def __call__(self, messages: Sequence[OutMessage]) -> None:
        if self.down:
            self.down -= 1
            raise ConnectionError("broker not reachable")
        self.messages.extend(messages)

    def records(self) -> list[Any]:
        return [r for m in self.messages for r in decode_envelope(m.value)]


async def _store(path: Path) -> SqliteStore:
    store = SqliteStore(str(path))
    await store.init_schema(64)
    return store


def _runtime(model_registry: tuple[str, str]) -> EncoderRuntime:
    root, version = model_registry
    return EncoderRuntime.load(root, version, "no")


def test_a_cached_state_cannot_bring_erased_events_back(tmp_path: Path, model_registry: tuple[str, str]) -> None:
    """Finding 2a: the owner caches p1; `interest forget` erases the store; a new event arrives first."""
    runtime = _runtime(model_registry)

    async def scenario() -> tuple[Any, Any]:
        store = await _store(tmp_path / "p.db")
        updater = ProfileUpdater(store, lambda: runtime, Sent(), SETTINGS)
        await updater.process([ev(1), ev(2)])  # cached by the owner now
        await store.forget("p1", T0 + 5_000)  # what `interest forget` does before telling the worker
        await updater.process([ev(3)])  # dated before the erasure: must stay erased
        await updater.process([ev(9)])  # after it: legitimate new activity
        state = (await store.load_states(["p1"]))["p1"]
        prof = await store.get_profile("p1", runtime.version)
        await store.close()
        return state, prof

    state, prof = asyncio.run(scenario())
    assert [e.event_id for e in state.events] == ["e9"], "erased events came back through the owner's cache"
    assert prof is not None and prof.event_count == 1 and prof.write_ts == state.write_ts


def test_a_cached_link_cannot_route_a_device_to_an_erased_person(tmp_path: Path) -> None:
    """Finding 2b: after p1's erasure the device is anonymous again; its events stay with the device."""

    async def scenario() -> tuple[Sent, Any]:
        store = await _store(tmp_path / "l.db")
        sent = Sent()
        updater = ProfileUpdater(store, lambda: None, sent, SETTINGS)
        await updater.process([IdentityLink("web", "d1", "p1", T0)])
        await updater.process([ev(1, person="anon:web:d1", device="d1")])
        forwarded_before = len(sent.records())
        await store.forget("p1", T0 + 5_000)
        await updater.process([ev(8, person="anon:web:d1", device="d1")])
        after = sent.records()[forwarded_before:]
        anon = (await store.load_states(["anon:web:d1"])).get("anon:web:d1")
        await store.close()
        return sent, (forwarded_before, after, anon)

    _, (before, after, anon) = asyncio.run(scenario())
    assert before == 1, "while linked, the device's event went to the person"
    assert after == [], "after the erasure the device's events still flowed to the erased person"
    assert anon is not None and [e.event_id for e in anon.events] == ["e8"]


def test_the_newest_link_wins_in_the_cache_and_the_store_alike(tmp_path: Path) -> None:
    """Finding 6: links arrive out of order; the store keeps the newest, and so does routing.

    A relink redirects the device's later events; the history that moved with the
    first link stays with the first person (documented in the README).
    """

    async def scenario() -> tuple[list[Any], dict[str, Any], list[int]]:
        store = await _store(tmp_path / "r.db")
        sent = Sent()
        updater = ProfileUpdater(store, lambda: None, sent, SETTINGS)
        await updater.process([ev(1, person="anon:app:d2", platform="app", device="d2")])
        reports = [await updater.process([IdentityLink("app", "d2", "p-new", T0 + 9_000),   # newest, first
                                          IdentityLink("app", "d2", "p-old", T0 + 2_000)])]
        reports.append(await updater.process([IdentityLink("app", "d2", "p-old", T0 + 3_000)]))  # older: no effect
        reports.append(await updater.process([ev(5, person="anon:app:d2", platform="app", device="d2")]))
        links = await store.load_links(["anon:app:d2"])
        await store.close()
        return sent.records(), links, [r.moved for r in reports]

    forwarded, links, moved = asyncio.run(scenario())
    assert moved == [1, 0, 0], "only the first link moves stored history (and counts it)"
    assert links["anon:app:d2"].person_id == "p-new"
    assert {r.person_id for r in forwarded} == {"p-new"}, "routing and the store disagree on the device's person"
    assert sorted(r.event_id for r in forwarded) == ["e1", "e5"], "history moved once, later event redirected"


def test_a_full_disk_holds_the_partition_and_sends_nothing_to_the_dlq(tmp_path: Path) -> None:
    """Finding 4: SQLITE_FULL is the disk, not the data: retry (not ready), never DLQ, then catch up."""

    async def scenario() -> tuple[list[OutMessage], Any, list[str | None]]:
        store = await _store(tmp_path / "full.db")
        sent = Sent()
        stats = WorkerStats()
        stage = UpdateStage(SETTINGS, ProfileUpdater(store, lambda: None, sent, SETTINGS), sent, stats)
        pages = (await store._call(lambda conn: conn.execute("PRAGMA page_count").fetchone()))[0]
        await store._call(lambda conn: conn.execute(f"PRAGMA max_page_count = {pages}"))  # the disk is full
        big = [CanonicalEvent(f"b{i}", f"q{i}", "web", "u", "click", "x" * 200, T0 + i) for i in range(3000)]
        batch = [RawMessage(Source("t.by_person", 0, n), encode_envelope(big[n::4])) for n in range(4)]
        task = asyncio.create_task(stage.run(batch))
        seen: list[str | None] = []
        for _ in range(40):
            await asyncio.sleep(0.05)
            seen.append(stats.holding)
        assert not task.done(), "the batch was given up on while the disk was full"
        await store._call(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"))  # space again
        await asyncio.wait_for(task, 30)
        count = await store.count_states()
        await store.close()
        return sent.messages, count, seen + [stats.holding]

    messages, count, holding = asyncio.run(scenario())
    assert messages == [], "good events went to the DLQ because the disk was full"
    assert count == 3000
    assert any(h and "StoreUnavailable" in h for h in holding) and holding[-1] is None


def test_a_broker_outage_while_forwarding_is_retried_not_dead_lettered(tmp_path: Path) -> None:
    """Finding 4: forwarding a linked device's events fails for a while; the batch is held, then lands."""

    async def scenario() -> tuple[Sent, int]:
        store = await _store(tmp_path / "fwd.db")
        sent = Sent()
        sent.down = 5  # more failures than retry_attempts: a "poison" path would DLQ the batch
        stats = WorkerStats()
        stage = UpdateStage(SETTINGS, ProfileUpdater(store, lambda: None, sent, SETTINGS), sent, stats)
        records = [IdentityLink("web", "d9", "p9", T0), ev(1, person="anon:web:d9", device="d9")]
        await asyncio.wait_for(stage.run([RawMessage(Source("t", 0, 0), encode_envelope(records))]), 30)
        await store.close()
        return sent, stats.rejected

    sent, rejected = asyncio.run(scenario())
    assert rejected == 0 and all(m.topic != SETTINGS.dlq_topic for m in sent.messages)
    assert [r.event_id for r in sent.records()] == ["e1"]


def test_no_state_without_a_vector_while_a_model_is_expected(tmp_path: Path) -> None:
    """Finding 3: a promoted model that is not loaded (yet) holds the batch instead of writing bare states."""

    async def scenario() -> int:
        store = await _store(tmp_path / "m.db")
        updater = ProfileUpdater(store, lambda: None, Sent(), SETTINGS, model_expected=lambda: True)
        with pytest.raises(ModelUnavailable):
            await updater.process([ev(1)])
        count = await store.count_states()
        await store.close()
        return count

    assert asyncio.run(scenario()) == 0
    assert issubclass(ModelUnavailable, StoreUnavailable), "the update stage must retry it, never DLQ it"


def _cli(args: list[str], settings_env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")} | settings_env
    return subprocess.run([sys.executable, "-m", "interest.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_forget_erases_events_dated_ahead_of_the_clock_and_says_so(tmp_path: Path) -> None:
    """Finding 2c: an accepted event dated an hour ahead must not survive `interest forget`."""
    future = int(time.time() * 1000) + 3_600_000

    async def seed() -> None:
        store = await _store(tmp_path / "f.db")
        await ProfileUpdater(store, lambda: None, Sent(), SETTINGS).process([ev(1, ts=future)])
        await store.close()

    asyncio.run(seed())
    env = {"INTEREST_STORE_URL": f"sqlite:///{tmp_path}/f.db"}
    proc = _cli(["forget", "p1", "--no-broker"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    receipt = json.loads(proc.stdout)
    assert receipt["sequence_deleted"] is True, receipt
    with sqlite3.connect(tmp_path / "f.db") as conn:
        assert conn.execute("SELECT count(*) FROM sequences WHERE person_id = 'p1'").fetchone()[0] == 0


def test_forget_fails_loudly_when_the_owning_worker_cannot_be_told(tmp_path: Path) -> None:
    """Finding 2d: the store erased, the broker did not answer: receipt, one error line, exit 1."""
    async def init() -> None:
        await (await _store(tmp_path / "n.db")).close()

    asyncio.run(init())
    env = {"INTEREST_STORE_URL": f"sqlite:///{tmp_path}/n.db", "INTEREST_BROKER_URL": f"127.0.0.1:{free_port()}",
           "INTEREST_KAFKA_BOOTSTRAP_TIMEOUT_MS": "500"}
    proc = _cli(["forget", "p1"], env, tmp_path)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert json.loads(proc.stdout)["workers_notified"] is False
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")], proc.stderr


def test_sigterm_while_the_store_is_down_exits_within_the_grace_and_loses_nothing(
    chaos_settings: Callable[..., Settings], model_registry: tuple[str, str], tmp_path: Path
) -> None:
    """Finding 5: a worker retrying a dead store still stops on SIGTERM; the next worker redoes its batch."""
    from testkit.chaos import committed, synthetic, wait_for_oracle
    from testkit.helpers import WorkerProcess, metric_value, wait_until

    _, version = model_registry
    settings = chaos_settings(stop_grace_s=3.0)
    traffic = synthetic(users=20, events=200, seed=71)
    lock = sqlite3.connect(settings.sqlite_path(), timeout=30, isolation_level=None)
    worker = WorkerProcess(settings, tmp_path, name="sigterm-outage").start()
    try:
        worker.wait_ready()
        lock.execute("BEGIN EXCLUSIVE")  # the store is gone for longer than any grace
        produce_events(settings, traffic.produced)
        wait_until(lambda: metric_value(worker.get("/metrics")[1] or "", "interest_store_unavailable_total") >= 2,
                   60, interval=0.5, what="the worker is holding on the outage")
        before = committed(settings, [settings.person_topic])
        assert worker.proc is not None
        started = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        code = worker.proc.wait(timeout=60)
        took = time.monotonic() - started
        assert committed(settings, [settings.person_topic]) == before, "it committed past the unwritten batch"
    finally:
        lock.rollback()
        lock.close()
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.kill()
    assert code == EXIT_ABANDONED, f"exit {code}: {worker.logs()[-1500:]}"
    assert took < 3.0 + 15, f"took {took:.1f} s to stop"
    with WorkerProcess(settings, tmp_path, name="after-sigterm"):
        wait_for_oracle(settings, version, traffic.oracle)


def test_an_erasure_committed_while_a_batch_is_in_flight_is_not_undone(
    tmp_path: Path, model_registry: tuple[str, str]
) -> None:
    """Finding 2a, the race itself: `interest forget` commits between the batch's read and its write."""
    runtime = _runtime(model_registry)

    class ForgetsWhileEncoding:
        """The real encoder; the first call with two or more events lets another process erase p1 meanwhile."""

        def __init__(self) -> None:
            self.version, self.dim, self.armed = runtime.version, runtime.dim, True

        def encode(self, sequences: Any) -> Any:
            if self.armed and any(len(s) >= 2 for s in sequences):
                self.armed = False
                asyncio.run(_forget_elsewhere(tmp_path / "race.db", "p1", T0 + 5_000))
            return runtime.encode(sequences)

    encoder = ForgetsWhileEncoding()

    async def scenario() -> Any:
        store = await _store(tmp_path / "race.db")
        updater = ProfileUpdater(store, lambda: encoder, Sent(), SETTINGS)
        encoder.armed = False
        await updater.process([ev(1)])  # cached
        encoder.armed = True
        with pytest.raises(StoreUnavailable, match="erased"):
            await updater.process([ev(9)])  # e1 (before the erasure) + e9 (after): in flight during the forget
        await updater.process([ev(9)])  # the update stage's retry
        state = (await store.load_states(["p1"]))["p1"]
        await store.close()
        return state

    state = asyncio.run(scenario())
    assert [e.event_id for e in state.events] == ["e9"], "the erased event came back with a newer one"


async def _forget_elsewhere(path: Path, person: str, erased_ms: int) -> None:
    other = SqliteStore(str(path))  # another connection, as `interest forget` in its own process
    await other.open()
    await other.forget(person, erased_ms)
    await other.close()
