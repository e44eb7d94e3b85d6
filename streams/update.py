"""Stage 2, update: person-topic envelopes -> ``ProfileUpdater`` -> store, with retries and isolation.

Input: the envelopes of one batch from the person topic (this worker owns
their partitions).  Output: the store's acknowledged write, and dead letters
for envelopes we cannot read or people whose records keep failing.

Failure policy, in order: a store that is unavailable is retried forever (the
partition holds, nothing is committed); any other failure is retried
``retry_attempts`` times, then the batch is processed person by person and
only the people that still fail go to the DLQ with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from schemas.records import PersonRecord, decode_envelope, encode_envelope, record_owner
from schemas.settings import Settings
from streams import metrics
from streams.backoff import Backoff, retry_forever
from streams.ingest import RawMessage  # one input type for both stages
from streams.outbox import DeadLetter, Outbox, Send, Source
from streams.stores.base import StoreUnavailable
from streams.updater import BatchReport, ProfileUpdater
from streams.worker_stats import WorkerStats

log = logging.getLogger("interest.worker")


class UpdateStage:
    def __init__(self, settings: Settings, updater: ProfileUpdater, send: Send, stats: WorkerStats) -> None:
        self.settings = settings
        self.updater = updater
        self.send = send
        self.stats = stats
        self.backoff = Backoff.from_ms(settings.retry_backoff_ms, settings.retry_backoff_max_ms)

    def _outbox(self) -> Outbox:
        return Outbox(self.settings.person_topic, self.settings.person_partitions, self.settings.dlq_topic)

    async def _dead_letters(self, outbox: Outbox) -> None:
        if outbox.dead:
            self.stats.dead_lettered(outbox.dead)
            await retry_forever("dlq send", self.backoff, self.send, outbox.messages)

    async def run(self, batch: Sequence[RawMessage]) -> None:
        records: list[PersonRecord] = []
        outbox = self._outbox()
        for msg in batch:
            self.stats.positions[(msg.source.topic, msg.source.partition)] = msg.source.offset
            try:
                records.extend(decode_envelope(msg.value))
            except Exception as exc:
                outbox.add_dead(DeadLetter.of(msg.value, msg.source, f"bad person-topic envelope: {exc}",
                                              "bad_envelope"))
        await self._dead_letters(outbox)
        last = batch[-1].source if batch else None
        report = await self._update_with_retries(records, last)
        if report is not None:
            self.stats.updated(report, len(batch))

    async def _update_with_retries(self, records: list[PersonRecord], last: Source | None) -> BatchReport | None:
        """Retry transient store failures forever, other failures a few times, then isolate."""
        attempt = 0
        for delay in self.backoff.delays():
            try:
                return await self.updater.process(records)
            except StoreUnavailable as exc:
                metrics.STORE_RETRIES.inc()
                log.warning("store unavailable, not committing, retrying in %.1fs: %s", delay, exc)
            except Exception:
                attempt += 1
                metrics.BATCH_FAILURES.inc()
                log.exception("batch failed (attempt %s/%s)", attempt, self.settings.retry_attempts + 1)
                if attempt > self.settings.retry_attempts:
                    return await self._isolate(records, last)
            await asyncio.sleep(delay)
        return None

    async def _isolate(self, records: list[PersonRecord], last: Source | None) -> BatchReport | None:
        """Process person by person; the people whose records keep failing go to the DLQ."""
        by_person: dict[str, list[PersonRecord]] = {}
        for rec in records:
            by_person.setdefault(record_owner(rec), []).append(rec)
        report = None
        source = last or Source(self.settings.person_topic, -1, -1)
        for person, recs in by_person.items():
            while True:
                try:
                    report = await self.updater.process(recs)
                    break
                except StoreUnavailable:
                    metrics.STORE_RETRIES.inc()
                    await asyncio.sleep(self.backoff.max_s)
                except Exception as exc:
                    outbox = self._outbox()
                    why = f"{type(exc).__name__}: {exc} (person {person})"
                    outbox.add_dead(DeadLetter.of(encode_envelope(recs), source, why, "update_failed"))
                    await self._dead_letters(outbox)
                    break
        return report
