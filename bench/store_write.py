"""The SQLite store's write path alone: CPU per person written, SQLite's defaults against the shipped options.

    python -m bench.store_write [--people 5000] [--batch 1500] [--rounds 12] [--repeats 3] [--quick]

Why: the store write is the largest row of the worker's profile (``bench.profile``), and a person's row
is a ~3 KiB sequence blob in a ``WITHOUT ROWID`` table.  This times ``SqliteStore.write_batch`` (row
packing and the SQLite transaction, both counted in the process's CPU time) for batches of ``--batch``
random people out of ``--people``, each a 50-event state and a 64-dim profile with 3 interests, as the
worker writes them after a catch-up's first rounds (mostly updates).  Two variants, interleaved
``--repeats`` times, each on a new file: ``sqlite_defaults`` (4 KiB pages, SQLite's 2 MiB cache) and
``shipped`` (a new file's 16 KiB pages and ``cache_mb`` 64).  Both ``synchronous=FULL``.  The first
two rounds of each file are not counted (the file is still filling).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BENCH_DIR, command, emit, machine, out_dir, ratio, say, target

TARGET_RATIO = 0.8  # the shipped options should cost at most this share of the defaults' CPU per person
DIM, EVENTS = 64, 50


def _batch(ids: list[int], round_no: int, rng: random.Random) -> Any:
    from schemas.sequence import Interest, PersonState, Profile, SeqEvent, window_write_ts
    from streams.stores.base import StoreBatch

    states, profiles = [], []
    base = 1_790_000_000_000 + round_no * 10_000_000
    for n in ids:
        person = f"web:user-{n:08d}"
        events = [SeqEvent(f"web-{n}-{round_no}-{i}-{rng.getrandbits(40):010x}", base + i * 1000,
                           f"item-{rng.randrange(20_000)}", ("click", "browse", "purchase")[i % 3], "web", 1.0)
                  for i in range(EVENTS)]
        write_ts = window_write_ts(events)
        states.append(PersonState(person, events, EVENTS, events[0].ts_ms, events[-1].ts_ms, {"web": EVENTS},
                                  write_ts))
        vectors = np.random.default_rng(n + round_no).standard_normal((4, DIM)).astype(np.float32)
        interests = tuple(Interest(vectors[k + 1], 1 / 3, (f"item-{k}", f"item-{k + 1}")) for k in range(3))
        profiles.append(Profile(person, "v1", vectors[0], EVENTS, events[0].ts_ms, events[-1].ts_ms,
                                {"web": EVENTS}, write_ts, int(time.time() * 1000), interests))
    return StoreBatch(states=states, profiles=profiles)


async def _run(path: Path, defaults: bool, people: int, batch: int, rounds: int, seed: int) -> dict[str, Any]:
    from streams.stores.sqlite import SqliteStore
    from streams.stores.sqlite_schema import init_schema

    if defaults:  # a file made with SQLite's own page size, as before the shipped options
        with sqlite3.connect(path, isolation_level=None) as conn:
            conn.execute("PRAGMA page_size = 4096")
            conn.execute("PRAGMA journal_mode = WAL")
            init_schema(conn, DIM)
        conn.close()
    store = SqliteStore(str(path), cache_mb=2 if defaults else 64)
    await store.init_schema(DIM)
    rng = random.Random(seed)
    per_person: list[float] = []
    try:
        for round_no in range(rounds):
            data = _batch(rng.sample(range(people), batch), round_no, rng)
            started = time.process_time()
            await store.write_batch(data)
            if round_no >= 2:
                per_person.append((time.process_time() - started) / batch * 1e6)
    finally:
        await store.close()
    return {"cpu_us_per_person": round(statistics.median(per_person), 1), "file_kib": path.stat().st_size // 1024}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.store_write", description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=1_500, help="people per write_batch")
    parser.add_argument("--rounds", type=int, default=12, help="batches per file (the first two not counted)")
    parser.add_argument("--repeats", type=int, default=3, help="files per variant, interleaved")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out-dir", default=str(BENCH_DIR))
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.people, args.batch, args.rounds, args.repeats = 400, 100, 4, 1
    if args.rounds < 3 or not 1 <= args.batch <= args.people or args.repeats < 1:
        parser.error("need --rounds >= 3, 1 <= --batch <= --people and --repeats >= 1")
    directory = out_dir(args.out_dir, "store_write")
    runs: dict[str, list[dict[str, Any]]] = {"sqlite_defaults": [], "shipped": []}
    for repeat in range(args.repeats):
        for name in runs:
            path = directory / f"{name}-{repeat}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            run = asyncio.run(_run(path, name == "sqlite_defaults", args.people, args.batch, args.rounds,
                                   args.seed + repeat))
            runs[name].append(run)
            say(f"{name} #{repeat}: {run['cpu_us_per_person']} us of CPU per person, file {run['file_kib']} KiB")
    median = {name: statistics.median(r["cpu_us_per_person"] for r in rs) for name, rs in runs.items()}
    shipped_vs_defaults = ratio(median["shipped"], median["sqlite_defaults"])
    report: dict[str, Any] = {
        "bench": "store_write", "command": command("store_write", argv), "machine": machine(),
        "people": args.people, "batch": args.batch, "rounds": args.rounds, "quick": args.quick, "runs": runs,
        "median_cpu_us_per_person": median,
        "ratios": {"shipped_vs_defaults_cpu": shipped_vs_defaults,
                   "shipped_vs_defaults_file": ratio(runs["shipped"][-1]["file_kib"],
                                                     runs["sqlite_defaults"][-1]["file_kib"])},
        "targets": {"shipped_vs_defaults_cpu": target(shipped_vs_defaults, TARGET_RATIO, higher_is_better=False)},
    }
    report["all_targets_met"] = all(t["met"] for t in report["targets"].values())
    return emit(report)


if __name__ == "__main__":
    main(sys.argv[1:])
