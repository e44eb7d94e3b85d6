"""Stage 1, ingest: raw platform bytes -> person-topic records, keyed by their owner; bad input -> DLQ.

Input: the messages of one batch from every ``events.<platform>.<action>``
topic and ``identity.links``.  Output: an ``Outbox`` of envelopes (one per
person partition, at most 500 records each) and dead letters.  Decoding is a
pure function of the bytes; the batch's offsets are acknowledged only after
``send`` returned, i.e. after the broker acknowledged every message.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from schemas.events import Rejected
from schemas.normalize import Normalizer, decode_link
from schemas.records import PersonRecord
from schemas.settings import Settings
from schemas.topics import topic_platform_action
from streams import metrics
from streams.backoff import Backoff, retry_forever
from streams.outbox import DeadLetter, Outbox, Send, Source
from streams.worker_stats import WorkerStats

log = logging.getLogger("interest.worker")


@dataclass(frozen=True, slots=True)
class RawMessage:
    source: Source
    value: bytes | None


class IngestStage:
    def __init__(self, settings: Settings, normalizer: Normalizer, send: Send, stats: WorkerStats) -> None:
        self.settings = settings
        self.normalizer = normalizer
        self.platforms = set(normalizer.adapters)
        self.send = send
        self.stats = stats
        self.backoff = Backoff.from_ms(settings.retry_backoff_ms, settings.retry_backoff_max_ms)

    def decode(self, batch: Sequence[RawMessage]) -> Outbox:
        """Every message of ``batch`` as records or dead letters; never raises for bad input."""
        outbox = Outbox(self.settings.person_topic, self.settings.person_partitions, self.settings.dlq_topic)
        records: list[PersonRecord] = []
        accepted: Counter[tuple[str, str]] = Counter()
        for msg in batch:
            src, raw = msg.source, msg.value
            try:
                if src.topic == self.settings.identity_topic:
                    link = decode_link(raw, self.platforms)
                    if isinstance(link, Rejected):
                        outbox.add_dead(DeadLetter.of(raw, src, link))
                    else:
                        records.append(link)
                        metrics.LINKS_IN.inc()
                    continue
                platform, action = topic_platform_action(src.topic)
                decoded = self.normalizer.decode(raw, platform, action)
                for canonical in decoded.events:
                    records.append(canonical)
                    accepted[(canonical.platform, canonical.action)] += 1
                for why, element in decoded.rejected:
                    outbox.add_dead(DeadLetter.of(element, src, why))
            except Exception as exc:  # a bug must not stop the partition: keep the bytes
                log.exception("unexpected error decoding %s[%s]@%s", src.topic, src.partition, src.offset)
                outbox.add_dead(DeadLetter.of(raw, src, f"{type(exc).__name__}: {exc}", "internal_error"))
        for (platform, action), count in accepted.items():  # one metric update per label per batch
            metrics.EVENTS_IN.labels(platform, action).inc(count)
        self.stats.events_in += len(records)
        outbox.add_records(records)
        return outbox

    async def run(self, batch: Sequence[RawMessage]) -> None:
        for msg in batch:
            self.stats.positions[(msg.source.topic, msg.source.partition)] = msg.source.offset
        outbox = self.decode(batch)
        self.stats.dead_lettered(outbox.dead)
        await retry_forever("ingest send", self.backoff, self.send, outbox.messages)
        metrics.BATCH_SIZE.labels("ingest").observe(len(batch))
