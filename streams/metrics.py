"""Prometheus metrics of a worker (served on the Faust web port at /metrics).

What to alert on is in the README's runbook: freshness p99, consumer lag,
DLQ rate by reason, store-unavailable retries, refused model versions.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram, Info

EVENTS_IN = Counter("interest_events_in_total", "Raw events accepted", ["platform", "action"])
REJECTED = Counter("interest_events_rejected_total", "Inputs sent to the DLQ", ["reason"])
LINKS_IN = Counter("interest_identity_links_total", "Identity links accepted")
APPLIED = Counter("interest_events_applied_total", "Events merged into a sequence")
DUPLICATES = Counter("interest_events_duplicate_total", "Events already applied (replays, retries)")
TOO_LATE = Counter("interest_events_too_late_total", "Events older than a full window (cannot matter)")
ERASED_DROPPED = Counter("interest_events_erased_total", "Events of an erased person dropped")
FORWARDED = Counter("interest_records_forwarded_total", "Records moved to a linked person's partition")
# A first link moves the device's stored events to the person, where they are applied (and counted) again
# while the device's row goes: stored events = applied - moved, which is what a replay check adds up.
HISTORY_MOVED = Counter("interest_history_moved_total", "Stored device events moved to the person at a first link")
BATCH_SIZE = Histogram(
    "interest_batch_size", "Messages per micro-batch", ["stage"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
)
PEOPLE_UPDATED = Counter("interest_people_updated_total", "Profiles written")
ENCODE_SECONDS = Histogram(
    "interest_encode_seconds", "Runtime call per batch",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
STORE_WRITE_SECONDS = Histogram(
    "interest_store_write_seconds", "Store write per batch",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
FRESHNESS = Histogram(
    "interest_freshness_seconds", "Event time to profile written",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)
# Fine around the 500 ms freshness goal, where bucket bounds are what a p99 can be read to.
PIPELINE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2, 5, 10, 30, 60)
PRODUCED_TO_WRITTEN = Histogram(
    "interest_produced_to_written_seconds", "Event reached Kafka (record timestamp) to profile written",
    buckets=PIPELINE_BUCKETS,
)
# Where an event's freshness goes: produced (the Kafka record timestamp the producer stamps) to each stage
# taking it in; with PRODUCED_TO_WRITTEN this splits the latency into the two hops and the update itself.
STAGE_ARRIVAL = Histogram(
    "interest_stage_arrival_seconds", "Event produced (record timestamp) to a stage taking it in", ["stage"],
    buckets=PIPELINE_BUCKETS,
)
STORE_RETRIES = Counter("interest_store_unavailable_total", "Batches retried because the store was down")
BATCH_FAILURES = Counter("interest_batch_failures_total", "Batches that failed with a non-transient error")
LAG = Gauge("interest_consumer_lag", "Messages behind the high-water mark", ["topic", "partition"])
# 1 when /ready would answer 200, else 0; an alert on /ready needs a series (kube-state-metrics is not
# there in compose). Starts at 0: a worker that never becomes ready shows as not ready.
READY = Gauge("interest_ready", "1 when the worker is ready (/ready 200), 0 when not")
MODEL_INFO = Info("interest_model", "Model version in use")
MODEL_REFUSED = Counter("interest_model_refused_total", "Model versions refused by the checks", ["reason"])
MODEL_SWAPS = Counter("interest_model_swaps_total", "Model versions swapped in (start-up, promote, rollback)")
MODEL_LOAD_SECONDS = Histogram(
    "interest_model_load_seconds", "Verify + load + warm-up of a new model version",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)

# The collector stops every thread that needs the GIL, the event loop included: a pause here is a pause
# of both stages.  Fine at the bottom, where young collections are.
GC_PAUSE = Histogram(
    "interest_gc_pause_seconds", "Garbage collection pauses", ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


# Bound once, here: the callback must not call ``labels()``, whose lock a scrape holds while it copies the
# children (an allocation that can start a collection on that very thread: a deadlock on a plain Lock).
_GC_PAUSE_BY_GENERATION = {generation: GC_PAUSE.labels(str(generation)) for generation in range(3)}


def watch_gc() -> None:
    """Observe every collection's pause in ``GC_PAUSE`` (idempotent: one callback per process)."""
    if _gc_callback in gc.callbacks:
        return
    gc.callbacks.append(_gc_callback)


_gc_started: list[float] = [0.0]


def _gc_callback(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    elif _gc_started[0]:
        child = _GC_PAUSE_BY_GENERATION.get(info.get("generation", -1))
        if child is not None:  # a child's observe only adds floats under its lock: no allocation to collect
            child.observe(time.perf_counter() - _gc_started[0])
        _gc_started[0] = 0.0


def observe_arrivals(stage: str, produced_ms: Iterable[int | None]) -> None:
    """One ``STAGE_ARRIVAL`` sample per event that carries its produce time (one clock read per batch)."""
    now_ms = time.time() * 1000
    child = STAGE_ARRIVAL.labels(stage)
    for ms in produced_ms:
        if ms:
            child.observe(max(0.0, now_ms - ms) / 1000)
