"""A person's sequence state and interest profile: the records the store keeps.

These are the contract between the stream worker (which computes them), the
profile stores (which persist them) and the model runtime (which reads the
event sequence).  They are plain dataclasses so the hot path pays no
validation cost: everything here was validated when the raw event was
normalised (see ``schemas.adapters``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

ACTIONS: tuple[str, ...] = ("click", "browse", "purchase")

# -- write timestamps, derived from content only ------------------------------------------------
# A row's write timestamp (Cassandra ``USING TIMESTAMP``, SQLite's ``write_ts`` column) is
#     newest event ms * 2**20  +  the sum, over the kept window, of a weight per event,
# the weight growing with the event's time (1..WEIGHT_MAX, log-spaced by age below the newest).
# Why: adding an event to a state can only keep or raise the newest time, and either lengthens
# the window (adds a weight >= 1) or replaces its oldest event by a newer one (adds a weight at
# least as large).  So a state that holds every event of another, and more, compares at least
# as large, whatever order either saw its events in (strictly larger unless the replaced event
# and its replacement fall in the same 2 % age bucket of a full window), and the same events
# always give the same value.  An erasure at ``erased_ms`` deletes at the top of that
# millisecond, above every state whose newest event is at or before the erasure and below
# every state with a later event.  Fits 63 bits for events before the year 2248.
TS_SHIFT = 20
WEIGHT_MAX = ((1 << TS_SHIFT) - 1) // 999  # seq_len <= 999: the sum stays below 2**20
_AGE_SCALE = (WEIGHT_MAX - 1) / math.log1p(10 * 365 * 86_400_000)  # ten years of age span the weights


def event_write_ts(ts_ms: int) -> int:
    """The timestamp of a row that one event wrote (identity links)."""
    return ts_ms << TS_SHIFT


def erasure_write_ts(erased_ms: int) -> int:
    """Where an erasure at ``erased_ms`` deletes: above every row made only of events at or before it."""
    return (erased_ms << TS_SHIFT) | ((1 << TS_SHIFT) - 1)


def window_write_ts(events: Sequence[SeqEvent]) -> int:
    """The content-derived write timestamp of a kept window (0 for an empty one).

    ``(newest << TS_SHIFT)`` plus each event's weight ``WEIGHT_MAX - min(WEIGHT_MAX - 1,
    int(log1p(age) * _AGE_SCALE))``, summed as ``n * WEIGHT_MAX`` less the buckets, in one loop without a
    call per event: the update stage computes it for every person a batch changes (~9 us for 50 events, ~21
    with a function call per event).  Every worker must get the very same integers, so the float
    operations are exactly those of the per-event definition (``tests/unit/test_write_ts.py`` holds it).
    """
    if not events:
        return 0
    times = [e.ts_ms for e in events]
    newest = max(times)  # so every age is >= 0
    log1p, scale, cap = math.log1p, _AGE_SCALE, WEIGHT_MAX - 1
    buckets = 0
    for ts in times:
        bucket = int(log1p(newest - ts) * scale)
        buckets += bucket if bucket < cap else cap
    return (newest << TS_SHIFT) + len(times) * WEIGHT_MAX - buckets


@dataclass(frozen=True, slots=True)
class SeqEvent:
    """One event as kept in a person's sequence (the model's input unit)."""

    event_id: str
    ts_ms: int
    item_id: str
    action: str
    platform: str
    weight: float = 1.0

    def sort_key(self) -> tuple[int, str]:
        """Event-time order, ties broken by id so every worker agrees."""
        return (self.ts_ms, self.event_id)


@dataclass(slots=True)
class PersonState:
    """The last N events of one person plus the counters a profile reports.

    ``write_ts`` is ``window_write_ts(events)``: derived from the kept events
    only (never the wall clock nor the arrival order), so a state holding every
    event of another, and more, compares larger, and a replay reproduces the
    same value.  Stores keep the state with the larger ``write_ts`` (Cassandra:
    ``USING TIMESTAMP``), so a late, replayed or zombie write never overwrites
    a state that has seen more.
    """

    person_id: str
    events: list[SeqEvent] = field(default_factory=list)
    event_count: int = 0
    first_ts_ms: int = 0
    last_ts_ms: int = 0
    platforms: dict[str, int] = field(default_factory=dict)
    write_ts: int = 0


@dataclass(frozen=True, slots=True)
class Interest:
    """One of a person's several interests: a direction in the model's item space.

    ``vector`` is a unit vector in the space the model scores items in
    (``score = vector . item``), ``weight`` the interest's share of the
    person's recent, action-weighted events (a profile's weights sum to 1),
    ``items`` its representative items, the medoid first.
    """

    vector: np.ndarray
    weight: float
    items: tuple[str, ...]


@dataclass(slots=True)
class Profile:
    """One interest vector (and up to K interests) of one person in one model's embedding space.

    Rows are keyed by ``(person_id, model_version)``: a new model never
    overwrites vectors of another embedding space.  ``write_ts`` is the
    state's data-derived timestamp; ``updated_ms`` is the wall-clock time the
    worker computed the vector (for freshness), informational only.
    """

    person_id: str
    model_version: str
    vector: np.ndarray
    event_count: int
    first_ts_ms: int
    last_ts_ms: int
    platforms: dict[str, int]
    write_ts: int
    updated_ms: int
    interests: tuple[Interest, ...] = ()  # heaviest first; empty when the worker computes none


@dataclass(frozen=True, slots=True)
class IdentityLinkRecord:
    """``anon_person_id`` (e.g. ``anon:web:d-42``) now belongs to ``person_id``."""

    anon_person_id: str
    person_id: str
    ts_ms: int


@dataclass(frozen=True, slots=True)
class ErasureMarker:
    """A person was erased at ``erased_ms``; events at or before it are dropped."""

    person_id: str
    erased_ms: int
