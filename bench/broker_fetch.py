"""What one fetch costs on the embedded broker as a partition fills: the floor under a sustained rate.

    python -m bench.broker_fetch [--batches 40000] [--step 5000] [--probes 30] [--quick]

Why: held for a minute at 2 000 events/s, freshness on the embedded broker climbs past the goal while
the worker's own per-batch times stay flat, and a plain reader of the same topics slows down with it
(``bench.freshness --broker-floor``, ``bench.broker_hop``).  Tansu 0.6's memory storage keeps every
produced record batch as one object (``.../partitions/<p>/records/<base offset>.batch``), and a fetch
that finds data lists every object of the partition to find the batch holding its offset
(``DynoStore::fetch`` in tansu-storage; there is no retention to bound them: ``delete_records`` is
unimplemented and ``retention.ms`` is stored, not acted on).  So a fetch costs O(batches the partition
holds), and a caught-up consumer pays it on every fetch that returns a record.

This bench fills one partition with single-record batches (what a 5 ms linger makes at 2 000 events/s
over the worker's 48 raw partitions: one or two records a batch) and every ``--step`` batches times
``--probes`` raw Fetch requests through aiokafka's client: for the newest record (what a caught-up
consumer asks for; with the worker's 50 ms fetch wait, which the broker does not wait out once it found
data) and for the end offset (nothing there: the broker answers without listing).  It reports the
median and p90 per level, the slope in ms per 10 000 stored batches, and a target a Kafka-like broker
meets and this one is not expected to: the fetch of the newest record at the last level within 1.5x of
the first level's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
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
from interest.embedded import EmbeddedBroker

GROWTH_MAX = 1.5
# The worker's fetch wait for the newest record: the broker answers as soon as its pass found the record, but a
# wait shorter than the listing itself (1 ms) makes it drop what it found and answer nothing.  The end offset
# is asked with 1 ms: with nothing there the broker would otherwise hold the fetch for the whole wait.
NEWEST_WAIT_MS, END_WAIT_MS = 50, 1
EMPTY_RETRIES = 5  # an empty answer for the newest record is asked again, counted, and not timed
TOPIC = "bench-broker-fetch"


async def _fill(producer: Any, count: int, first: int) -> None:
    """``count`` single-record batches on partition 0, ten requests in flight (one batch per request)."""
    pending: list[Any] = []
    for n in range(first, first + count):
        batch = producer.create_batch()
        batch.append(key=None, value=b"e%d" % n, timestamp=None)
        pending.append(await producer.send_batch(batch, TOPIC, partition=0))
        if len(pending) >= 10:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def _fetch_ms(client: Any, node: int, offset: int, wait_ms: int) -> tuple[float, int]:
    """One Fetch of partition 0 at ``offset``: (round trip ms, records' bytes returned)."""
    from aiokafka.protocol.fetch import FetchRequest

    request = FetchRequest(max_wait_time=wait_ms, min_bytes=1, max_bytes=1 << 20, isolation_level=0,
                           topics=[(TOPIC, [(0, offset, 1 << 20)])])
    started = time.perf_counter()
    response = await client.send(node, request)
    took = (time.perf_counter() - started) * 1000
    partitions = [p for _, parts in response.topics for p in parts]
    if len(partitions) != 1 or partitions[0][1] != 0:  # [partition, error_code, ..., records]
        raise RuntimeError(f"fetch of {TOPIC}[0] at offset {offset} answered {response}")
    return took, len(partitions[0][-1] or b"")


async def measure(host: str, batches: int, step: int, probes: int) -> list[dict[str, Any]]:
    """The levels of one partition on the broker at ``host`` (``host:port``), filled to ``batches``."""
    from aiokafka import AIOKafkaClient, AIOKafkaProducer

    create_topic(host, TOPIC, 1)
    producer = AIOKafkaProducer(bootstrap_servers=host, acks=1, linger_ms=0)
    client = AIOKafkaClient(bootstrap_servers=host)
    await producer.start()
    await client.bootstrap()
    levels: list[dict[str, Any]] = []
    try:
        await _fill(producer, 1, 0)
        node, stored = client.cluster.brokers().pop().nodeId, 1
        while True:
            newest, end, returned, empty = [], [], 0, 0
            for _ in range(probes):
                for _attempt in range(EMPTY_RETRIES + 1):
                    took, size = await _fetch_ms(client, node, stored - 1, NEWEST_WAIT_MS)
                    if size:  # only an answer with the record did the listing being timed
                        newest.append(took)
                        returned += 1
                        break
                    empty += 1
                end.append((await _fetch_ms(client, node, stored, END_WAIT_MS))[0])
            levels.append({"stored_batches": stored, "newest_p50_ms": percentile(newest, 0.5),
                           "newest_p90_ms": percentile(newest, 0.9), "end_p50_ms": percentile(end, 0.5),
                           "newest_returned": returned, "empty_answers": empty, "fill_per_s": None})
            say(f"{stored} batches stored: fetch of the newest p50 {levels[-1]['newest_p50_ms']} ms, "
                f"of the end {levels[-1]['end_p50_ms']} ms")
            if stored >= batches:
                return levels
            started = time.perf_counter()
            add = min(step, batches - stored)
            await _fill(producer, add, stored)
            stored += add
            levels[-1]["fill_per_s"] = round(add / (time.perf_counter() - started))
    finally:
        await producer.stop()
        await client.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.broker_fetch", description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=40_000, help="record batches stored at the last level")
    parser.add_argument("--step", type=int, default=5_000, help="batches added between two levels")
    parser.add_argument("--probes", type=int, default=30, help="timed fetches per level (each kind)")
    parser.add_argument("--out-dir", default=str(BENCH_DIR))
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    args = parser.parse_args(argv)
    if min(args.batches, args.step, args.probes) < 1:
        parser.error("--batches, --step and --probes must be at least 1")
    if args.quick:
        args.batches, args.step, args.probes = min(args.batches, 600), min(args.step, 300), min(args.probes, 5)
    directory = out_dir(args.out_dir, "broker_fetch")
    say(f"one partition of the embedded broker filled to {args.batches} single-record batches")
    with embedded_broker(Path(directory)) as broker:
        assert isinstance(broker, EmbeddedBroker)  # this bench measures the embedded broker itself
        levels = asyncio.run(measure(broker.bootstrap, args.batches, args.step, args.probes))
    first, last = levels[0], levels[-1]
    span = last["stored_batches"] - first["stored_batches"]
    slope = (last["newest_p50_ms"] - first["newest_p50_ms"]) / span * 10_000 if span else None
    growth = ratio(last["newest_p50_ms"], first["newest_p50_ms"])
    report: dict[str, Any] = {
        "bench": "broker_fetch", "command": command("broker_fetch", argv), "machine": machine(),
        "batches": args.batches, "step": args.step, "probes": args.probes, "quick": args.quick, "levels": levels,
        "newest_ms_per_10k_batches": None if slope is None else round(slope, 3),
        "ratios": {"last_vs_first_newest_p50": growth,
                   "newest_vs_end_p50_at_last": ratio(last["newest_p50_ms"], last["end_p50_ms"])},
        "targets": {"fetch_growth": target(growth, GROWTH_MAX, higher_is_better=False)},
    }
    report["all_targets_met"] = all(t["met"] for t in report["targets"].values())
    return emit(report)


if __name__ == "__main__":
    main(sys.argv[1:])
