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
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from schemas.events import ANON_PREFIX
from schemas.sequence import IdentityLinkRecord, PersonState, Profile, SeqEvent
from streams.faults import crash_point, fail_if_poisoned
from streams.routing import EVENT, FORGET, LINK, record_owner
from streams.state import MergeOutcome, copy_state, merge_events
from streams.stores.base import ProfileStore, StoreBatch

Record = dict[str, Any]
Forward = Callable[[list[Record]], Awaitable[None]]


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
    links: int = 0
    forgotten: int = 0
    merge: MergeOutcome = field(default_factory=MergeOutcome)
    model_version: str | None = None
    encode_s: float = 0.0
    write_s: float = 0.0
    freshness_ms: list[float] = field(default_factory=list)
    written: list[str] = field(default_factory=list)


def _seq_event(record: Record) -> SeqEvent:
    return SeqEvent(
        str(record["event_id"]), int(record["ts_ms"]), str(record["item_id"]), str(record["action"]),
        str(record["platform"]), float(record.get("weight", 1.0)),
    )


def _forwarded_event(event: SeqEvent, person_id: str, platform_user_id: str) -> Record:
    return {
        "k": EVENT, "event_id": event.event_id, "person_id": person_id, "platform": event.platform,
        "platform_user_id": platform_user_id, "action": event.action, "item_id": event.item_id,
        "ts_ms": event.ts_ms, "weight": event.weight,
    }


class ProfileUpdater:
    """Applies person-topic records; owns the per-partition caches.

    ``caches[partition][person]`` is valid only while this worker owns the
    partition: ``drop_partitions`` is called on revocation, and the next
    owner reads the store.
    """

    def __init__(
        self,
        store: ProfileStore,
        encoder: Callable[[], Encoder | None],
        forward: Forward,
        max_len: int,
        partition_of: Callable[[str], int],
    ) -> None:
        self.store = store
        self.encoder = encoder
        self.forward = forward
        self.max_len = max_len
        self.partition_of = partition_of
        self.caches: dict[int, dict[str, PersonState]] = {}
        self.links: dict[int, dict[str, str]] = {}
        self.erased: dict[int, dict[str, int]] = {}

    def drop_partitions(self, partitions: Sequence[int]) -> None:
        for part in partitions:
            self.caches.pop(part, None)
            self.links.pop(part, None)
            self.erased.pop(part, None)

    def cached_people(self) -> int:
        return sum(len(c) for c in self.caches.values())

    async def _resolve(self, anon_ids: list[str]) -> dict[str, str]:
        """anon id -> person for linked devices (owner cache, else the store)."""
        out: dict[str, str] = {}
        missing = []
        for anon in anon_ids:
            person = self.links.get(self.partition_of(anon), {}).get(anon)
            if person is None:
                missing.append(anon)
            else:
                out[anon] = person
        if missing:
            found = await self.store.resolve_links(missing)
            for anon, person in found.items():
                self.links.setdefault(self.partition_of(anon), {})[anon] = person
            out.update(found)
        return out

    async def _states(self, people: list[str]) -> tuple[dict[str, PersonState], dict[str, int]]:
        """Current states (copies) and erasure times of ``people``."""
        states: dict[str, PersonState] = {}
        erased: dict[str, int] = {}
        missing = []
        for person in people:
            part = self.partition_of(person)
            cached = self.caches.get(part, {}).get(person)
            if cached is None:
                missing.append(person)
            else:
                states[person] = copy_state(cached)
            mark = self.erased.get(part, {}).get(person)
            if mark is not None:
                erased[person] = mark
        if missing:
            loaded, marks = await asyncio.gather(
                self.store.load_states(missing), self.store.load_erasures(missing)
            )
            for person in missing:
                states[person] = loaded.get(person) or PersonState(person_id=person)
                marker = marks.get(person)
                if marker is not None:
                    erased[person] = marker.erased_ms
        return states, erased

    async def process(self, records: Sequence[Record], now_ms: int | None = None) -> BatchReport:
        """Apply a batch; returns only after the store acknowledged every write."""
        report = BatchReport(records=len(records))
        by_person: dict[str, list[Record]] = {}
        for record in records:
            by_person.setdefault(record_owner(record), []).append(record)

        batch = StoreBatch()
        forwards: list[Record] = []
        anon = [p for p in by_person if p.startswith(ANON_PREFIX)]
        linked = await self._resolve(anon) if anon else {}
        new_links: dict[str, str] = {}
        for anon_id in anon:
            recs = by_person[anon_id]
            for rec in recs:
                if rec["k"] == LINK:
                    new_links[anon_id] = str(rec["person_id"])
                    batch.links.append(IdentityLinkRecord(anon_id, str(rec["person_id"]), int(rec["ts_ms"])))
                    report.links += 1
            target = new_links.get(anon_id) or linked.get(anon_id)
            if target is None:
                continue
            device = anon_id.split(":", 2)[2]
            forwards.extend(
                {**rec, "person_id": target} for rec in recs if rec["k"] == EVENT
            )
            del by_person[anon_id]
            if anon_id in new_links:
                # Move the device's stored history to the person, then delete it.
                states, _ = await self._states([anon_id])
                old = states[anon_id]
                forwards.extend(_forwarded_event(e, target, device) for e in old.events)
                if old.write_ts or old.events:
                    batch.removed_states.append((anon_id, old.write_ts + 1))
        if forwards:
            await self.forward(forwards)
            report.forwarded = len(forwards)

        people = list(by_person)
        states, erased = await self._states(people)
        changed: list[PersonState] = []
        for person in people:
            fail_if_poisoned(person)
            state = states[person]
            events: list[SeqEvent] = []
            for rec in by_person[person]:
                kind = rec["k"]
                if kind == EVENT:
                    events.append(_seq_event(rec))
                elif kind == FORGET:
                    erased[person] = max(erased.get(person, 0), int(rec["erased_ms"]))
                    state = states[person] = PersonState(person_id=person)
                    report.forgotten += 1
            outcome = merge_events(state, events, self.max_len, erased.get(person))
            for name in ("applied", "duplicates", "too_late", "erased"):
                setattr(report.merge, name, getattr(report.merge, name) + getattr(outcome, name))
            if outcome.applied:
                changed.append(state)
        report.people = len(people)

        encoder = self.encoder()
        if changed:
            batch.states.extend(changed)
            if encoder is not None:
                started = time.perf_counter()
                vectors = await asyncio.to_thread(encoder.encode, [s.events for s in changed])
                report.encode_s = time.perf_counter() - started
                report.encoded = len(changed)
                report.model_version = encoder.version
                now = int(time.time() * 1000) if now_ms is None else now_ms
                for state, vector in zip(changed, vectors, strict=True):
                    batch.profiles.append(Profile(
                        state.person_id, encoder.version, np.asarray(vector, dtype=np.float32),
                        state.event_count, state.first_ts_ms, state.last_ts_ms, dict(state.platforms),
                        state.write_ts, now,
                    ))
        if len(batch):
            started = time.perf_counter()
            crash_point("before_write")
            await self.store.write_batch(batch)
            crash_point("after_write")
            report.write_s = time.perf_counter() - started
        # Only now, with the store's acknowledgement, does the cache move on.
        done = int(time.time() * 1000)
        for state in changed:
            self.caches.setdefault(self.partition_of(state.person_id), {})[state.person_id] = state
            report.written.append(state.person_id)
            report.freshness_ms.append(float(done - state.last_ts_ms))
        for person, mark in erased.items():
            self.erased.setdefault(self.partition_of(person), {})[person] = mark
            if any(r["k"] == FORGET for r in by_person.get(person, ())):
                self.caches.get(self.partition_of(person), {}).pop(person, None)
        for anon_id, person in new_links.items():
            self.links.setdefault(self.partition_of(anon_id), {})[anon_id] = person
            self.caches.get(self.partition_of(anon_id), {}).pop(anon_id, None)
        return report
