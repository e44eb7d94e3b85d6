"""Where a rate's freshness goes, from the workers' own histograms: produced -> each stage -> written.

Why: ``bench.freshness`` measures produced -> readable from outside, which says *whether* the goal
is met but not *where* the time goes.  Each worker exports, per event, the time from its Kafka
record timestamp to the ingest stage taking it in (hop 1: producer, broker, fetch), to the update
stage taking it in (ingest batch, envelope produce, hop 2) and to its profile being written
(``interest_produced_to_written_seconds``, per person: the update itself).  Scraping ``/metrics``
before and after a rate and subtracting gives that rate's histograms; quantiles are read off the
bucket bounds (an upper bound, as Prometheus' ``histogram_quantile`` does without interpolation).
"""

from __future__ import annotations

import math
import urllib.request
from collections import defaultdict

Buckets = dict[float, float]  # upper bound -> cumulative count
Scrape = dict[str, Buckets]  # "stage_arrival{ingest}" ... -> buckets

HOPS = {("interest_stage_arrival_seconds_bucket", "ingest"): "to_ingest",
        ("interest_stage_arrival_seconds_bucket", "update"): "to_update",
        ("interest_produced_to_written_seconds_bucket", None): "to_written",
        # Per update batch, not per event: whether the update's own steps or the waits around them hold it.
        ("interest_encode_seconds_bucket", None): "encode_per_batch",
        ("interest_store_write_seconds_bucket", None): "store_write_per_batch",
        # The collector stops both stages: whether a rate's tail is a pause of the whole process.
        ("interest_gc_pause_seconds_bucket", "0"): "gc_pause_gen0",
        ("interest_gc_pause_seconds_bucket", "1"): "gc_pause_gen1",
        ("interest_gc_pause_seconds_bucket", "2"): "gc_pause_gen2"}


def parse(text: str) -> Scrape:
    """The histograms' cumulative buckets from a Prometheus text page (label order does not matter)."""
    out: Scrape = defaultdict(dict)
    for line in text.splitlines():
        name, brace, rest = line.partition("{")
        if not brace or not name.endswith("_seconds_bucket"):
            continue
        labels_text, _, value = rest.rpartition("} ")
        labels = dict(part.split("=", 1) for part in labels_text.split(",") if "=" in part)
        labels = {k: v.strip('"') for k, v in labels.items()}
        hop = HOPS.get((name, labels.get("stage", labels.get("generation"))))
        if hop is not None and "le" in labels:
            le = labels["le"]
            out[hop][math.inf if le == "+Inf" else float(le)] = float(value)
    return dict(out)


def scrape(ports: list[int]) -> Scrape:
    """Every worker's histograms, summed bucket by bucket (``{}`` for a worker that does not answer)."""
    total: Scrape = defaultdict(lambda: defaultdict(float))  # type: ignore[arg-type]
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                page = parse(resp.read().decode())
        except OSError:
            continue
        for hop, buckets in page.items():
            for le, count in buckets.items():
                total[hop][le] += count
    return {hop: dict(b) for hop, b in total.items()}


def quantile(buckets: Buckets, q: float) -> float | None:
    """The smallest bucket bound holding a share ``q`` of the samples, in ms (None: no samples, inf: past the top)."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    for bound in bounds:
        if buckets[bound] >= q * total:
            return bound * 1000
    return math.inf


def between(before: Scrape, after: Scrape) -> dict[str, dict[str, float | int | None]]:
    """Per hop (and per-batch step): samples and bucket-bound p50/p99 (ms) observed between two scrapes."""
    out: dict[str, dict[str, float | int | None]] = {}
    for hop in HOPS.values():
        now, then = after.get(hop, {}), before.get(hop, {})
        delta = {le: now[le] - then.get(le, 0.0) for le in now}
        count = int(max(delta.values(), default=0))
        p50, p99 = quantile(delta, 0.5), quantile(delta, 0.99)
        out[hop] = {"samples": count, "p50_le_ms": _finite(p50), "p99_le_ms": _finite(p99)}
    return out


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else round(value, 1)


def assigned(port: int, topic: str) -> list[int]:
    """The ``topic`` partitions a worker owns now (its ``interest_consumer_lag`` series cover exactly those)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return []
    parts = []
    for line in text.splitlines():
        if line.startswith("interest_consumer_lag{") and f'topic="{topic}"' in line:
            parts.append(int(line.split('partition="', 1)[1].split('"', 1)[0]))
    return sorted(parts)
