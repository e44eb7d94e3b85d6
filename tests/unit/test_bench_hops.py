"""bench.hops reads the worker's per-hop histograms off a real Prometheus page and subtracts two scrapes."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.hops import between, parse, quantile
from streams import metrics


def _page(samples: dict[str, list[float]], written: list[float]) -> tuple[CollectorRegistry, Histogram, Histogram]:
    registry = CollectorRegistry()
    arrival = Histogram("interest_stage_arrival_seconds", "x", ["stage"], registry=registry,
                        buckets=metrics.STAGE_ARRIVAL._upper_bounds[:-1])
    done = Histogram("interest_produced_to_written_seconds", "x", registry=registry,
                     buckets=metrics.PRODUCED_TO_WRITTEN._upper_bounds[:-1])
    for stage, values in samples.items():
        for v in values:
            arrival.labels(stage).observe(v)
    for v in written:
        done.observe(v)
    return registry, arrival, done


def test_quantiles_are_bucket_bounds_of_what_was_observed_between_two_scrapes() -> None:
    registry, arrival, done = _page({"ingest": [0.02] * 50, "update": [0.06] * 50}, [0.3] * 10)
    before = parse(generate_latest(registry).decode())
    for _ in range(98):
        arrival.labels("ingest").observe(0.04)
        arrival.labels("update").observe(0.12)
        done.observe(0.18)
    arrival.labels("ingest").observe(0.9)
    arrival.labels("ingest").observe(0.9)
    after = parse(generate_latest(registry).decode())
    hops = between(before, after)
    # Only the second scrape's new samples count: 98 at 40 ms and 2 at 900 ms for ingest.
    assert hops["to_ingest"] == {"samples": 100, "p50_le_ms": 50.0, "p99_le_ms": 1000.0}
    assert hops["to_update"] == {"samples": 98, "p50_le_ms": 150.0, "p99_le_ms": 150.0}
    assert hops["to_written"] == {"samples": 98, "p50_le_ms": 200.0, "p99_le_ms": 200.0}


def test_no_samples_and_past_the_top_bucket_are_none_not_a_number() -> None:
    registry, _, done = _page({}, [])
    empty = parse(generate_latest(registry).decode())
    assert between(empty, empty)["to_written"] == {"samples": 0, "p50_le_ms": None, "p99_le_ms": None}
    done.observe(500.0)  # beyond the largest bound: only +Inf holds it
    assert quantile(parse(generate_latest(registry).decode())["to_written"], 0.5) == float("inf")


def test_the_worker_observes_each_event_from_its_produce_time() -> None:
    before = parse(generate_latest().decode())
    now = time.time() * 1000
    metrics.observe_arrivals("update", [int(now - 120), None, int(now - 120), 0])
    hops = between(before, parse(generate_latest().decode()))
    assert hops["to_update"]["samples"] == 2  # events without a produce time are not samples
    assert hops["to_update"]["p50_le_ms"] == 150.0


def test_the_update_steps_per_batch_come_with_the_hops() -> None:
    """Encode and store write per batch: whether the update's own steps or the waits around them hold a rate."""
    registry = CollectorRegistry()
    encode = Histogram("interest_encode_seconds", "x", registry=registry,
                       buckets=metrics.ENCODE_SECONDS._upper_bounds[:-1])
    write = Histogram("interest_store_write_seconds", "x", registry=registry,
                      buckets=metrics.STORE_WRITE_SECONDS._upper_bounds[:-1])
    before = parse(generate_latest(registry).decode())
    for _ in range(9):
        encode.observe(0.02)
        write.observe(0.004)
    write.observe(0.3)
    hops = between(before, parse(generate_latest(registry).decode()))
    assert hops["encode_per_batch"] == {"samples": 9, "p50_le_ms": 25.0, "p99_le_ms": 25.0}
    assert hops["store_write_per_batch"] == {"samples": 10, "p50_le_ms": 5.0, "p99_le_ms": 500.0}


def test_a_collection_is_a_pause_on_the_page_by_generation() -> None:
    """The worker's collector pauses stop both stages; each one is observed, by generation."""
    import gc

    metrics.watch_gc()
    metrics.watch_gc()  # idempotent: one observation per collection, not two
    gc.disable()  # only the collections asked for below (explicit ones still call the callbacks)
    try:
        before = parse(generate_latest().decode())
        gc.collect(2)
        gc.collect(0)
        gc.collect(0)
        hops = between(before, parse(generate_latest().decode()))
    finally:
        gc.enable()
    assert hops["gc_pause_gen2"]["samples"] == 1
    assert hops["gc_pause_gen0"]["samples"] == 2
    assert hops["gc_pause_gen1"]["samples"] == 0
    assert hops["gc_pause_gen2"]["p99_le_ms"] is not None


def test_a_collection_while_a_scrape_holds_the_metrics_lock_does_not_wait_for_it() -> None:
    """A scrape copies the pause metric's children under its (non-reentrant) lock, and that copy can start a
    collection on the scraping thread: the callback must never need that lock, or the worker would hang."""
    import gc
    import threading

    metrics.watch_gc()
    done = threading.Event()

    def collect() -> None:
        gc.collect(0)
        done.set()

    worker = threading.Thread(target=collect, daemon=True)
    with metrics.GC_PAUSE._lock:  # what ``_multi_samples`` holds during a scrape
        worker.start()
        finished = done.wait(5)
    worker.join(5)
    assert finished, "the collector's callback waited for the metric's lock"
