"""The floor under freshness: one produce -> consume hop through the broker, no worker at all.

    python -m bench.broker_hop [--rate 2000] [--seconds 30] [--linger-ms 1] [--fresh-topic-seconds 10] [--quick]

Why: ``bench.freshness`` measures two hops (raw topic, person topic) plus the update.  This bench
sends single-event messages at ``--rate`` with the same kafka-python producer settings the freshness
bench uses and reads them back with one plain consumer (fetch wait as the worker's), on the same
machine: each message's latency is consume time minus its record timestamp, reported per 5-second
window so a latency that grows with the data the broker holds shows as such.  The consumer joins
(and is assigned every partition) before the first message is sent.

Then, on the same broker, a second topic gets the same traffic for ``--fresh-topic-seconds``: if
its first window is as fast as the first topic's first window, the slowdown belongs to the topic
(what it holds), not to the broker process or the clients.  ``--linger-ms`` sets the producer's
batching: fewer, larger record batches per partition for the broker to hold.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
    command,
    create_topic,
    embedded_broker,
    emit,
    machine,
    out_dir,
    percentile,
    ratio,
    say,
    target,
)

WINDOW_S = 5.0
# Freshness allows 500 ms for two hops and the update: one hop's share is at most half of it.  A broker
# fit for the goal also does not slow down as it fills: the last window's p50 within 1.5x the first's.
HOP_P99_MS, GROWTH_MAX = 250.0, 1.5


def measure(url: str, rate: float, seconds: float, partitions: int = 12, fetch_wait_ms: int = 50,
            linger_ms: int = 1) -> dict[str, Any]:
    """Produce at ``rate`` for ``seconds``; (consume time, latency ms) of every message read back."""
    from kafka import KafkaConsumer, KafkaProducer

    topic = f"hop-{int(time.time() * 1000)}"
    create_topic(url, topic, partitions)
    seen: list[tuple[float, float]] = []
    stop, assigned = threading.Event(), threading.Event()
    consumer = KafkaConsumer(bootstrap_servers=url, group_id=f"{topic}-g", auto_offset_reset="earliest",
                             fetch_max_wait_ms=fetch_wait_ms, session_timeout_ms=6000, heartbeat_interval_ms=1000)
    consumer.subscribe([topic])

    def consume() -> None:
        while not stop.is_set():
            batches = consumer.poll(100)
            if consumer.assignment():
                assigned.set()
            now = time.time() * 1000
            seen.extend((now, now - m.timestamp) for msgs in batches.values() for m in msgs)

    reader = threading.Thread(target=consume, name="hop-reader", daemon=True)
    reader.start()
    if not assigned.wait(60):
        raise TimeoutError("the consumer was never assigned its partitions")
    producer = KafkaProducer(bootstrap_servers=url, linger_ms=linger_ms, acks="all", client_id="bench-hop")
    sent, started = 0, time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        due = min(int(rate * elapsed) - sent, 1000)
        for _ in range(max(due, 0)):
            producer.send(topic, key=str(sent).encode(), value=b'{"n": %d}' % sent)
            sent += 1
        time.sleep(0.002)
    producer.flush()
    took = time.monotonic() - started
    deadline = time.monotonic() + 30
    while len(seen) < sent and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    reader.join(5)
    consumer.close()
    producer.close()
    return {"sent": sent, "received": len(seen), "achieved_rate": round(sent / took, 1), "seen": seen}


def windows(seen: list[tuple[float, float]], width_s: float = WINDOW_S) -> list[dict[str, Any]]:
    """p50/p99 latency per ``width_s`` window of consume time (the growth over a run)."""
    if not seen:
        return []
    first = min(at for at, _ in seen)
    by: dict[int, list[float]] = {}
    for at, latency in seen:
        by.setdefault(int((at - first) / 1000 // width_s), []).append(latency)
    return [{"from_s": k * width_s, "messages": len(v), "p50_ms": percentile(v, 0.5), "p99_ms": percentile(v, 0.99)}
            for k, v in sorted(by.items())]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--linger-ms", type=int, default=1, help="producer linger (the freshness bench's is 1)")
    parser.add_argument("--fresh-topic-seconds", type=float, default=10.0,
                        help="then this long on a new topic of the same broker (0: skip)")
    parser.add_argument("--out-dir", default=str(BENCH_DIR))
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rate, args.seconds = min(args.rate, 200.0), min(args.seconds, 3.0)
        args.fresh_topic_seconds = min(args.fresh_topic_seconds, 2.0)
    directory = out_dir(args.out_dir, "broker_hop")
    say(f"one hop through the embedded broker at {args.rate:g} messages/s for {args.seconds:g}s")
    with embedded_broker(Path(directory)) as broker:
        run = measure(broker.url, args.rate, args.seconds, linger_ms=args.linger_ms)
        fresh = (measure(broker.url, args.rate, args.fresh_topic_seconds, linger_ms=args.linger_ms)
                 if args.fresh_topic_seconds > 0 else None)
    latencies = [latency for _, latency in run["seen"]]
    report: dict[str, Any] = {
        "bench": "broker_hop", "command": command("broker_hop", argv), "machine": machine(),
        "rate": args.rate, "seconds": args.seconds, "linger_ms": args.linger_ms, "quick": args.quick,
        **{k: v for k, v in run.items() if k != "seen"},
        "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99),
        "windows": windows(run["seen"]),
    }
    full = [w for w in report["windows"] if w["messages"] >= 0.5 * args.rate * WINDOW_S]
    growth = ratio(full[-1]["p50_ms"], full[0]["p50_ms"]) if len(full) >= 2 else None
    report["ratios"] = {"last_vs_first_window_p50": growth}
    if fresh is not None:  # the same broker process, a topic that holds nothing yet
        report["fresh_topic"] = {"seconds": args.fresh_topic_seconds, "windows": windows(fresh["seen"]),
                                 **{k: v for k, v in fresh.items() if k != "seen"}}
        if report["fresh_topic"]["windows"] and full:
            report["ratios"]["fresh_topic_first_vs_first_window_p50"] = ratio(
                report["fresh_topic"]["windows"][0]["p50_ms"], full[0]["p50_ms"])
    report["targets"] = {"hop_p99_ms": target(report["p99_ms"], HOP_P99_MS, higher_is_better=False)}
    if growth is not None:
        report["targets"]["p50_growth"] = target(growth, GROWTH_MAX, higher_is_better=False)
    report["all_targets_met"] = all(t["met"] for t in report["targets"].values())
    return emit(report)


if __name__ == "__main__":
    main(sys.argv[1:])
