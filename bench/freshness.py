"""Freshness under load: event produced -> profile readable, at fixed rates and at the highest rate held.

    python -m bench.freshness [--rates 500,2000,5000] [--seconds 15] [--users 10000] [--broker-floor] [--quick]

A real ``interest worker`` runs on the embedded broker and a SQLite store.  This process produces
single-event messages at a fixed rate (``bench.load``; each event's latency counts from when it fell
due, so the load's own batching wait is in it) while a reader thread polls the store every ``--poll-ms`` like any query
service would: after each commit it looks up the people still waiting, and an event is readable at
the poll where its id shows in the person's stored sequence (``Tracker``), so each event gets a
produced -> readable latency measured from outside the worker (no anonymous traffic here, so every
event lands on the person it names).

After each rate the backlog drains (events still unreadable after ``--drain-s`` count as infinitely
late); then the next rate starts.  ``--probe-steps`` further runs look for the highest rate whose
p99 stays under ``--hold-p99-ms`` with the producer reaching 95% of the asked rate.
Target: p99 < 500 ms at 2000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sqlite3
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.broker_floor import BrokerFloor
from bench.common import (
    BENCH_DIR,
    add_broker_option,
    bench_settings,
    broker_name,
    command,
    embedded_broker,
    emit,
    ensure_model,
    knobs,
    machine,
    out_dir,
    plot_path,
    quick_overrides,
    raw_field,
    say,
    target,
)
from bench.freshness_plot import plot_freshness
from bench.hops import assigned, between, scrape
from bench.load import PacedLoad
from bench.rate_search import held, probe_rates
from bench.recovery import as_ms, quantile, recovery
from bench.runs import Proc, cpu_seconds
from interest.embedded import free_port
from schemas.settings import Settings
from streams.stores.sqlite import select_in

TARGET_RATE, TARGET_P99_MS = 2000, 500.0


class Tracker:
    """Outstanding produced events per person, and the moment each becomes readable.

    Exact, by event id: when a person's profile row changes, the reader loads that person's stored
    sequence (written in the same transaction as the profile) and every outstanding event whose id
    is in it became readable at this poll.  An outstanding event older than the oldest event of
    that stored window can no longer appear (applied then pushed out by newer ones, or dropped as
    too late): the profile has moved past it, so it counts as readable now, and as ``superseded``.
    """

    def __init__(self, db_path: str, poll_s: float, seq_len: int = 50) -> None:
        self.db_path = db_path
        self.seq_len = seq_len
        self.poll_s = poll_s
        self.lock = threading.Lock()
        self.pending: dict[str, dict[str, tuple[float, int, str]]] = defaultdict(dict)
        self.outstanding: dict[str, int] = defaultdict(int)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.produced_ms: dict[str, list[float]] = defaultdict(list)  # each latency's produce time
        self.given_up_ms: dict[str, list[float]] = defaultdict(list)  # produce times of the never readable
        self.superseded: dict[str, int] = defaultdict(int)
        self.seen: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="freshness-reader", daemon=True)

    def produced(self, person: str, event_id: str, ts_ms: int, at_ms: float, phase: str) -> None:
        with self.lock:
            self.pending[person][event_id] = (at_ms, ts_ms, phase)
            self.outstanding[phase] += 1

    def _resolve(self, person: str, blob: bytes, now: float) -> None:
        """Match outstanding ids against the stored window (``[[event_id, ts_ms, ...], ...]``, oldest first).

        A quoted-id substring test instead of parsing every window: the reader shares the machine
        with the worker it measures, so it stays cheap.
        """
        mine = self.pending.get(person, {})
        oldest: int | None = None
        for event_id in list(mine):
            at, ts, phase = mine[event_id]
            found = f'"{event_id}"'.encode() in blob
            if not found:
                if oldest is None:
                    first = orjson.loads(blob[1 : blob.index(b"]") + 1]) if blob.startswith(b"[[") else []
                    oldest = int(first[1]) if first else 0
                    full = blob.count(b"],[") + 1 >= self.seq_len
                # A full window's oldest time ties: an event of that very millisecond that is not in it
                # was pushed out by the tie order (heavy people at 5000/s), so it counts as superseded too.
                if ts > oldest or (ts == oldest and not full):
                    continue
                self.superseded[phase] += 1
            del mine[event_id]
            self.latencies[phase].append(now - at)
            self.produced_ms[phase].append(at)
            self.outstanding[phase] -= 1
        if not mine:
            self.pending.pop(person, None)

    def _changed(self, conn: sqlite3.Connection) -> list[str]:
        """People with outstanding events whose profile row was rewritten since the last poll.

        Why by key and not by ``updated_ms``: a scan for recently stamped rows needs a look-back past the
        stamp-to-commit delay (seconds in an overload), so each poll re-read thousands of rows and the
        bench took a third of a core from the worker it measures.  A primary-key lookup of the people
        still waiting costs what the outstanding events cost, and cannot miss a commit however late.
        """
        with self.lock:
            people = list(self.pending)
        rows = select_in(conn, "SELECT person_id, MAX(write_ts) FROM profiles WHERE person_id IN", people,
                         " GROUP BY person_id")
        with self.lock:
            return [person for person, write_ts in rows if write_ts != self.seen.get(person)]

    def _run(self) -> None:
        conn = sqlite3.connect(self.db_path, timeout=5)
        version = None
        try:
            while not self.stop.is_set():
                # No commit since the last poll, no event can have become readable: the worker commits once
                # per batch, so most polls end here at the cost of one pragma.  Read before the lookups, a
                # commit racing them is looked at again next poll.
                now_version = conn.execute("PRAGMA data_version").fetchone()[0]
                if now_version == version:
                    time.sleep(self.poll_s)
                    continue
                version = now_version
                changed = self._changed(conn)
                windows = select_in(conn, "SELECT person_id, events, write_ts FROM sequences WHERE person_id IN",
                                    changed)
                now = time.time() * 1000
                with self.lock:
                    for person, events, write_ts in windows:
                        self.seen[person] = write_ts
                        self._resolve(person, bytes(events), now)
                time.sleep(self.poll_s)
        finally:
            conn.close()

    def wait_drained(self, phase: str, timeout: float, idle_s: float = 10.0) -> bool:
        """Until the phase's events are all readable, or none became readable for ``idle_s``, or timeout."""
        deadline = time.monotonic() + timeout
        last, moved = -1, time.monotonic()
        while time.monotonic() < deadline:
            with self.lock:
                left = self.outstanding[phase]
            if left <= 0:
                return True
            if left != last:
                last, moved = left, time.monotonic()
            elif time.monotonic() - moved > idle_s:
                break
            time.sleep(0.05)
        with self.lock:  # never readable: drop them, so they cannot be mistaken for later events
            for person, mine in list(self.pending.items()):
                for event_id in [e for e, (_, _, ph) in mine.items() if ph == phase]:
                    self.given_up_ms[phase].append(mine.pop(event_id)[0])
                if not mine:
                    del self.pending[person]
        return False


def produce_at(settings: Settings, tracker: Tracker, traffic: Any, rate: float, seconds: float,
               phase: str) -> dict[str, Any]:
    """Send single-event messages at ``rate`` for ``seconds``; latency counts from when each fell due."""
    from interest.produce import raw_topic_map
    from interest.synthetic import RawEvent

    topic_of = raw_topic_map(settings)

    def make(due_ms: list[float]) -> list[tuple[str, bytes, bytes]]:
        records: list[tuple[str, bytes, bytes]] = []
        for event in traffic.events(len(due_ms), int(due_ms[0]), 0.0):
            if not isinstance(event, RawEvent):
                continue
            at_ms = due_ms[len(records)]
            tracker.produced(event.person_id, raw_field(event, "event_id_field"), event.ts_ms, at_ms, phase)
            records.append((topic_of[event.topic], event.key.encode(), orjson.dumps(event.value)))
        return records

    load = PacedLoad(settings, "bench-freshness")
    sent, took, first_ms = asyncio.run(load.run(rate, seconds, make))
    # Record batches, not events, are what the embedded broker's fetch cost grows with (bench.broker_fetch).
    return {"events": sent, "seconds": round(took, 2), "achieved_rate": round(sent / took, 1),
            "first_due_ms": round(first_ms, 1), "record_batches": load.record_batches}


def percentiles(values: list[float], unreadable: int) -> dict[str, float | None]:
    """p50/p95/p99/max in ms; events never readable count as infinitely late (None when reached)."""
    data = sorted(values) + [math.inf] * unreadable
    if not data:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}

    return {f"{name}_ms": as_ms(quantile(data, q)) for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99),
                                                                   ("max", 1.0))}


def run_rate(settings: Settings, tracker: Tracker, traffic: Any, rate: float, seconds: float, drain_s: float,
             probe: bool = False, phase: str | None = None, pause_s: float = 1.0,
             ports: list[int] | None = None, floor: BrokerFloor | None = None,
             cpu: Callable[[], dict[str, float]] | None = None) -> dict[str, Any]:
    phase = phase or f"{rate:g}"
    say(f"rate {rate:g} events/s for {seconds:g}s{' (probe)' if probe else ''}")
    before, started, cpu_before = scrape(ports or [settings.web_port]), time.time(), cpu() if cpu else {}
    sent = produce_at(settings, tracker, traffic, rate, seconds, phase)
    produced_by = time.monotonic()
    drained = tracker.wait_drained(phase, drain_s)
    drain = time.monotonic() - produced_by
    hops = between(before, scrape(ports or [settings.web_port]))
    with tracker.lock:
        values, unreadable = list(tracker.latencies[phase]), max(tracker.outstanding[phase], 0)
        superseded, produced = tracker.superseded[phase], list(tracker.produced_ms[phase])
        given_up = list(tracker.given_up_ms[phase])
    result = {"rate": rate, "probe": probe, **sent, "readable": len(values), "superseded": superseded,
              "unreadable": unreadable, "drained": drained,
              "drain_s": round(drain, 2) if drained else None, **percentiles(values, unreadable), "hops": hops,
              "recovery": recovery([*produced, *given_up], [*values, *[math.inf] * len(given_up)],
                                   sent["first_due_ms"], TARGET_P99_MS)}
    if floor is not None:  # the same raw records, read by a consumer with no worker code behind it
        result["broker_floor"] = floor.between(started, time.time())
    if cpu is not None:  # who had the cores during the phase (2 cores: the broker and this process share them)
        wall = time.time() - started
        result["cores"] = {k: round((v - cpu_before[k]) / wall, 2) for k, v in cpu().items()}
    say(f"rate {rate:g}: achieved {sent['achieved_rate']}/s, p50 {result['p50_ms']} p95 {result['p95_ms']} "
        f"p99 {result['p99_ms']} ms (under {TARGET_P99_MS:g} from second "
        f"{result['recovery']['under_goal_from_s']}); worker p99 <= to ingest {hops['to_ingest']['p99_le_ms']}, "
        f"to update {hops['to_update']['p99_le_ms']}, to written {hops['to_written']['p99_le_ms']} ms")
    time.sleep(pause_s)  # let the worker's last batch and commit settle before the next rate
    return result


def _wait_ready(proc: Proc, port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError("worker not ready")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="500,2000,5000", help="comma-separated events/s")
    parser.add_argument("--seconds", type=float, default=15.0, help="production time per rate")
    parser.add_argument("--probe-steps", type=int, default=3, help="extra runs searching the highest rate held")
    parser.add_argument("--hold-p99-ms", type=float, default=1000.0, help="p99 under which a rate counts as held")
    parser.add_argument("--drain-s", type=float, default=60.0, help="wait for a rate's backlog at most this long")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--poll-ms", type=float, default=20.0, help="store polling interval of the reader")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out-dir", default=str(BENCH_DIR))
    parser.add_argument("--registry", default=None, help="bench model registry (default OUT_DIR/registry)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the group and the store")
    parser.add_argument("--split", action="store_true", help="run each worker as `interest worker --split`")
    parser.add_argument("--no-recovery", action="store_true",
                        help="skip the run at the target rate right after the fastest rate (drain and recovery)")
    parser.add_argument("--broker-floor", action="store_true",
                        help="also read the raw topics with a plain consumer: hop 1 without the worker, per rate")
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    add_broker_option(parser)
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if args.quick:
        rates, args.seconds, args.probe_steps, args.drain_s = [200.0, 500.0], min(args.seconds, 1.5), 0, 20.0
        args.users, args.items = min(args.users, 300), min(args.items, 600)
    directory = out_dir(args.out_dir, "freshness")
    registry = args.registry or str(Path(args.out_dir) / "registry")
    report: dict[str, Any] = {"bench": "freshness", "command": command("freshness", argv), "machine": machine(),
                              "users": args.users, "seconds_per_rate": args.seconds, "poll_ms": args.poll_ms,
                              "quick": args.quick, "message": "one event per message"}
    report["model_version"] = ensure_model(registry, args.quick)
    from interest.synthetic import SyntheticTraffic
    from schemas.adapters import load_adapters
    from streams.kafka_config import ensure_topics, worker_topics

    traffic = SyntheticTraffic(load_adapters(), users=args.users, items=args.items, seed=args.seed,
                               anonymous_share=0.0)
    with embedded_broker(directory, args.broker) as broker:
        report["broker"] = broker_name(broker)
        settings = bench_settings(broker.url, directory, f"f{int(time.time())}", registry,
                                  **quick_overrides(args))
        report["settings"] = knobs(settings) | {"workers": args.workers, "split": args.split}
        ensure_topics(settings, worker_topics(settings))
        procs = [Proc.worker(settings.model_copy(update={"web_port": settings.web_port if i == 0 else free_port(),
                                                        "data_dir": f"{settings.data_dir}/w{i}"}),
                             directory / f"worker-{i}.log", split=args.split) for i in range(args.workers)]
        ports = [port for p in procs for port in p.ports()]
        tracker = Tracker(settings.sqlite_path(), args.poll_ms / 1000, settings.seq_len)
        floor: BrokerFloor | None = None

        def cpu() -> dict[str, float]:
            here = {"broker": cpu_seconds(broker.proc.pid)} if broker.proc else {}  # a cluster's is not ours
            return here | {"workers": sum(p.cpu_s() for p in procs),
                           "bench (load, reader)": cpu_seconds(os.getpid(), children=False)}

        try:
            floor = BrokerFloor(settings).start() if args.broker_floor else None
            for proc in procs:
                for port in proc.ports():
                    _wait_ready(proc, port)
            tracker.thread.start()
            say("warm-up")
            warm = run_rate(settings, tracker, traffic, 200, 1.0 if args.quick else 2.0, 60.0, phase="warm-up",
                            ports=ports)
            if not warm["drained"]:
                raise RuntimeError("warm-up events never became readable; see worker-*.log")

            def run(rate: float, probe: bool = False, phase: str | None = None) -> dict[str, Any]:
                for proc in procs:
                    proc.check()
                return run_rate(settings, tracker, traffic, rate, args.seconds, args.drain_s, probe, phase=phase,
                                pause_s=0.2 if args.quick else 1.0, ports=ports, floor=floor, cpu=cpu)

            results = [run(rate) for rate in rates]
            if not args.no_recovery and max(rates, default=0) > TARGET_RATE:
                # Right after the fastest (overload) rate has drained: is the worker back under the goal?
                report["after_overload"] = {"overload_rate": max(rates),
                                            "overload_drain_s": results[rates.index(max(rates))]["drain_s"],
                                            **run(TARGET_RATE, phase="after-overload")}
            probe_rates(lambda rate: run(rate, True), results, args.probe_steps, args.hold_p99_ms)
            time.sleep(5.5)  # one more lag-gauge tick: its series name each worker's partitions now
            report["person_partitions"] = settings.person_partitions
            report["person_partitions_by_worker"] = [assigned(p.ports()[0], settings.person_topic) for p in procs]
            report["worker_peak_rss_mb"] = [round(proc.rss_mb()[1], 1) for proc in procs]
        finally:
            if floor is not None:
                floor.stop()
            tracker.stop.set()
            for proc in procs:
                proc.stop()
    report["rates"] = sorted(results, key=lambda r: r["rate"])
    best = max((r for r in results if held(r, args.hold_p99_ms)), key=lambda r: r["rate"], default=None)
    report["max_rate_held"] = None if best is None else {k: best[k] for k in ("rate", "achieved_rate", "p50_ms",
                                                                                 "p95_ms", "p99_ms")}
    at_target = next((r for r in results if r["rate"] == TARGET_RATE), None)
    report["targets"] = {"p99_ms_at_2000_per_s": target(at_target["p99_ms"] if at_target else None, TARGET_P99_MS,
                                                        higher_is_better=False)}
    if "after_overload" in report:
        report["targets"]["p99_ms_at_2000_per_s_after_overload"] = target(
            report["after_overload"]["p99_ms"], TARGET_P99_MS, higher_is_better=False)
    report["all_targets_met"] = all(t["met"] for t in report["targets"].values())
    path = plot_path(directory, "freshness")
    plot_freshness(report, tracker.latencies, path, TARGET_RATE, TARGET_P99_MS)
    report["plot"] = str(path)
    return emit(report)


if __name__ == "__main__":
    main(sys.argv[1:])
