"""The ingest stage's reader: raw topics read in batches by an aiokafka consumer of its own.

Why not a Faust agent: Faust turns every Kafka message into an ``Event`` that passes through a
channel, a stream iterator and an ack before ``take_events`` hands it over.  ``bench.profile``
put that at 71 µs per message for Faust's per-message work and 71 µs for its fetch loop at
2 000 single-event messages/s, half of the worker's CPU, where aiokafka's own ``getmany``
hands over the same fetched records as lists.  The update stage, whose messages are envelopes
of many events, stays a Faust agent.

Commit order (what makes "nothing acknowledged is lost" hold):

1. ``getmany`` returns what was fetched (waiting at most ``batch_wait_ms``), merged by record
   time across partitions and cut into batches of ``batch_size``;
2. ``IngestStage.run`` decodes a batch and delivers its envelopes and dead letters, retrying
   until the broker acknowledged every one (``acks=all``);
3. only then are that batch's raw offsets committed, synchronously, before the next batch.

A crash between 2 and 3 re-delivers the batch: its envelopes reach the person topic twice and
the update stage drops the second copy (event ids).  A rebalance waits in
``on_partitions_revoked`` until the batch in flight is committed, so a partition's next owner
starts after it.  A commit that fails because the group moved on is logged: the new owner
reads those messages again (duplicates, never losses).

The group is ``APP_ID-ingest`` (``faust_tuning.group_id``'s rule): Faust's group consumes the
person topic only, in every process layout.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from schemas.settings import Settings
from streams import faults
from streams.backoff import retry_forever
from streams.faust_tuning import raw_group
from streams.stages import IngestStage, RawMessage, Source

log = logging.getLogger("interest.ingest")
PARTITION_FETCH_BYTES = 64 * 1024


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Address and security for an aiokafka client, from the same settings as every other client."""
    from streams.kafka_config import kafka_python_options

    opts = kafka_python_options(settings)
    opts.pop("bootstrap_timeout_ms", None)
    return opts


def to_messages(records: dict[TopicPartition, list[Any]]) -> list[RawMessage]:
    """aiokafka records -> the stages' typed input, the partitions merged by record timestamp.

    ``getmany`` drains one partition before the next; a person's events on several platforms'
    topics would then reach the update stage grouped by topic instead of by time, and those older
    than a full window behind the newest are dropped as too late.  Each partition keeps its own
    offset order (``heapq.merge`` is stable per input), which is what its commit relies on.
    """
    merged = heapq.merge(*([(tp, r) for r in batch] for tp, batch in records.items()),
                         key=lambda pair: pair[1].timestamp or 0)
    return [RawMessage(Source(tp.topic, tp.partition, r.offset, r.key), r.value,
                       r.timestamp if r.timestamp and r.timestamp > 0 else None)
            for tp, r in merged]


def next_offsets(batch: Sequence[RawMessage]) -> dict[TopicPartition, int]:
    """What to commit after ``batch``: the offset after each partition's last message in it."""
    out: dict[TopicPartition, int] = {}
    for msg in batch:
        tp = TopicPartition(msg.source.topic, msg.source.partition)
        out[tp] = max(out.get(tp, 0), msg.source.offset + 1)
    return out


class _FinishBatchFirst(ConsumerRebalanceListener):  # type: ignore[misc]
    """Holds a rebalance until the batch in flight is committed; says whether the group is settled."""

    def __init__(self, lock: asyncio.Lock) -> None:
        self.lock = lock
        self.rebalancing = True  # until the first assignment: a reader that never joined reads nothing

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self.rebalancing = True
        async with self.lock:  # the batch in flight is delivered and committed before the group moves
            pass

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.rebalancing = False
        log.info("ingest partitions assigned: %s", len(assigned))


class RawReader:
    """Reads the raw topics and identity links in batches into ``IngestStage.run``."""

    def __init__(self, settings: Settings, stage: IngestStage, stopping: Callable[[], bool]) -> None:
        self.settings = settings
        self.stage = stage
        self.stopping = stopping
        self.lock = asyncio.Lock()
        self.listener = _FinishBatchFirst(self.lock)
        self.consumer: AIOKafkaConsumer | None = None
        self._done = asyncio.Event()
        self._stop = False
        self._started = False

    def _make_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            **aiokafka_options(s), group_id=raw_group(s), client_id=f"{s.app_id}-ingest",
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000),
            fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
            # Small per-partition chunks keep the partitions of one batch close in time (see to_messages).
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
            max_poll_interval_ms=max(300_000, int(s.stop_grace_s * 1000) * 2),
        )

    @property
    def rebalancing(self) -> bool:
        """Not yet joined, or the group is moving partitions: ``/ready`` answers 503 meanwhile."""
        return self.listener.rebalancing

    async def run(self) -> None:
        """Until ``stop``: fetch, then deliver and commit it batch by batch.  Nothing escapes but cancellation."""
        if self._stop:  # told to stop before it began (a SIGTERM while the store or the model was opening)
            self._done.set()
            return
        self._started = True
        try:
            self.consumer = self._make_consumer()
            topics = [*self.settings.raw_topics(), self.settings.identity_topic]
            self.consumer.subscribe(topics, listener=self.listener)
            await retry_forever("ingest consumer start", self.stage.backoff, self.consumer.start)
            while not (self._stop or self.stopping()):
                try:  # everything fetched (each partition's chunk is bounded), to be merged by time
                    records = await self.consumer.getmany(timeout_ms=self.settings.batch_wait_ms)
                except KafkaError as exc:
                    log.warning("ingest fetch failed, retrying: %s", exc)
                    await asyncio.sleep(self.settings.retry_backoff_ms / 1000)
                    continue
                if records:
                    async with self.lock:
                        await self._fetched(to_messages(records))
        finally:
            self._done.set()
            if self.consumer is not None:
                await self.consumer.stop()

    async def _fetched(self, messages: list[RawMessage]) -> None:
        """``messages`` (merged by time) in batches of ``batch_size``, each committed before the next.

        Each batch holds a prefix of every partition's remaining records, so committing the offset
        after each partition's last record in it never skips one of a later batch.
        """
        assert self.consumer is not None
        size = self.settings.batch_size
        for start in range(0, len(messages), size):
            batch = messages[start : start + size]
            try:
                await self.stage.run(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # run never raises for bad input; anything else must not stop the loop
                log.exception("ingest batch failed unexpectedly; it is not committed and comes again")
                firsts: dict[TopicPartition, int] = {}
                for msg in messages[start:]:  # read the rest again, from each partition's first one left
                    firsts.setdefault(TopicPartition(msg.source.topic, msg.source.partition), msg.source.offset)
                for tp, offset in firsts.items():
                    self.consumer.seek(tp, offset)
                await asyncio.sleep(self.settings.retry_backoff_ms / 1000)
                return
            faults.crash_point("ingest_before_commit")
            try:
                await self.consumer.commit(next_offsets(batch))
            except (CommitFailedError, KafkaError) as exc:
                log.warning("ingest commit failed (the group moved on; the next owner re-reads): %s", exc)
            faults.crash_point("ingest_after_commit")

    async def stop(self, grace_s: float) -> None:
        """Finish the batch in flight (delivered and committed), then leave the group."""
        self._stop = True
        if not self._started:  # nothing fetched, nothing to finish: ``run`` returns at once if it starts later
            return
        try:
            await asyncio.wait_for(self._done.wait(), grace_s)
        except TimeoutError:
            log.warning("ingest batch still in flight after %.0fs; it is not committed and comes again", grace_s)
