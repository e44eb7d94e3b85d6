"""The worker's two stages and what they send: typed inputs, typed outgoing messages, one sender.

Stage 1, ingest: raw platform bytes from every ``events.<platform>.<action>``
topic and ``identity.links`` -> person-topic records re-keyed by their owner
(envelopes per person partition, at most 500 records and 512 KiB each); bad
input -> dead letters.  Decoding is a pure function of the bytes.  A message
too large to send is split, dead-lettered or cut, never retried (``deliver``).

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
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from kafka.errors import MessageSizeTooLargeError as KafkaPythonMessageSizeTooLarge

from schemas.events import Rejected
from schemas.normalize import Normalizer, decode_link
from schemas.records import (
    ENVELOPE_MAX_BYTES,
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
from streams.dlq import DLQ_MAX_BYTES, dlq_headers, fit, fit_key
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
    """What one batch will send: envelopes by person partition and dead letters, each within a byte budget
    (a message over the producer's request size fails the same way on every retry)."""

    person_topic: str
    partitions: int
    dlq_topic: str
    messages: list[OutMessage] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    envelope_max_bytes: int = ENVELOPE_MAX_BYTES
    dlq_max_bytes: int = DLQ_MAX_BYTES

    def add_records(self, records: Sequence[PersonRecord]) -> None:
        for part, env in envelopes(records, self.partitions, max_bytes=self.envelope_max_bytes):
            if len(env) > self.envelope_max_bytes:  # one record alone over the budget: cannot be split
                self.add_dead(DeadLetter(env, Source(self.person_topic, part, -1), "record_too_large",
                                         f"person-topic record is {len(env)} bytes, over the "
                                         f"{self.envelope_max_bytes}-byte envelope budget"))
            else:
                self.messages.append(OutMessage(self.person_topic, env, partition=part))

    def add_dead(self, letter: DeadLetter) -> None:
        self.dead.append(letter)
        self.messages.append(self._dead_message(letter))

    def _dead_message(self, letter: DeadLetter) -> OutMessage:
        """The DLQ record of ``letter``: a raw value or key over budget is cut and named by headers (streams.dlq)."""
        src = letter.source
        headers = dlq_headers(src.topic, src.partition, src.offset, letter.reason, letter.message, letter.index)
        raw, headers = fit(letter.raw, self.dlq_max_bytes, headers)
        key, headers = fit_key(src.key, headers)
        return OutMessage(self.dlq_topic, raw, key=key, headers=headers)

    def shrink(self, msg: OutMessage, why: Exception) -> list[OutMessage]:
        """What to send instead of ``msg``, which the producer refused as too large (``why``).

        An envelope of several records becomes two halves on the same partition;
        a lone record becomes a dead letter; a DLQ record keeps half its value
        (then loses its key); an empty, keyless one still refused is given up with
        an error log.  Every step is smaller, so repeated shrinking ends.
        """
        if msg.topic == self.dlq_topic:
            if msg.value:
                value, headers = fit(msg.value, len(msg.value) // 2, list(msg.headers or []))
                return [OutMessage(msg.topic, value, msg.key, msg.partition, headers)]
            if msg.key is not None:
                key, headers = fit_key(msg.key, list(msg.headers or []), limit=-1)
                return [OutMessage(msg.topic, msg.value, key, msg.partition, headers)]
            log.error("dropping a DLQ record the producer refuses even empty (%s): headers %s", why, msg.headers)
            return []
        if msg.topic == self.person_topic:
            records = decode_envelope(msg.value)
            if len(records) > 1:
                mid = len(records) // 2
                return [OutMessage(msg.topic, encode_envelope(half), partition=msg.partition)
                        for half in (records[:mid], records[mid:])]
        reason = "record_too_large" if msg.topic == self.person_topic else "message_too_large"
        part = -1 if msg.partition is None else msg.partition
        letter = DeadLetter(msg.value, Source(msg.topic, part, -1, msg.key), reason,
                            f"a {len(msg.value)}-byte message to {msg.topic} was refused by the producer: {why}")
        self.dead.append(letter)
        return [self._dead_message(letter)]


class NotAcked(Exception):
    """A failed send; ``acked``: indexes of its messages the broker did acknowledge (``__cause__``: why).  The size
    fallback resends only the others: resending all would put every dead letter of the batch in the DLQ twice."""

    def __init__(self, error: Exception, acked: frozenset[int]) -> None:
        super().__init__(str(error))
        self.acked = acked


class KafkaSender:
    """Sends through a Faust app's producer and waits for every acknowledgement.

    On failure it still waits for what it handed to the producer (no ack left
    unobserved), then raises ``NotAcked`` from one error, a size error first.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, messages: Sequence[OutMessage]) -> None:
        producer = self.app.producer
        futures: list[Any] = []
        errors: list[Exception] = []
        acked: set[int] = set()
        for m in messages:
            try:
                futures.append(await producer.send(m.topic, m.key, m.value, m.partition, None, m.headers))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # not queued (aiokafka checks max_request_size here); the rest would fail alike
                errors.append(exc)
                break
        if futures:
            results = await asyncio.gather(*futures, return_exceptions=True)  # our own cancellation still raises
            for index, result in enumerate(results):
                if isinstance(result, Exception):
                    errors.append(result)
                elif isinstance(result, BaseException):  # an ack future cancelled by the producer: not sent
                    errors.append(RuntimeError(f"the producer cancelled a send: {result!r}"))
                else:
                    acked.add(index)
        if errors:
            error = next((e for e in errors if too_large(e)), errors[0])
            raise NotAcked(error, frozenset(acked)) from error


_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError, KafkaPythonMessageSizeTooLarge)


def too_large(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps: Faust raises ``ProducerSendError`` from aiokafka's error) says a message
    is larger than the producer or the broker accepts: retrying the same bytes can never succeed."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, _TOO_LARGE):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


async def deliver(outbox: Outbox, send: Send, backoff: Backoff, what: str) -> None:
    """Send everything ``outbox`` holds; return once all of it was acknowledged.

    Transient failures are retried forever (the partition holds).  A size
    error cannot be retried away, and it does not say which message was too
    large (the broker fails a whole producer batch), so the messages go one
    at a time (but those already acknowledged); each one refused for its size
    is replaced by ``Outbox.shrink`` (halves, or a dead letter) until
    everything is sent.
    """
    try:
        await retry_forever(what, backoff, send, outbox.messages, fatal=too_large)
        return
    except Exception as exc:  # only a size error gets here
        log.warning("%s: a message is too large (%s); sending one at a time", what, exc)
        done = exc.acked if isinstance(exc, NotAcked) else frozenset()
    pending = deque(m for i, m in enumerate(outbox.messages) if i not in done)
    while pending:
        msg = pending.popleft()
        try:
            await retry_forever(what, backoff, send, [msg], fatal=too_large)
        except Exception as exc:
            replacements = outbox.shrink(msg, exc)
            log.warning("%s: %d-byte message to %s refused as too large; sending %d smaller instead",
                        what, len(msg.value), msg.topic, len(replacements))
            pending.extendleft(reversed(replacements))


def delivering(send: Send, settings: Settings, backoff: Backoff, what: str) -> Send:
    """A ``Send`` that goes through ``deliver``: what the broker refuses as too large is split, not retried."""

    async def go(messages: Sequence[OutMessage]) -> None:
        outbox = Outbox(settings.person_topic, settings.person_partitions, settings.dlq_topic, list(messages))
        await deliver(outbox, send, backoff, what)

    return go


@dataclass(frozen=True, slots=True)
class RawMessage:
    source: Source
    value: bytes | None
    produced_ms: int | None = None  # the Kafka record's timestamp

def raw_batch(events: Any) -> list[RawMessage]:
    """Faust events -> the stages' typed input (topic, partition, offset, key, bytes)."""
    out = []
    for event in events:
        msg = event.message
        raw = msg.value if isinstance(msg.value, bytes) else event.value
        stamp = getattr(msg, "timestamp", None)  # seconds (float) in Faust
        produced = int(stamp * 1000) if isinstance(stamp, int | float) and stamp > 0 else None
        out.append(RawMessage(Source(msg.topic, msg.partition, msg.offset, msg.key), raw, produced))
    return out


def stage_backoff(settings: Settings, stopping: Callable[[], bool]) -> Backoff:
    return Backoff.from_ms(settings.retry_backoff_ms, settings.retry_backoff_max_ms, stopping, settings.stop_grace_s)


class IngestStage:
    def __init__(self, settings: Settings, normalizer: Normalizer, send: Send, stats: WorkerStats,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.settings = settings
        self.normalizer = normalizer
        self.platforms = set(normalizer.adapters)
        self.send = send
        self.stats = stats
        self.backoff = stage_backoff(settings, stopping)

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
                decoded = self.normalizer.decode(raw, platform, action, produced_ms=msg.produced_ms)
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
        metrics.observe_arrivals("ingest", (msg.produced_ms for msg in batch))
        for msg in batch:
            self.stats.positions[(msg.source.topic, msg.source.partition)] = msg.source.offset
        outbox = self.decode(batch)
        decoded_dead = len(outbox.dead)
        self.stats.dead_lettered([d.reason for d in outbox.dead])
        await deliver(outbox, self.send, self.backoff, "ingest send")
        self.stats.dead_lettered([d.reason for d in outbox.dead[decoded_dead:]])  # refused by the producer
        metrics.BATCH_SIZE.labels("ingest").observe(len(batch))

class UpdateStage:
    def __init__(self, settings: Settings, updater: ProfileUpdater, send: Send, stats: WorkerStats,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.settings = settings
        self.updater = updater
        self.send = send
        self.stats = stats
        self.backoff = stage_backoff(settings, stopping)

    async def consume(self, stream: Any, app: Any) -> None:
        """The Faust agent's loop: one ``run`` per batch; nothing escapes it."""
        # Faust's take waits the whole ``within`` after every batch (from when the last one was done, not
        # from the first waiting event), unless ``update_batch_envelopes`` arrive first: at 2 000 events/s a
        # 50 ms wait was a third of the stage's cycle.  Events that arrived during the batch waited already.
        within = self.settings.update_batch_wait_ms / 1000
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
            await deliver(outbox, self.send, self.backoff, "dlq send")  # a too-large one is cut, not retried

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
        metrics.observe_arrivals("update", (getattr(rec, "produced_ms", None) for rec in records))
        last = batch[-1].source if batch else None
        report = await self._update_with_retries(records, last)
        if report is not None:
            self.stats.updated(report, len(batch))

    async def _update_with_retries(self, records: list[PersonRecord], last: Source | None) -> BatchReport | None:
        """Retry transient store failures forever, other failures a few times, then isolate."""
        attempt = 0
        for delay in self.backoff.delays():
            try:
                report = await self.updater.process(records)
                self.stats.holding = None
                return report
            except StoreUnavailable as exc:
                # Infrastructure (store, disk, broker, a model that should be loaded): never the DLQ.
                metrics.STORE_RETRIES.inc()
                self.stats.holding = f"{type(exc).__name__}: {exc}"
                delay = self.backoff.after_failure("the store write", exc, delay)
                log.warning("%s, not committing, retrying in %.1fs: %s", type(exc).__name__, delay, exc)
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
                except StoreUnavailable as exc:
                    metrics.STORE_RETRIES.inc()
                    await asyncio.sleep(self.backoff.after_failure("the store write", exc, self.backoff.max_s))
                except Exception as exc:
                    outbox = self._outbox()
                    why = f"{type(exc).__name__}: {exc} (person {person})"
                    outbox.add_dead(DeadLetter.of(encode_envelope(recs), source, why, "update_failed"))
                    await self._dead_letters(outbox)
                    break
        return report
