"""Hop 1 with no worker code: a plain consumer of the worker's own raw topics, beside the worker.

Why: after an overload the worker's freshness stays high, and the worker's hop 1 (producer to the
ingest stage) is where it grows.  ``bench.broker_hop`` showed the embedded broker's fetch latency
growing with the record batches a topic holds (a fresh topic on the same broker starts fast again),
but on other topics.  This reader, in its own consumer group, reads exactly the records the worker
reads, at the same fetch wait, and reports per phase what one fetch hop costs on them.  If it is as
slow as the worker's hop 1, the time is spent in the broker's handling of those topics, not in the
worker; if it is fast while the worker is slow, the worker is.  ``bench.freshness --broker-floor``
runs it; it costs the machine one more consumer (about 0.1 of a core at 2 000 events/s).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.common import percentile
from schemas.settings import Settings


def summary(seen: list[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    """p50/p99 (ms) of the latencies whose consume time (epoch s) falls in ``[start, end)``."""
    values = [latency for at, latency in seen if start <= at < end]
    return {"messages": len(values), "p50_ms": percentile(values, 0.5), "p99_ms": percentile(values, 0.99)}


class BrokerFloor:
    """Reads the raw topics from their end in a group of its own; ``between`` summarises a phase."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen: list[tuple[float, float]] = []  # (consume time, epoch s; consume - record timestamp, ms)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._assigned = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-floor", daemon=True)

    def start(self, timeout: float = 60.0) -> BrokerFloor:
        self._thread.start()
        if not self._assigned.wait(timeout):
            raise TimeoutError("the broker-floor reader was never assigned the raw topics")
        return self

    def _run(self) -> None:
        from kafka import KafkaConsumer

        from streams.kafka_config import kafka_python_options

        s = self.settings
        consumer = KafkaConsumer(
            **kafka_python_options(s), group_id=f"{s.app_id}-broker-floor", client_id="bench-broker-floor",
            auto_offset_reset="latest", enable_auto_commit=False, fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000))
        consumer.subscribe(list(s.raw_topics()))
        try:
            while not self._stop.is_set():
                batches = consumer.poll(100)
                if consumer.assignment():
                    self._assigned.set()
                now = time.time()
                got = [(now, now * 1000 - m.timestamp) for msgs in batches.values() for m in msgs if m.timestamp > 0]
                if got:
                    with self.lock:
                        self.seen.extend(got)
        finally:
            consumer.close()

    def between(self, start: float, end: float) -> dict[str, Any]:
        with self.lock:
            return summary(self.seen, start, end)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
