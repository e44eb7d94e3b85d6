"""What a worker has done, for ``/stats``, the lag gauge and the live view; Prometheus metrics beside it.

Why one object: both stages count into it, and the web pages read it, so the
numbers on ``/stats`` and on ``/metrics`` come from the same place.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from streams import metrics
from streams.updater import BatchReport


@dataclass(slots=True)
class WorkerStats:
    events_in: int = 0
    rejected: int = 0
    people_updated: int = 0
    batches: int = 0
    last_batch: int = 0
    started: float = field(default_factory=time.time)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    holding: str | None = None  # why the update stage is retrying an outage right now
    freshness: deque[float] = field(default_factory=lambda: deque(maxlen=5000))

    def dead_lettered(self, reasons: list[str]) -> None:
        for reason in reasons:
            metrics.REJECTED.labels(reason=reason).inc()
        self.rejected += len(reasons)

    def updated(self, report: BatchReport, messages: int) -> None:
        metrics.BATCH_SIZE.labels("update").observe(messages)
        metrics.APPLIED.inc(report.merge.applied)
        metrics.DUPLICATES.inc(report.merge.duplicates)
        metrics.TOO_LATE.inc(report.merge.too_late)
        metrics.ERASED_DROPPED.inc(report.merge.erased)
        metrics.FORWARDED.inc(report.forwarded)
        metrics.HISTORY_MOVED.inc(report.moved)
        metrics.PEOPLE_UPDATED.inc(len(report.written))
        if report.encoded:
            metrics.ENCODE_SECONDS.observe(report.encode_s)
        metrics.STORE_WRITE_SECONDS.observe(report.write_s)
        for ms in report.freshness_ms:
            metrics.FRESHNESS.observe(ms / 1000)
        for ms in report.produced_to_written_ms:
            metrics.PRODUCED_TO_WRITTEN.observe(ms / 1000)
        # /stats (and the demo's live view) report freshness from when each event reached Kafka; event
        # times follow the trackers' clocks (or a synthetic schedule) and say nothing about the pipeline.
        # No fallback to event time: a batch whose changes carry no Kafka stamp (a first link moving a
        # device's stored history) would add the age of that history, not a pipeline latency.
        self.freshness.extend(report.produced_to_written_ms)
        self.people_updated += len(report.written)
        self.batches += 1
        self.last_batch = report.records

    def as_dict(self) -> dict[str, Any]:
        fresh = sorted(self.freshness)
        return {
            "events_in": self.events_in, "rejected": self.rejected, "people_updated": self.people_updated,
            "batches": self.batches, "last_batch": self.last_batch, "started": self.started,
            "freshness_p50_ms": fresh[len(fresh) // 2] if fresh else None,
            "freshness_p99_ms": fresh[int(len(fresh) * 0.99)] if fresh else None,
        }
