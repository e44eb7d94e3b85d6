"""The worker's two stages and what they send: typed inputs, typed outgoing messages, one sender.

Stage 1, ingest: raw platform bytes from every ``events.<platform>.<action>``
topic and ``identity.links`` -> person-topic records re-keyed by their owner
(one envelope per person partition, at most 500 records each); bad input ->
dead letters.  Decoding is a pure function of the bytes.

Stage 2, update: person-topic envelopes (this worker owns their partitions)
-> ``ProfileUpdater`` -> the store.  A store that is unavailable is retried
forever (the partition holds, nothing is committed); any other failure is
retried ``retry_attempts`` times, then the batch is processed person by
person and only the people that still fail go to the DLQ with the reason.

Why an outbox: a batch's offsets may be acknowledged only after everything it
produced (envelopes, DLQ records) was acknowledged by the broker.  The stages
collect ``OutMessage`` values; ``KafkaSender`` sends all of them and returns
only when every acknowledgement arrived.  Neither stage's ``consume`` loop
lets an exception escape: a crashed Faust agent leaves the worker stuck.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.events import Rejected
from schemas.normalize import Normalizer, decode_link
from schemas.records import (
    OutMessage,
    PersonRecord,
    Send,
    decode_envelope,
    encode_envelope,
    envelopes,
    record_owner,
)
from schemas.settings import Settings
from schemas.topics import topic_platform_action
from streams import faults, metrics
from streams.backoff import Backoff, retry_forever
from streams.dlq import dlq_headers
from streams.stores.base import StoreUnavailable
from streams.updater import BatchReport, ProfileUpdater
from streams.worker_stats import WorkerStats

log = logging.getLogger("interest.worker")


@dataclass(frozen=True, slots=True)
class Source:
    """Where an input message came from: what a DLQ record names."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input that cannot be used, with the reason (errors as data: the stage never raises for it)."""

    raw: bytes
    source: Source
    reason: str
    message: str
    index: int | None = None

    @classmethod
    def of(cls, raw: bytes | None, source: Source, why: Rejected | str, reason: str | None = None) -> DeadLetter:
        if isinstance(why, Rejected):
            return cls(raw or b"", source, why.reason, str(why), getattr(why, "index", None))
        return cls(raw or b"", source, reason or "internal_error", why)


@dataclass(slots=True)
class Outbox:
    """What one batch will send: envelopes by person partition and dead letters."""

    person_topic: str
    partitions: int
    dlq_topic: str
    messages: list[OutMessage] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)

    def add_records(self, records: Sequence[PersonRecord]) -> None:
        for part, env in envelopes(records, self.partitions):
            self.messages.append(OutMessage(self.person_topic, env, partition=part))

    def add_dead(self, letter: DeadLetter) -> None:
        self.dead.append(letter)
        src = letter.source
        headers = dlq_headers(src.topic, src.partition, src.offset, letter.reason, letter.message, letter.index)
        self.messages.append(OutMessage(self.dlq_topic, letter.raw, key=src.key, headers=headers))


class KafkaSender:
    """Sends through a Faust app's producer and waits for every acknowledgement."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, messages: Sequence[OutMessage]) -> None:
        producer = self.app.producer
        futures = [await producer.send(m.topic, m.key, m.value, m.partition, None, m.headers) for m in messages]
        if futures:
            await asyncio.gather(*futures)


@dataclass(frozen=True, slots=True)
class RawMessage:
    source: Source
    value: bytes | None

def raw_batch(events: Any) -> list[RawMessage]:
    """Faust events -> the stages' typed input (topic, partition, offset, key, bytes)."""
    out = []
    for event in events:
        msg = event.message
        raw = msg.value if isinstance(msg.value, bytes) else event.value
        out.append(RawMessage(Source(msg.topic, msg.partition, msg.offset, msg.key), raw))
    return out


class IngestStage:
    def __init__(self, settings: Settings, normalizer: Normalizer, send: Send, stats: WorkerStats) -> None:
        self.settings = settings
        self.normalizer = normalizer
        self.platforms = set(normalizer.adapters)
        self.send = send
        self.stats = stats
        self.backoff = Backoff.from_ms(settings.retry_backoff_ms, settings.retry_backoff_max_ms)

    async def consume(self, stream: Any) -> None:
        """The Faust agent's loop: one ``run`` per batch; nothing escapes it."""
        async for events in stream.take_events(self.settings.batch_size, within=self.settings.batch_wait_ms / 1000):
            try:
                await self.run(raw_batch(events))
            except asyncio.CancelledError:
                raise
            except Exception:  # never escape: Faust would wait forever on the unacked message
                log.exception("ingest batch failed unexpectedly")

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
        self.stats.dead_lettered([d.reason for d in outbox.dead])
        await retry_forever("ingest send", self.backoff, self.send, outbox.messages)
        metrics.BATCH_SIZE.labels("ingest").observe(len(batch))

class UpdateStage:
    def __init__(self, settings: Settings, updater: ProfileUpdater, send: Send, stats: WorkerStats) -> None:
        self.settings = settings
        self.updater = updater
        self.send = send
        self.stats = stats
        self.backoff = Backoff.from_ms(settings.retry_backoff_ms, settings.retry_backoff_max_ms)

    async def consume(self, stream: Any, app: Any) -> None:
        """The Faust agent's loop: one ``run`` per batch; nothing escapes it."""
        within = self.settings.batch_wait_ms / 1000
        async for events in stream.take_events(self.settings.update_batch_envelopes, within=within):
            await faults.commit_then_crash(app)  # chaos tests only: earlier batches are acked by now
            try:
                await self.run(raw_batch(events))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("update batch failed unexpectedly")

    def _outbox(self) -> Outbox:
        return Outbox(self.settings.person_topic, self.settings.person_partitions, self.settings.dlq_topic)

    async def _dead_letters(self, outbox: Outbox) -> None:
        if outbox.dead:
            self.stats.dead_lettered([d.reason for d in outbox.dead])
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
