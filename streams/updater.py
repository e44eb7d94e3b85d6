"""The person-owner stage: person-topic records -> sequence states -> vectors -> store.

Commit order for one micro-batch (what makes "nothing acknowledged is lost"
and "replays are harmless" true):

1. Records of the batch are grouped by person.  Nothing is acknowledged yet.
2. Anonymous ids that an identity link moved to a person are *forwarded*:
   their records (and, for a new link, the device's stored events) are
   produced to the person's partition and the broker's acknowledgement is
   awaited.  A crash after this step re-forwards on replay; the receiver
   drops the duplicates by event id.
3. States are read (cache, else store), events merged (``streams.state``),
   changed people encoded in one runtime call in a worker thread.
4. One ``write_batch`` writes states, profiles, links and removals.  It is
   idempotent, and rows carry data-derived timestamps, so a retry or a
   replay cannot make anything older win.
5. Only after the store confirmed the write is the in-process cache updated
   and does ``process`` return; the caller then acknowledges the Kafka
   offsets (Faust commits acknowledged offsets).  If anything fails before,
   nothing was acknowledged and the batch is processed again.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from model.interests import encode_with_interests
from schemas.events import CanonicalEvent, IdentityLink, parse_anon_id
from schemas.records import (
    ForgetRequest,
    OutMessage,
    PersonRecord,
    Send,
    envelopes,
    person_partition,
    record_owner,
)
from schemas.sequence import IdentityLinkRecord, Interest, PersonState, Profile, SeqEvent, window_write_ts
from schemas.settings import Settings
from streams.faults import crash_point, fail_if_poisoned
from streams.stores.base import ProfileStore, StoreBatch, StoreUnavailable

ByPerson = dict[str, list[PersonRecord]]


# -- merging events into a sequence: pure functions ------------------------------
# Merging events into a person's sequence state: pure functions.
#
# The merge is what makes replays harmless and late events safe:
#
# * an event whose id is already in the window is a duplicate: no change;
# * an event older than the oldest of a *full* window can never be among the
#   last N, so it changes nothing (counted as ``too_late``);
# * an event at or before the person's erasure time is dropped;
# * otherwise it is inserted in event-time order (ties by event id) and the
#   window is cut to the newest N.
#
# The final window is therefore the newest N of all events, whatever order
# they arrived in, and ``write_ts`` is derived from that window alone
# (``schemas.sequence.window_write_ts``): no arrival order can change it.

@dataclass(slots=True)
class MergeOutcome:
    applied: int = 0
    duplicates: int = 0
    too_late: int = 0
    erased: int = 0


def merge_events(
    state: PersonState, events: list[SeqEvent], max_len: int, erased_ms: int | None = None
) -> MergeOutcome:
    """Apply ``events`` (in arrival order) to ``state`` in place."""
    outcome = MergeOutcome()
    window = state.events
    ids = {e.event_id for e in window}
    keys = [e.sort_key() for e in window]
    for event in events:
        if erased_ms is not None and event.ts_ms <= erased_ms:
            outcome.erased += 1
            continue
        if event.event_id in ids:
            outcome.duplicates += 1
            continue
        key = event.sort_key()
        if len(window) >= max_len and key < keys[0]:
            outcome.too_late += 1
            continue
        pos = bisect.bisect_right(keys, key)
        window.insert(pos, event)
        keys.insert(pos, key)
        ids.add(event.event_id)
        if len(window) > max_len:
            dropped = window.pop(0)
            keys.pop(0)
            ids.discard(dropped.event_id)
        if state.event_count == 0:
            state.first_ts_ms = event.ts_ms
            state.last_ts_ms = event.ts_ms
        else:
            state.first_ts_ms = min(state.first_ts_ms, event.ts_ms)
            state.last_ts_ms = max(state.last_ts_ms, event.ts_ms)
        state.event_count += 1
        seen = state.platforms.get(event.platform)
        if seen is None or event.ts_ms > seen:
            state.platforms[event.platform] = event.ts_ms
        outcome.applied += 1
    if outcome.applied:
        state.write_ts = window_write_ts(window)
    return outcome


def copy_state(state: PersonState) -> PersonState:
    """A copy safe to mutate while the cached original stays untouched."""
    return PersonState(
        person_id=state.person_id,
        events=list(state.events),
        event_count=state.event_count,
        first_ts_ms=state.first_ts_ms,
        last_ts_ms=state.last_ts_ms,
        platforms=dict(state.platforms),
        write_ts=state.write_ts,
    )


class Encoder(Protocol):
    version: str
    dim: int

    def encode(self, sequences: Sequence[Sequence[SeqEvent]]) -> np.ndarray: ...


@dataclass(slots=True)
class BatchReport:
    """What one batch did; the worker turns it into metrics and the live view."""

    records: int = 0
    people: int = 0
    encoded: int = 0
    forwarded: int = 0
    moved: int = 0  # stored device events of a first link, among ``forwarded``
    links: int = 0
    forgotten: int = 0
    merge: MergeOutcome = field(default_factory=MergeOutcome)
    model_version: str | None = None
    platform_versions: list[str] = field(default_factory=list)  # served platform versions, beside the shared
    encode_s: float = 0.0
    write_s: float = 0.0
    freshness_ms: list[float] = field(default_factory=list)  # newest event time -> written
    produced_to_written_ms: list[float] = field(default_factory=list)  # reached Kafka -> written
    written: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Work:
    """One batch on its way through ``process``: what each step hands the next."""

    by_person: ByPerson
    report: BatchReport
    batch: StoreBatch = field(default_factory=StoreBatch)
    new_links: dict[str, str] = field(default_factory=dict)
    changed: list[PersonState] = field(default_factory=list)
    erased: dict[str, int] = field(default_factory=dict)
    produced: dict[str, int] = field(default_factory=dict)  # person -> newest Kafka timestamp of the batch


class ModelUnavailable(StoreUnavailable):
    """No model is loaded although one is expected: transient, like a store outage (retried, never DLQ)."""


class BrokerUnavailable(StoreUnavailable):
    """Forwarding to the person topic failed: transient infrastructure, not bad data."""


async def _no_states() -> dict[str, PersonState]:
    return {}


def _forwarded_event(event: SeqEvent, person_id: str, platform_user_id: str) -> CanonicalEvent:
    return CanonicalEvent(event.event_id, person_id, event.platform, platform_user_id, event.action,
                          event.item_id, event.ts_ms, event.weight)


class ProfileUpdater:
    """Applies person-topic records; owns the per-partition caches.

    ``caches[partition][person]`` is valid only while this worker owns the
    partition: ``drop_partitions`` is called on revocation, and the next
    owner reads the store.  Once ``own_partitions`` was called, only owned
    partitions are cached: a record of a revoked partition that Faust still
    hands over after the revocation (a put parked on a full stream buffer
    outlives the buffer's clearing) is applied through the store, which keeps
    the newer window, but never cached; a cache of it would be stale when the
    partition came back, and the next batch would write that stale window over
    what the other owner wrote meanwhile.
    """

    def __init__(
        self,
        store: ProfileStore,
        encoder: Callable[[], Encoder | None],
        send: Send,
        settings: Settings,
        model_expected: Callable[[], bool] = lambda: False,
        platform_encoders: Callable[[], Sequence[Encoder]] = lambda: (),
    ) -> None:
        self.store = store
        self.encoder = encoder
        self.model_expected = model_expected
        # Served platform versions: every changed person also gets a row of each (one call per version).
        self.platform_encoders = platform_encoders
        self.send = send
        self.max_len = settings.seq_len
        self.interests_max = settings.interests_max
        self.person_topic = settings.person_topic
        self.partitions = settings.person_partitions
        self.caches: dict[int, dict[str, PersonState]] = {}
        self.owned: set[int] | None = None  # None: no assignment told yet (a test, a tool): cache every partition

    def partition_of(self, person_id: str) -> int:
        return person_partition(person_id, self.partitions)

    def own_partitions(self, partitions: Sequence[int]) -> None:
        """The person partitions owned from now on (a whole assignment): the caches of any other go."""
        owned = set(partitions)
        for part in [p for p in self.caches if p not in owned]:
            del self.caches[part]
        self.owned = owned

    def drop_partitions(self, partitions: Sequence[int]) -> None:
        for part in partitions:
            self.caches.pop(part, None)
            if self.owned is not None:
                self.owned.discard(part)

    def _cache_of(self, person_id: str) -> dict[str, PersonState] | None:
        part = self.partition_of(person_id)
        if self.owned is not None and part not in self.owned:
            return None
        return self.caches.setdefault(part, {})

    def cached_people(self) -> int:
        return sum(len(c) for c in self.caches.values())

    async def _states(self, people: list[str]) -> tuple[dict[str, PersonState], dict[str, int]]:
        """Current states (copies) and erasure times of ``people``.

        Erasure markers are read from the store for every person of every batch,
        cached or not: ``interest forget`` writes the store first and tells this
        worker second, so a cached state may predate an erasure the store already
        holds.  Such a cache entry is dropped and the state read again.
        """
        states: dict[str, PersonState] = {}
        cached: dict[str, PersonState] = {}
        for person in people:
            hit = self.caches.get(self.partition_of(person), {}).get(person)
            if hit is not None:
                cached[person] = hit
        missing = [p for p in people if p not in cached]
        marks, loaded = await asyncio.gather(
            self.store.load_erasures(people),
            self.store.load_states(missing) if missing else _no_states(),
        )
        erased = {p: m.erased_ms for p, m in marks.items()}  # the store's markers: no copy of them is kept here
        stale = [p for p, s in cached.items() if p in erased and s.events and s.events[0].ts_ms <= erased[p]]
        if stale:
            for person in stale:
                self.caches.get(self.partition_of(person), {}).pop(person, None)
                del cached[person]
            loaded.update(await self.store.load_states(stale))
        for person in people:
            hit = cached.get(person)
            states[person] = copy_state(hit) if hit is not None else loaded.get(person) or PersonState(person)
        return states, erased

    async def process(self, records: Sequence[PersonRecord], now_ms: int | None = None) -> BatchReport:
        """Apply a batch; returns only after the store acknowledged every write (steps 1-5 above)."""
        work = _Work(self._group(records), BatchReport(records=len(records)))
        await self._forward_linked(work)
        await self._merge(work)
        await self._encode(work, now_ms)
        await self._write(work)
        self._move_caches(work)
        return work.report

    def _group(self, records: Sequence[PersonRecord]) -> ByPerson:
        """Step 1: records by the person whose partition owns them."""
        by_person: ByPerson = {}
        for record in records:
            by_person.setdefault(record_owner(record), []).append(record)
        return by_person

    async def _forward_linked(self, work: _Work) -> None:
        """Step 2: records (and a new link's stored history) of linked devices go to the person's partition."""
        anon = [p for p in work.by_person if parse_anon_id(p) is not None]
        if not anon:
            return
        # Read from the store every batch, never cached: an erasure deletes links, and the store keeps the
        # newest link of a device (by link time), so the store alone says where a device's events go.
        stored = await self.store.load_links(anon)
        forwards: list[CanonicalEvent] = []
        for anon_id in anon:
            recs = work.by_person[anon_id]
            links = [r for r in recs if isinstance(r, IdentityLink)]
            for link in links:
                work.batch.links.append(IdentityLinkRecord(anon_id, link.person_id, link.ts_ms))
                work.report.links += 1
            newest = max(links, key=lambda r: (r.ts_ms, r.person_id), default=None)
            known = stored.get(anon_id)
            if newest is not None and (known is None or (newest.ts_ms, newest.person_id) >= (known.ts_ms,
                                                                                              known.person_id)):
                target: str | None = newest.person_id
                first_link = known is None
            else:
                target, first_link = (known.person_id if known else None), False
            if target is None:
                continue
            forwards.extend(dataclasses.replace(r, person_id=target) for r in recs if isinstance(r, CanonicalEvent))
            del work.by_person[anon_id]
            if first_link:
                # A first link moves the device's stored history to the person, then deletes it.  A relink
                # (a newer link to another person) redirects the device's later events only: what the device
                # did before is part of the earlier person's history by then.
                work.new_links[anon_id] = target
                device = (parse_anon_id(anon_id) or ("", ""))[1]
                states, _ = await self._states([anon_id])
                old = states[anon_id]
                forwards.extend(_forwarded_event(e, target, device) for e in old.events)
                work.report.moved += len(old.events)
                if old.write_ts or old.events:
                    work.batch.removed_states.append((anon_id, old.write_ts + 1))
        if forwards:
            try:
                await self.send([OutMessage(self.person_topic, env, partition=part)
                                 for part, env in envelopes(forwards, self.partitions)])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise BrokerUnavailable(f"forwarding {len(forwards)} linked records failed: {exc}") from exc
            work.report.forwarded = len(forwards)

    async def _merge(self, work: _Work) -> None:
        """Step 3a: read states (cache, else store) and merge each person's events and erasures."""
        people = list(work.by_person)
        states, work.erased = await self._states(people)
        report = work.report
        for person in people:
            fail_if_poisoned(person)
            state = states[person]
            mark = work.erased.get(person)
            if mark is not None and state.events and state.events[0].ts_ms <= mark:
                # A stored state older than an erasure (a race a store could not refuse): rebuild it from
                # what came after the erasure, so no write of this batch carries erased events.
                kept = [e for e in state.events if e.ts_ms > mark]
                state = states[person] = PersonState(person_id=person)
                merge_events(state, kept, self.max_len)
            events: list[SeqEvent] = []
            for rec in work.by_person[person]:
                if isinstance(rec, CanonicalEvent):
                    events.append(rec.to_seq_event())
                    if rec.produced_ms is not None:
                        work.produced[person] = max(work.produced.get(person, 0), rec.produced_ms)
                elif isinstance(rec, ForgetRequest):
                    mark = work.erased[person] = max(work.erased.get(person, 0), rec.erased_ms)
                    # Drop what the erasure covers, keep what came after it (already stored on its own).
                    kept = [e for e in state.events if e.ts_ms > mark]
                    state = states[person] = PersonState(person_id=person)
                    merge_events(state, kept, self.max_len)
                    report.forgotten += 1
            outcome = merge_events(state, events, self.max_len, work.erased.get(person))
            for name in ("applied", "duplicates", "too_late", "erased"):
                setattr(report.merge, name, getattr(report.merge, name) + getattr(outcome, name))
            if outcome.applied:
                work.changed.append(state)
        report.people = len(people)

    async def _encode(self, work: _Work, now_ms: int | None) -> None:
        """Step 3b: one runtime call, in a worker thread, for every changed person."""
        if not work.changed:
            return
        encoder = self.encoder()
        if encoder is None and self.model_expected():
            raise ModelUnavailable("a model version is promoted but none is loaded: holding the partition")
        work.batch.states.extend(work.changed)
        if encoder is None:  # no model at all yet: states now, vectors by `interest reencode` later
            return
        report = work.report
        started = time.perf_counter()
        served, seqs = [encoder, *self.platform_encoders()], [s.events for s in work.changed]
        # Every served version's vectors and interests for the whole batch, in one worker-thread hop.
        outputs = await asyncio.to_thread(lambda: [self._vectors(e, seqs) for e in served])
        report.encode_s = time.perf_counter() - started
        report.encoded = len(work.changed)
        report.model_version = encoder.version
        report.platform_versions = [e.version for e in served[1:]]
        now = int(time.time() * 1000) if now_ms is None else now_ms
        for version_encoder, (vectors, interests) in zip(served, outputs, strict=True):
            for state, vector, kept in zip(work.changed, vectors, interests, strict=True):
                work.batch.profiles.append(Profile(
                    state.person_id, version_encoder.version, np.asarray(vector, dtype=np.float32),
                    state.event_count, state.first_ts_ms, state.last_ts_ms, dict(state.platforms),
                    state.write_ts, now, kept,
                ))

    def _vectors(
        self, encoder: Encoder, sequences: list[list[SeqEvent]]
    ) -> tuple[np.ndarray, list[tuple[Interest, ...]]]:
        """The vectors and (when the encoder has an item index) the interests, in one worker-thread hop."""
        return encode_with_interests(encoder, sequences, self.interests_max, self.max_len)

    async def _write(self, work: _Work) -> None:
        """Step 4: one idempotent ``write_batch`` of states, profiles, links and removals."""
        if not len(work.batch):
            return
        started = time.perf_counter()
        crash_point("before_write")
        await self.store.write_batch(work.batch)
        crash_point("after_write")
        work.report.write_s = time.perf_counter() - started

    def _move_caches(self, work: _Work) -> None:
        """Step 5: only now, with the store's acknowledgement, does the cache move on."""
        done = int(time.time() * 1000)
        for state in work.changed:
            cache = self._cache_of(state.person_id)
            if cache is not None:
                cache[state.person_id] = state
            work.report.written.append(state.person_id)
            work.report.freshness_ms.append(float(done - state.last_ts_ms))
            produced = work.produced.get(state.person_id)
            if produced is not None:
                work.report.produced_to_written_ms.append(float(done - produced))
        for person in work.erased:
            if any(isinstance(r, ForgetRequest) for r in work.by_person.get(person, ())):
                self.caches.get(self.partition_of(person), {}).pop(person, None)
        for anon_id in work.new_links:
            self.caches.get(self.partition_of(anon_id), {}).pop(anon_id, None)
