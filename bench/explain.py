"""How long ``interest explain`` takes for a 50-event sequence on this CPU: one JSON line.

    python -m bench.explain [--registry DIR --version V] [--people 40] [--threads N]

The explanation is leave-one-out occlusion (``model/explain.py``): 51 encoder
rows in one runtime call for a 50-event window.  Without ``--registry`` the
bench trains one epoch of the default architecture with a 50-event window on
MovieLens-100K (quality is beside the point here, the graph's shape is what
costs).  It explains the top recommendation and the vector of the people
with the longest histories (their last 50 events), through ``EncoderRuntime``
with the worker's thread count, and reports p50/p99 milliseconds against the
200 ms goal; the same-run baseline is one plain encode of the same sequence.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BENCH_DIR, command, emit, machine, say, target

GOAL_MS = 200.0
WINDOW = 50


def _ms(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=None)
    parser.add_argument("--version", default=None)
    parser.add_argument("--people", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: the worker's)")
    parser.add_argument("--out-dir", default=str(BENCH_DIR))
    args = parser.parse_args(argv)

    from interest.query_cmd import top_items
    from model.data import load_events, movielens_path
    from model.explain import explain
    from model.registry import Registry
    from model.runtime import EncoderRuntime
    from model.trainer import named_config, train

    people = load_events(movielens_path())
    if args.registry:
        registry, version = args.registry, Registry(args.registry).resolve(args.version)
    else:
        registry = str(Path(args.out_dir) / "explain" / f"registry-{int(time.time())}-{os.getpid()}")
        say(f"training one epoch of the default architecture with a {WINDOW}-event window into {registry}")
        cfg = named_config("default", max_len=WINDOW, epochs=1, progress=False)
        version = train(movielens_path(), registry, cfg).version
    threads = args.threads or max(1, min(4, os.cpu_count() or 1))
    runtime = EncoderRuntime.load(registry, version, use_gpu="no", threads=threads, precision="fp32")
    window = min(WINDOW, int(runtime.spec.max_len))
    longest = sorted(people.values(), key=len, reverse=True)[: args.people]
    sequences = [seq[-window:] for seq in longest]
    explain(runtime, sequences[0])  # warm-up: sessions, buckets
    plain, item_ms, vector_ms = [], [], []
    for seq in sequences:
        vector = runtime.encode([seq])[0]
        best = top_items(vector, runtime.item_ids, runtime.item_matrix, {e.item_id for e in seq}, 1)[0][0]
        plain.append(_ms(lambda seq=seq: runtime.encode([seq])))
        item_ms.append(_ms(lambda seq=seq, best=best: explain(runtime, seq, item=best)))
        vector_ms.append(_ms(lambda seq=seq: explain(runtime, seq)))
    say(f"explain {len(sequences)} sequences of {window} events: item p50 {statistics.median(item_ms):.1f} ms")
    report: dict[str, Any] = {
        "bench": "explain", "method": "leave-one-out occlusion, one batched runtime call",
        "version": version, "registry": registry, "events_per_sequence": window, "sequences": len(sequences),
        "threads": threads,
        "explain_item_ms": {"p50": _pct(item_ms, 50), "p99": _pct(item_ms, 99), "max": round(max(item_ms), 2)},
        "explain_vector_ms": {"p50": _pct(vector_ms, 50), "p99": _pct(vector_ms, 99)},
        "baseline_one_encode_ms": {"p50": _pct(plain, 50), "p99": _pct(plain, 99)},
        "ratio_explain_vs_one_encode": round(statistics.median(item_ms) / max(statistics.median(plain), 1e-9), 1),
        "targets": {"explain_item_p99_ms": target(_pct(item_ms, 99), GOAL_MS, higher_is_better=False)},
        "command": command("explain", argv), "machine": machine(),
    }
    report["passed"] = all(t["met"] for t in report["targets"].values())
    return emit(report)


if __name__ == "__main__":
    main(sys.argv[1:])
