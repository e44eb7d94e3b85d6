"""Merging events into a person's sequence state: pure functions.

The merge is what makes replays harmless and late events safe:

* an event whose id is already in the window is a duplicate: no change;
* an event older than the oldest of a *full* window can never be among the
  last N, so it changes nothing (counted as ``too_late``);
* an event at or before the person's erasure time is dropped;
* otherwise it is inserted in event-time order (ties by event id) and the
  window is cut to the newest N.

The final window is therefore the newest N of all events, whatever order
they arrived in.  ``write_ts`` advances by one per applied event and never
falls below the newest event time in microseconds, so a state that has seen
more events always has a larger timestamp, and stores keep it (Cassandra
``USING TIMESTAMP``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from schemas.sequence import PersonState, SeqEvent


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
        state.write_ts = max(state.write_ts + 1, state.last_ts_ms * 1000)
        outcome.applied += 1
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
