"""A person's sequence state and interest profile: the records the store keeps.

These are the contract between the stream worker (which computes them), the
profile stores (which persist them) and the model runtime (which reads the
event sequence).  They are plain dataclasses so the hot path pays no
validation cost: everything here was validated when the raw event was
normalised (see ``schemas.adapters``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ACTIONS: tuple[str, ...] = ("click", "browse", "purchase")


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

    ``write_ts`` is a logical timestamp derived from the data only (never the
    wall clock): a state that has seen more events has a larger one, and a
    replay of the same events reproduces the same value.  Stores keep the
    state with the larger ``write_ts`` (Cassandra: ``USING TIMESTAMP``), so a
    late or replayed write can never overwrite a newer state.
    """

    person_id: str
    events: list[SeqEvent] = field(default_factory=list)
    event_count: int = 0
    first_ts_ms: int = 0
    last_ts_ms: int = 0
    platforms: dict[str, int] = field(default_factory=dict)
    write_ts: int = 0


@dataclass(slots=True)
class Profile:
    """One interest vector of one person in one model's embedding space.

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
