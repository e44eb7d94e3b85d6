"""Rolling redeploy under load, the harness: N workers, continuous traffic, one-at-a-time replacement.

What a Kubernetes rollout does to the consumer group, on one machine: N worker
processes share one group on the embedded broker and a SQLite store while a
producer thread sends continuous multi-platform synthetic traffic (identity
links included). Each worker in turn gets SIGTERM, a new one is started and
must answer /ready before the next is touched (``surge``: start the new one
first, as ``maxSurge: 1`` does). Then the load stops, the group catches up, and
the store is compared with the oracle (``testkit/oracle.py``, computed from the
produced events alone) by ``testkit/store_check.py``: people lost, profiles
differing from one clean pass, duplicates applied.

Used by ``tests/integration/test_rolling_redeploy.py`` (small, in CI) and ``python -m
bench.rolling`` (larger, with a JSON report and a plot), so the test and the
benchmark run and judge a rollout the same way.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from interest.produce import produce_events
from interest.synthetic import RawEvent, SyntheticTraffic
from schemas.adapters import load_adapters
from schemas.settings import Settings
from streams.kafka_config import ensure_topics, worker_topics
from testkit.chaos import end_offsets
from testkit.helpers import WorkerProcess, wait_until
from testkit.oracle import expected_profiles
from testkit.store_check import compare, wait_until_caught_up

Produced = RawEvent | tuple[str, dict[str, Any]]


@dataclass
class RollingConfig:
    """One run's shape. The defaults are the benchmark's; the test passes smaller ones."""

    workers: int = 3
    rate: float = 300.0  # events/s produced for the whole run (what 3 workers sustain on 2 cores)
    users: int = 1000
    items: int = 2000
    seed: int = 7
    warmup_s: float = 5.0  # load before the first replacement
    settle_s: float = 3.0  # after a new worker is ready and the group is settled, before the next
    rounds: int = 1  # every worker is replaced this many times
    surge: bool = False  # start the new worker before stopping the old (Kubernetes maxSurge 1)
    stop_timeout_s: float = 45.0  # SIGKILL after this (a Kubernetes grace period)
    ready_timeout_s: float = 90.0
    catch_up_s: float = 120.0
    sample_s: float = 0.5
    # The first SIGTERM arrives while the SQLite store is locked for this long (a store that is slow
    # when the pod is told to stop): the worker must finish its batch in flight, not abandon it.
    hold_store_s: float = 0.0
    # The last N replacements SIGKILL the old worker (a pod that overran its grace period): its
    # uncommitted batches are redelivered to the next owner, which must drop them as duplicates.
    sigkill_last: int = 0
    split: bool = False  # every worker is ``interest worker --split`` (a SIGKILL kills the pod: all three processes)

    @property
    def worker_args(self) -> tuple[str, ...]:
        return ("--split",) if self.split else ()


@dataclass
class Replacement:
    """One worker swapped: when it was told to stop, when it exited, when its successor was ready."""

    index: int
    how: str = "SIGTERM"
    started_s: float = 0.0  # successor started (before the SIGTERM with --surge)
    sigterm_s: float = 0.0
    exited_s: float = 0.0
    ready_s: float = 0.0
    exit_code: int | None = None
    killed: bool = False  # SIGTERM was not enough: killed after stop_timeout_s
    exited_while_store_locked: bool | None = None
    max_backlog: int = 0
    freshness_p50_s: float | None = None
    freshness_p99_s: float | None = None


def _delta_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Quantile (a bucket's upper bound) of the observations between two cumulative histogram scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    for bound, count in zip(bounds, counts, strict=True):
        if count >= q * total:
            return bound
    return math.inf


class Monitor(threading.Thread):
    """Samples the backlog and the workers' /metrics every ``interval``.

    Backlog = events produced minus events in the store's sequences: the end-to-end
    lag that matters, read from the SQLite file (WAL: readers never block the workers).
    Not the consumer group's offset lag: the embedded broker answers ListOffsets
    (latest) with the last *batch*'s base offset + 1, which under-reports the end of a
    partition written in batches. Counters restart with every new process, so
    per-worker deltas are summed; a worker's last batch before it exits may be missed
    (hence "seen").
    """

    def __init__(self, settings: Settings, interval: float) -> None:
        super().__init__(daemon=True, name="rolling-monitor")
        self.db_path = settings.sqlite_path()
        self.interval = interval
        self.workers: list[WorkerProcess] = []
        self.produced = 0
        self.samples: list[dict[str, float]] = []
        self.totals = {"applied": 0.0, "duplicates": 0.0}
        self.freshness: dict[float, float] = {}  # cumulative over all workers: le -> count
        self.freshness_at: list[tuple[float, dict[float, float]]] = []  # (t, copy of freshness)
        self._last: dict[int, dict[str, Any]] = {}
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def stored_events(self) -> int:
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT COALESCE(SUM(event_count), 0) FROM sequences").fetchone()[0])

    def _scrape(self, worker: WorkerProcess) -> None:
        status, text = worker.get("/metrics")
        if status != 200:
            return
        now: dict[str, Any] = {"applied": 0.0, "duplicates": 0.0, "fresh": {}}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "interest_events_applied_total":
                    now["applied"] += s.value
                elif s.name == "interest_events_duplicate_total":
                    now["duplicates"] += s.value
                elif s.name == "interest_freshness_seconds_bucket":
                    now["fresh"][float(s.labels["le"])] = s.value
        last = self._last.get(worker.port, {"applied": 0.0, "duplicates": 0.0, "fresh": {}})
        for key in ("applied", "duplicates"):
            self.totals[key] += now[key] - last[key]
        for le, count in now["fresh"].items():
            self.freshness[le] = self.freshness.get(le, 0.0) + count - last["fresh"].get(le, 0.0)
        self._last[worker.port] = now

    def sample(self) -> None:
        for worker in list(self.workers):
            self._scrape(worker)
        produced = float(self.produced)
        try:
            lag = max(0.0, produced - self.stored_events())
        except sqlite3.Error:  # e.g. the schema is not there yet: the point is just missing
            lag = math.nan
        self.freshness_at.append((self.now(), dict(self.freshness)))
        self.samples.append({"t": self.now(), "produced": produced, "applied": self.totals["applied"],
                             "backlog": lag, "workers": float(len(self.workers))})

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


class Load(threading.Thread):
    """Continuous synthetic traffic at ``rate`` events/s, event time = now; keeps what it sent."""

    def __init__(self, settings: Settings, cfg: RollingConfig, monitor: Monitor) -> None:
        super().__init__(daemon=True, name="rolling-load")
        self.settings = settings
        self.cfg = cfg
        self.monitor = monitor
        self.traffic = SyntheticTraffic(load_adapters(), users=cfg.users, items=cfg.items, seed=cfg.seed)
        self.produced: list[Produced] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def _events(self) -> Iterator[Produced]:
        while not self.stopping.is_set():
            for item in self.traffic.events(1, int(time.time() * 1000), step_ms=0):
                self.produced.append(item)
                yield item

    def _progress(self, n: int) -> None:
        self.monitor.produced += n

    def run(self) -> None:
        try:
            produce_events(self.settings, self._events(), rate=self.cfg.rate, on_progress=self._progress)
        except BaseException as exc:  # reported by stop(): a silent producer would fake a pass
            self.error = exc

    def stop(self) -> list[Produced]:
        self.stopping.set()
        self.join(timeout=60)
        if self.error is not None:
            raise RuntimeError("load generator failed") from self.error
        return self.produced


def broker_messages(settings: Settings) -> int:
    """Messages on the raw and identity topics, counted by reading them all back (see ``end_offsets``)."""
    return sum(end_offsets(settings, [*settings.raw_topics(), settings.identity_topic]).values())


def _sigterm_with_store_locked(
    worker: WorkerProcess, settings: Settings, hold_s: float, timeout: float
) -> tuple[int | None, bool]:
    """SIGTERM while another connection holds SQLite's write lock; (exit code, exited before release)."""
    proc = worker.proc
    assert proc is not None
    db = sqlite3.connect(settings.sqlite_path(), timeout=30, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        time.sleep(0.5)  # the workers' next writes queue up behind the lock
        proc.send_signal(signal.SIGTERM)
        time.sleep(hold_s)
        early = proc.poll() is not None
        db.execute("ROLLBACK")
    finally:
        db.close()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the whole pod: a --split worker's children too
        proc.wait()
    worker.proc = None
    return proc.returncode, early


def run_rolling(settings: Settings, version: str, cfg: RollingConfig, log_dir: Path) -> dict[str, Any]:
    """Start ``cfg.workers`` workers under load, replace each one at a time, compare with the oracle."""
    log_dir.mkdir(parents=True, exist_ok=True)
    ensure_topics(settings, worker_topics(settings))
    monitor = Monitor(settings, cfg.sample_s)
    names = iter(f"w{i}" for i in range(10_000))
    workers = [WorkerProcess(settings, log_dir, next(names), *cfg.worker_args).start() for _ in range(cfg.workers)]
    monitor.workers = list(workers)
    load = Load(settings, cfg, monitor)
    replacements: list[Replacement] = []

    def all_ready() -> bool:
        return all(w.ready() for w in workers)

    try:
        for w in workers:
            w.wait_ready(cfg.ready_timeout_s)
        wait_until(all_ready, cfg.ready_timeout_s, what="every worker ready")
        monitor.t0 = time.monotonic()
        monitor.start()
        load.start()
        time.sleep(cfg.warmup_s)
        plan = [i for _ in range(cfg.rounds) for i in range(cfg.workers)]
        for index in plan:
            rep = Replacement(index=len(replacements))
            old, new = workers[index], WorkerProcess(settings, log_dir, next(names), *cfg.worker_args)
            if cfg.surge:
                rep.started_s = monitor.now()
                new.start()
                monitor.workers.append(new)
                new.wait_ready(cfg.ready_timeout_s)
            rep.sigterm_s = monitor.now()
            if len(replacements) >= len(plan) - cfg.sigkill_last:
                rep.how = "SIGKILL"
                rep.exit_code = old.stop(signal.SIGKILL)
            elif cfg.hold_store_s and not replacements:
                rep.how = "SIGTERM, store locked"
                rep.exit_code, rep.exited_while_store_locked = _sigterm_with_store_locked(
                    old, settings, cfg.hold_store_s, cfg.stop_timeout_s)
            else:
                rep.exit_code = old.stop(signal.SIGTERM, timeout=cfg.stop_timeout_s)
            rep.exited_s = monitor.now()
            rep.killed = rep.how != "SIGKILL" and rep.exit_code == -signal.SIGKILL
            monitor.workers.remove(old)
            workers[index] = new
            if not cfg.surge:
                rep.started_s = monitor.now()
                new.start()
                monitor.workers.append(new)
                new.wait_ready(cfg.ready_timeout_s)
            wait_until(all_ready, cfg.ready_timeout_s, what="every worker ready after a replacement")
            rep.ready_s = monitor.now()
            replacements.append(rep)
            time.sleep(cfg.settle_s)
        produced = load.stop()
        oracle = expected_profiles(produced)
        caught_up = wait_until_caught_up(settings, version, oracle, cfg.catch_up_s)
    finally:
        load.stopping.set()
        monitor.stop()
        for w in workers:
            w.stop(signal.SIGTERM, timeout=cfg.stop_timeout_s)
    result = compare(settings, version, oracle)
    _per_replacement(monitor, replacements)
    events = sum(1 for p in produced if isinstance(p, RawEvent))
    return {
        "workers": cfg.workers, "rate": cfg.rate, "replacements": len(replacements), "surge": cfg.surge,
        "produced_events": events, "produced_links": len(produced) - events,
        "broker_messages": broker_messages(settings), "caught_up": caught_up,
        "people": result.people, "matched": result.matched, "lost": result.lost,
        "mismatched": result.mismatched, "extra": result.extra, "stale_vectors": result.stale_vectors,
        "events_expected": result.events_expected, "events_stored": result.events_stored,
        "duplicates_redelivered_seen": int(monitor.totals["duplicates"]),
        "duplicates_applied": result.duplicates_applied, "applied_seen": int(monitor.totals["applied"]),
        "killed_workers": sum(r.killed for r in replacements),
        "sigkilled_on_purpose": sum(r.how == "SIGKILL" for r in replacements),
        "max_backlog": int(max((s["backlog"] for s in monitor.samples if not math.isnan(s["backlog"])), default=0)),
        "replacement_details": [asdict(r) for r in replacements],
        "examples": result.examples,
        "_samples": monitor.samples,
    }


def _per_replacement(monitor: Monitor, replacements: list[Replacement]) -> None:
    """Max backlog, and freshness of the profiles written, from a replacement's first move until the next.

    Until the next one (not just until all answer /ready): after a SIGKILL the group only
    notices the dead member a session timeout later, when everyone is already "ready".
    """
    starts = [min(r.started_s, r.sigterm_s) for r in replacements]
    last = monitor.samples[-1]["t"] if monitor.samples else 0.0
    for rep, start, end in zip(replacements, starts, [*starts[1:], last], strict=True):
        window = [s for s in monitor.samples if start - monitor.interval <= s["t"] <= end]
        rep.max_backlog = int(max((s["backlog"] for s in window if not math.isnan(s["backlog"])), default=0))
        before = next((h for t, h in reversed(monitor.freshness_at) if t <= start), {})
        after = next((h for t, h in monitor.freshness_at if t >= end), monitor.freshness)
        rep.freshness_p50_s = _delta_quantile(before, after, 0.5)
        rep.freshness_p99_s = _delta_quantile(before, after, 0.99)


def public_report(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the raw samples, JSON-safe (an unbounded bucket prints as "inf")."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isinf(value):
            return "inf"
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if not k.startswith("_")}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return dict(clean(report))
